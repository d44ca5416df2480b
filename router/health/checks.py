"""Health derivation: plain facts in, a state and a sentence out (no I/O here).

States: ok, warn, fault, unknown. Each check answers in words a technician can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["ok", "warn", "fault", "unknown"]

# A wall clock before this is certainly wrong (the software did not exist yet): an RTC that
# lost its battery restarts in 1970 or 2000, a Pi without an RTC at its last shutdown time.
PLAUSIBLE_FROM = 1_767_225_600.0  # 2026-01-01T00:00:00Z
# The wall clock moving this much more or less than the monotonic clock between two looks is
# a jump (NTP slews far slower; a step this size means the time was wrong before or after).
JUMP_SECONDS = 120.0


@dataclass(frozen=True)
class Check:
    """One health aspect as the console, the CLI and metrics show it."""

    name: str
    state: State
    detail: str


@dataclass(frozen=True)
class ClockSample:
    """The wall clock and the monotonic clock read together."""

    wall: float
    monotonic: float


@dataclass(frozen=True)
class ClockFacts:
    """What the clock check needs."""

    now: ClockSample
    previous: ClockSample | None
    synchronized: bool | None  # None: the kernel would not say
    rtc_present: bool
    latest_known: float | None = None  # e.g. the newest time stamp in the journal


@dataclass(frozen=True)
class ClockVerdict:
    """The clock's health item and the alarms it raises (code -> message)."""

    check: Check
    alarms: dict[str, str]


def clock(facts: ClockFacts) -> ClockVerdict:
    """Judge the clock: implausible time, a jump since the last look, sync and RTC."""
    alarms: dict[str, str] = {}
    wall = facts.now.wall
    if wall < PLAUSIBLE_FROM:
        alarms["clock-implausible"] = (
            "The clock shows a date before 2026: time stamps and retention are wrong. Connect "
            "the unit to a network with time (NTP) or set the clock; check the RTC battery."
        )
    elif facts.latest_known is not None and wall + JUMP_SECONDS < facts.latest_known:
        alarms["clock-implausible"] = (
            "The clock is behind the time of objects already received: it was set back. "
            "Check the time source (NTP) and the RTC battery."
        )
    if facts.previous is not None:
        skew = (wall - facts.previous.wall) - (facts.now.monotonic - facts.previous.monotonic)
        if abs(skew) > JUMP_SECONDS:
            direction = "forward" if skew > 0 else "back"
            alarms["clock-jumped"] = (
                f"The clock jumped {direction} by {abs(skew):.0f} s. Time stamps around "
                f"this moment may be out of order; check the time source."
            )
    sync = {True: "synchronised (NTP)", False: "not synchronised", None: "sync unknown"}[
        facts.synchronized
    ]
    rtc = "RTC present" if facts.rtc_present else "no RTC"
    detail = f"{sync}, {rtc}"
    state: State = "ok"
    if alarms:
        state = "fault"
        detail = f"{detail}; {'; '.join(sorted(alarms))}"
    elif facts.synchronized is False and not facts.rtc_present:
        state = "warn"  # after a power cut the time restarts from the last shutdown
    elif facts.synchronized is None:
        state = "unknown" if not facts.rtc_present else "ok"
    return ClockVerdict(Check("clock", state, detail), alarms)


def link(default_route: bool | None, address: str | None) -> Check:
    """The network link: a default route and an address to send from."""
    if default_route is None:
        return Check("link", "unknown", "routing table unreadable")
    if not default_route:
        return Check("link", "warn", "no default route: only the local network is reachable")
    if not address:
        return Check("link", "warn", "a default route but no address to send from")
    return Check("link", "ok", f"default route, address {address}")


def storage_wear(used_percent: int | None, pre_eol: str | None, device: str) -> Check:
    """Storage wear where the device reports it (eMMC life time estimates)."""
    if used_percent is None and pre_eol is None:
        return Check("storage", "unknown", f"{device}: wear not reported")
    state: State = "ok"
    if pre_eol == "urgent" or (used_percent is not None and used_percent >= 90):
        state = "fault"
    elif pre_eol == "warning" or (used_percent is not None and used_percent >= 70):
        state = "warn"
    parts = [f"{device}"]
    if used_percent is not None:
        parts.append(f"about {used_percent}% of its life used")
    if pre_eol is not None:
        parts.append(f"end-of-life {pre_eol}")
    return Check("storage", state, ", ".join(parts))


def liveness(problems: list[str]) -> Check:
    """The router's own threads (see router/health/liveness.py)."""
    if problems:
        return Check("router", "fault", "; ".join(problems))
    return Check("router", "ok", "receiving and delivering threads alive")
