"""Polite mode: back off when the link's queueing delay rises (LEDBAT-style, RFC 6817).

The uplink's queue is where the clinic's own traffic waits behind ours. The sender measures
its connection's smoothed RTT (:func:`tcp_rtt`, from TCP_INFO) and feeds it to a
:class:`PoliteController`, which keeps the lowest RTT seen lately as the empty-queue base and
steers a sending rate so that the extra delay stays under ``target`` (100 ms by default).
It aims at half the target (the setpoint), because the clinic's traffic feels the peaks, not
the mean: below the setpoint the rate grows, up to ``gain`` of itself per base RTT with an
empty queue (a quarter of that near the rate at which the queue last overran the target);
between the setpoint and the target it shrinks in proportion; past the target it halves, at
most once per ``cut_holdoff`` base RTTs, because the smoothed RTT shows a cut's effect
late. Growth is proportional to the rate itself, not to ``max_rate``: without a cap
``max_rate`` is a ceiling far above any uplink, and growth in its proportion overran the
link within a second of an empty queue (measured on the emulated link: the interactive
probe's p95 +460 ms). The sender applies the rate with
``RateGate.limit_to(controller.rate)`` and paces its socket to it (:func:`pace`).

The controller is pure: time and RTT samples are passed in.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from dataclasses import dataclass, field

# struct tcp_info (linux/tcp.h): eight u8 fields, then u32s; tcpi_rtt (microseconds) is the
# 16th u32, at byte 68. Stable kernel ABI since 2.6.
_TCPI_RTT_OFFSET = 68
# A base RTT shorter than this (a LAN, loopback) counts as this long when the rate grows.
_SHORTEST_ROUND = 0.01


def tcp_rtt(sock: socket.socket) -> float | None:
    """The kernel's smoothed RTT of a connected TCP socket in seconds, or None if unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return None
    (micros,) = struct.unpack_from("I", info, _TCPI_RTT_OFFSET)
    return micros / 1e6 if micros else None


# SO_MAX_PACING_RATE (asm-generic/socket.h); Python's socket module does not name it.
_SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)


def pace(sock: socket.socket, bits_per_second: float) -> bool:
    """Have the kernel pace ``sock`` at ``bits_per_second`` at most (bytes leave spread out
    instead of in one burst per write, which would fill the uplink's queue for a moment).
    False where the kernel cannot."""
    rate = max(1, int(bits_per_second / 8))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_MAX_PACING_RATE, min(rate, 0xFFFFFFFF))
    except OSError:
        return False
    return True


@dataclass
class PoliteController:
    """Steers a sending rate (bits per second) to keep queueing delay under ``target``."""

    max_rate: float  # the most the link (or the configured cap) allows
    min_rate: float = 64_000.0
    target: float = 0.1  # seconds of queueing delay we may add
    # Fraction of the rate gained per base RTT at zero queueing delay. The RTT it sees is the
    # kernel's smoothed one, a few round trips behind: a larger gain overshoots before the
    # queue shows (measured: 0.25 let the probe's p95 rise by up to 200 ms).
    gain: float = 0.15
    base_history: float = 600.0  # seconds over which the base (empty-queue) RTT is the min
    # Base RTTs after a cut before the next: the kernel's smoothed RTT shows a cut's effect
    # only several round trips later. Cutting each round trip while it still showed the
    # queue that caused the first cut took the rate from just above a 2 Mbit/s link to the
    # minimum in five halvings, and back up took 20 s (measured on the emulated link).
    cut_holdoff: float = 4.0
    # Between these shares of the rate at which the queue last overran the target, the
    # rate grows at a quarter of ``gain``: it approaches what the link took last time with
    # care instead of overrunning it again at full speed. Far from it (the link was busy
    # then, or is now), it grows at full speed.
    careful_band: tuple[float, float] = (0.7, 1.3)
    rate: float = 0.0
    _minima: deque[tuple[float, float]] = field(default_factory=deque)  # (minute start, min)
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=4))
    _last: float | None = None
    _last_cut: float = float("-inf")
    _overran_at: float = 0.0  # the rate when the queue last passed the target (0: never)

    def __post_init__(self) -> None:
        if not self.rate:
            self.rate = self.min_rate

    @property
    def base_rtt(self) -> float | None:
        """The empty-queue RTT estimate: the lowest sample of the base history."""
        return min((m for _, m in self._minima), default=None)

    def observe(self, rtt: float, now: float) -> float:
        """Take an RTT sample (seconds) at ``now`` (monotonic seconds); return the new rate."""
        self._remember(rtt, now)
        self._recent.append(rtt)
        base = self.base_rtt
        assert base is not None
        queueing = min(self._recent) - base  # the current filter: min of the last samples
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        # Base RTTs since the last sample, at most one: a long silence is no licence to jump.
        rounds = min(1.0, elapsed / max(base, _SHORTEST_ROUND))
        if queueing > self.target:
            if now - self._last_cut >= self.cut_holdoff * base:
                self._overran_at = self.rate
                self.rate /= 2
                self._last_cut = now
        else:
            setpoint = self.target / 2
            off_setpoint = max(-1.0, (setpoint - queueing) / setpoint)
            gain = self.gain
            low, high = (share * self._overran_at for share in self.careful_band)
            if off_setpoint > 0 and low < self.rate < high:
                gain /= 4
            self.rate *= 1 + gain * off_setpoint * rounds
        self.rate = min(self.max_rate, max(self.min_rate, self.rate))
        return self.rate

    def _remember(self, rtt: float, now: float) -> None:
        minute = now - now % 60
        if self._minima and self._minima[-1][0] == minute:
            self._minima[-1] = (minute, min(self._minima[-1][1], rtt))
        else:
            self._minima.append((minute, rtt))
        while self._minima and self._minima[0][0] < now - self.base_history:
            self._minima.popleft()
