"""Polite mode: back off when the link's queueing delay rises (LEDBAT-style, RFC 6817).

The uplink's queue is where the clinic's own traffic waits behind ours. The sender measures
its connection's smoothed RTT (:func:`tcp_rtt`, from TCP_INFO) and feeds it to a
:class:`PoliteController`, which keeps the lowest RTT seen lately as the empty-queue base and
steers a sending rate so that the extra delay stays near ``target`` (100 ms by default):
below target the rate grows, above it the rate shrinks in proportion, and past twice the
target it halves (at most once per base RTT). The sender applies the rate with
``RateGate.limit_to(controller.rate)``.

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


@dataclass
class PoliteController:
    """Steers a sending rate (bits per second) to keep queueing delay near ``target``."""

    max_rate: float  # the most the link (or the configured cap) allows
    min_rate: float = 64_000.0
    target: float = 0.1  # seconds of queueing delay we may add
    gain: float = 1.0  # fraction of max_rate gained per second at zero queueing delay
    base_history: float = 600.0  # seconds over which the base (empty-queue) RTT is the min
    rate: float = 0.0
    _minima: deque[tuple[float, float]] = field(default_factory=deque)  # (minute start, min)
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=4))
    _last: float | None = None
    _last_cut: float = float("-inf")

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
        elapsed = 0.0 if self._last is None else max(0.0, min(now - self._last, 1.0))
        self._last = now
        if queueing > 2 * self.target and now - self._last_cut >= base:
            self.rate /= 2
            self._last_cut = now
        else:
            off_target = (self.target - queueing) / self.target
            self.rate += self.gain * max(-1.0, off_target) * self.max_rate * elapsed
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
