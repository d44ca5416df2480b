"""Rate control for WAN senders, pure: the caller passes the time in and gets decisions out.

A :class:`RateGate` combines

* a token bucket that holds the sender to a cap in bits per second; a chunk may be sent
  whenever the bucket is not in debt, and its bytes then put the bucket into debt, so the
  long-run rate is exact and a single send overshoots by at most one chunk;
* a weekly calendar of caps in the unit's local time (e.g. 1 Mbit/s 08:00-17:00 Mon-Fri,
  unlimited otherwise); a cap of 0 pauses sending in that window;
* daily and monthly budgets in bytes on the wire; a send is allowed while the period's
  counter is under its budget, so a period overshoots by at most one chunk. STAT bytes are
  always counted (they are on the bill) but, with ``stat_exempt``, never held back.

The sender asks ``gate.ask(n, now)`` before a chunk and, after sending, tells
``gate.sent(n, now)``. Budget counters survive restarts through ``gate.counters`` and
``BudgetCounters.to_dict`` / ``from_dict`` (the sender keeps them in its journal).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

DAY = 24 * 60
# Never tell a sender to wait less than this: a zero wait would spin.
MIN_WAIT = 0.01


@dataclass(frozen=True)
class CapWindow:
    """A cap that applies on ``days`` (0 = Monday) from ``start`` to ``end`` minutes after
    local midnight. ``end`` <= ``start`` wraps past midnight into the next day.
    ``bits_per_second`` None means unlimited, 0 means paused."""

    days: frozenset[int]
    start: int
    end: int
    bits_per_second: int | None

    def covers(self, local: dt.datetime) -> bool:
        """Whether this window applies at the local time ``local``."""
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        yesterday = (today - 1) % 7
        return (today in self.days and minute >= self.start) or (
            yesterday in self.days and minute < self.end % DAY
        )


@dataclass(frozen=True)
class RatePolicy:
    """What a destination's rate settings mean, ready for a :class:`RateGate`."""

    bits_per_second: int | None = None  # outside every window; None = unlimited
    windows: tuple[CapWindow, ...] = ()
    burst_bytes: int = 256 * 1024
    daily_budget: int | None = None
    monthly_budget: int | None = None
    stat_exempt: bool = True
    zone: dt.tzinfo = dt.UTC

    def cap_at(self, now: dt.datetime) -> int | None:
        """The cap in bits per second at ``now``: the lowest of the windows that cover it,
        else the default cap. None is unlimited."""
        local = now.astimezone(self.zone)
        caps = [w.bits_per_second for w in self.windows if w.covers(local)]
        if not caps:
            return self.bits_per_second
        limited = [c for c in caps if c is not None]
        return min(limited) if limited else None

    def next_change(self, now: dt.datetime) -> dt.datetime:
        """A time after ``now`` no later than the next calendar boundary (a window's start or
        end, or local midnight). Asking again then is always soon enough."""
        local = now.astimezone(self.zone)
        minutes = {0} | {w.start for w in self.windows} | {w.end % DAY for w in self.windows}
        candidates: list[dt.datetime] = []
        for days_ahead in range(2):
            day = local.date() + dt.timedelta(days=days_ahead)
            for minute in minutes:
                at = dt.datetime.combine(day, dt.time(minute // 60, minute % 60), self.zone)
                if at > local:
                    candidates.append(at)
        return min(candidates)


@dataclass
class BudgetCounters:
    """Wire bytes counted in the current local day and month; persisted by the sender."""

    day: str = ""
    day_bytes: int = 0
    month: str = ""
    month_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the journal."""
        return {"day": self.day, "day_bytes": self.day_bytes, "month": self.month,
                "month_bytes": self.month_bytes}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetCounters:
        """The counters stored by :meth:`to_dict` (unknown or missing keys tolerated)."""
        return cls(
            day=str(data.get("day", "")),
            day_bytes=int(data.get("day_bytes", 0)),
            month=str(data.get("month", "")),
            month_bytes=int(data.get("month_bytes", 0)),
        )

    def rolled(self, local: dt.datetime) -> BudgetCounters:
        """These counters as of ``local``: a new day or month starts from zero."""
        day, month = local.date().isoformat(), local.strftime("%Y-%m")
        return BudgetCounters(
            day=day,
            day_bytes=self.day_bytes if self.day == day else 0,
            month=month,
            month_bytes=self.month_bytes if self.month == month else 0,
        )


@dataclass(frozen=True)
class Decision:
    """The gate's answer: send now, or wait ``wait`` seconds and ask again, and why."""

    allowed: bool
    wait: float = 0.0
    reason: str = ""


@dataclass
class RateGate:
    """Token bucket + calendar + budgets for one destination. Not thread-safe: one per
    sending loop (or guard it with a lock)."""

    policy: RatePolicy
    counters: BudgetCounters = field(default_factory=BudgetCounters)
    # A cap set at run time (polite mode), applied on top of the policy; None = none.
    dynamic_cap: int | None = None
    _tokens: float = 0.0
    _last: dt.datetime | None = None

    def limit_to(self, bits_per_second: float | None) -> None:
        """Hold the sender to at most ``bits_per_second`` as well (None lifts it)."""
        self.dynamic_cap = None if bits_per_second is None else max(1, int(bits_per_second))

    def cap_at(self, now: dt.datetime) -> int | None:
        """The cap in force at ``now``: the calendar's, lowered by any dynamic cap."""
        cap = self.policy.cap_at(now)
        if self.dynamic_cap is None or cap == 0:
            return cap
        return self.dynamic_cap if cap is None else min(cap, self.dynamic_cap)

    def ask(self, n: int, now: dt.datetime, *, stat: bool = False) -> Decision:
        """May ``n`` bytes go now? If not, how long to wait before asking again."""
        local = now.astimezone(self.policy.zone)
        self.counters = self.counters.rolled(local)
        if not (stat and self.policy.stat_exempt):
            refusal = self._budget_refusal(now, local)
            if refusal is not None:
                return refusal
        cap = self.cap_at(now)
        if cap is None:
            return Decision(True)
        until_change = _seconds_between(now, self.policy.next_change(now))
        if cap == 0:
            return Decision(False, max(MIN_WAIT, until_change), "sending is paused now")
        self._refill(now, cap)
        if self._tokens >= 0:
            return Decision(True)
        wait = min(-self._tokens / (cap / 8), until_change)
        return Decision(False, max(MIN_WAIT, wait), f"held to {_rate_text(cap)}")

    def sent(self, n: int, now: dt.datetime, *, stat: bool = False) -> None:
        """Record that ``n`` bytes went on the wire at ``now`` (STAT bytes count too)."""
        counters = self.counters.rolled(now.astimezone(self.policy.zone))
        self.counters = replace(
            counters, day_bytes=counters.day_bytes + n, month_bytes=counters.month_bytes + n
        )
        cap = self.cap_at(now)
        if cap:
            self._refill(now, cap)
            self._tokens -= n
        else:
            self._tokens, self._last = float(self.policy.burst_bytes), now

    def _refill(self, now: dt.datetime, cap: int) -> None:
        if self._last is None:
            self._tokens = float(self.policy.burst_bytes)
        else:
            elapsed = max(0.0, (now - self._last).total_seconds())  # clocks may step back
            self._tokens = min(float(self.policy.burst_bytes), self._tokens + elapsed * cap / 8)
        self._last = now

    def _budget_refusal(self, now: dt.datetime, local: dt.datetime) -> Decision | None:
        policy, counters = self.policy, self.counters
        if policy.monthly_budget is not None and counters.month_bytes >= policy.monthly_budget:
            first = (local.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            return _wait_until(now, _local_midnight(first.date(), policy.zone),
                               "this month's data budget is used up")  # fmt: skip
        if policy.daily_budget is not None and counters.day_bytes >= policy.daily_budget:
            tomorrow = local.date() + dt.timedelta(days=1)
            return _wait_until(now, _local_midnight(tomorrow, policy.zone),
                               "today's data budget is used up")  # fmt: skip
        return None


def _local_midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0, 0), zone)


def _wait_until(now: dt.datetime, then: dt.datetime, reason: str) -> Decision:
    return Decision(False, max(MIN_WAIT, _seconds_between(now, then)), reason)


def _seconds_between(earlier: dt.datetime, later: dt.datetime) -> float:
    # In UTC: two datetimes with the same tzinfo subtract as wall-clock times, which is an
    # hour off across a daylight-saving change.
    return (later.astimezone(dt.UTC) - earlier.astimezone(dt.UTC)).total_seconds()


def chunk_size_for(
    bits_per_second: float | None,
    *,
    seconds: float = 8.0,
    minimum: int = 256 * 1024,
    maximum: int = 16 * 1024 * 1024,
) -> int:
    """A chunk that takes about ``seconds`` of link time at the measured rate, so a break
    costs at most that much re-sending; between ``minimum`` and ``maximum``, rounded to
    64 KiB. An unknown rate gives ``minimum``."""
    if not bits_per_second or bits_per_second <= 0:
        return minimum
    wanted = int(bits_per_second / 8 * seconds) // 65536 * 65536
    return max(minimum, min(maximum, wanted))


def _rate_text(bits_per_second: int) -> str:
    if bits_per_second >= 1_000_000:
        return f"{bits_per_second / 1e6:g} Mbit/s"
    return f"{bits_per_second / 1e3:g} kbit/s"
