"""The ``rate`` table of a WAN destination: cap, weekly calendar, data budgets, polite mode.

Self-contained so any destination model can attach it::

    rate: RateConfig = Field(default_factory=RateConfig)

and turn it into the pure policy the sender's gate runs on with :meth:`RateConfig.policy`.
In TOML (see docs/configuration.md and docs/wan.md)::

    [destinations.rate]
    cap = "2 Mbit/s"
    daily_budget = "3 GB"
    [[destinations.rate.calendar]]
    days = "Mon-Fri"
    hours = "08:00-17:00"
    cap = "1 Mbit/s"
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from router.config.units import parse_duration, parse_hours, parse_size
from router.wan.rate import CapWindow, RatePolicy

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z/]*)\s*$")
_RATE_UNITS = {
    "bit/s": 1, "bps": 1, "kbit/s": 1000, "kbps": 1000, "mbit/s": 1_000_000,
    "mbps": 1_000_000, "gbit/s": 1_000_000_000, "gbps": 1_000_000_000,
}  # fmt: skip
_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def parse_rate(value: str | int) -> int | None:
    """Bits per second from "2 Mbit/s", "512 kbit/s", "1.5 Mbps" or an integer; "unlimited"
    is None; 0 pauses sending."""
    if isinstance(value, bool):
        raise ValueError('expected a rate such as "2 Mbit/s", not true/false')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a rate cannot be negative")
        return value
    if value.strip().lower() == "unlimited":
        return None
    match = _RATE.match(value)
    if not match or match.group(2).lower() not in _RATE_UNITS:
        raise ValueError(
            f'{value!r} is not a rate; write a number and a unit, e.g. "2 Mbit/s" or '
            '"512 kbit/s" (units: bit/s, kbit/s, Mbit/s, Gbit/s), or "unlimited"'
        )
    return int(float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])


def parse_days(value: str | list[str]) -> frozenset[int]:
    """Weekdays (0 = Monday) from "Mon-Fri", "Sat,Sun", ["Mon", "Wed"] or "every day"."""
    parts = value if isinstance(value, list) else re.split(r"\s*,\s*", value.strip())
    if isinstance(value, str) and value.strip().lower() in ("every day", "daily"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in parts:
        first, sep, last = part.strip().lower().partition("-")
        if first[:3] not in _DAYS or (sep and last[:3] not in _DAYS):
            raise ValueError(
                f'{part!r} is not a day; write days as "Mon-Fri", "Sat,Sun" or "every day"'
            )
        start, end = _DAYS.index(first[:3]), _DAYS.index((last or first)[:3])
        days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
    return frozenset(days)


Rate = Annotated[int | None, BeforeValidator(parse_rate)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalendarEntry(_Strict):
    """One weekly window with its own cap, in the unit's local time."""

    days: Annotated[frozenset[int], BeforeValidator(parse_days)] = frozenset(range(7))
    hours: str = "00:00-24:00"  # the whole day
    cap: Rate

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        parse_hours(value)
        return value


class RateConfig(_Strict):
    """How much of the link a destination may use, and when."""

    # Outside every calendar window; "unlimited" by default.
    cap: Rate = None
    calendar: list[CalendarEntry] = Field(default_factory=list)
    # How far ahead of the cap a sender may get after an idle spell.
    burst: Size = Field(default=256 * 1024, ge=16 * 1024, le=1 << 30)
    daily_budget: Size | None = Field(default=None, ge=1)
    monthly_budget: Size | None = Field(default=None, ge=1)
    # STAT studies go even when a budget is used up (their bytes still count).
    stat_exempt: bool = Field(default=True, strict=True)
    # Back off when the link's queueing delay rises, so the clinic's own traffic stays usable.
    polite: bool = Field(default=False, strict=True)
    # How much queueing delay polite mode may add, e.g. "0.1 s".
    polite_delay: Annotated[float, BeforeValidator(parse_duration)] = Field(
        default=0.1, ge=0.02, le=5.0
    )
    # IANA name such as "Africa/Blantyre"; "local" is the unit's system time zone.
    timezone: str = "local"

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if value != "local":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f'{value!r} is not a time zone; use an IANA name such as "Africa/Nairobi" '
                    'or "local"'
                ) from None
        return value

    def policy(self) -> RatePolicy:
        """The pure policy a :class:`router.wan.rate.RateGate` enforces."""
        windows = tuple(
            CapWindow(entry.days, *parse_hours(entry.hours), entry.cap) for entry in self.calendar
        )
        return RatePolicy(
            bits_per_second=self.cap,
            windows=windows,
            burst_bytes=self.burst,
            daily_budget=self.daily_budget,
            monthly_budget=self.monthly_budget,
            stat_exempt=self.stat_exempt,
            zone=system_zone() if self.timezone == "local" else ZoneInfo(self.timezone),
        )


def system_zone() -> ZoneInfo:
    """The system's time zone from /etc/localtime (or /etc/timezone); UTC if unknown."""
    try:
        target = Path("/etc/localtime").resolve()
        name = str(target).split("/zoneinfo/", 1)[1] if "/zoneinfo/" in str(target) else ""
        if not name:
            name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        return ZoneInfo(name)
    except (OSError, IndexError, ValueError, ZoneInfoNotFoundError):
        return ZoneInfo("UTC")
