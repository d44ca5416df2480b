"""The unit's one-line banner and the spool's days left: pure decisions over plain data.

The console shows the banner first; a technician must know from it alone whether every study
got where it should. The order of the checks is the order of urgency: a destination that does
not take objects, then objects refused for good, then faults of the unit itself, then paused
destinations, then work in progress, then unrouted objects, and only then "all delivered".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

BannerLevel = Literal["ok", "sending", "attention", "unknown"]
_DAY = 86_400.0
# Below an hour of receiving, a day's rate projected from it says little: count an hour.
_MIN_RATE_WINDOW = 3_600.0


@dataclass(frozen=True)
class DestinationFacts:
    """What the banner needs to know about one destination."""

    name: str
    state: str  # idle | sending | waiting | paused | down | blocked
    since: float
    studies_waiting: int  # studies with a copy for it not yet delivered
    failed: int  # objects refused for good
    paused_by: str = ""


@dataclass(frozen=True)
class UnitFacts:
    """What the banner needs to know about the unit."""

    now: float
    destinations: Sequence[DestinationFacts]
    studies_waiting: int  # studies with any copy not yet delivered (pending or in flight)
    oldest_waiting_at: float | None
    unrouted_studies: int = 0
    faults: Sequence[str] = ()  # active alarm messages that need a person


@dataclass(frozen=True)
class BannerText:
    """The banner: its level and its words."""

    level: BannerLevel
    text: str


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word[:-1]}ies" if word.endswith("y") else f"{count} {word}s"


def _age(seconds: float) -> str:
    """An age in the largest unit that reads naturally: "40 s", "6 min", "3 h", "2 days"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * _DAY:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // _DAY)} days"


def _names(destinations: Sequence[DestinationFacts]) -> str:
    return ", ".join(d.name for d in destinations)


def banner(facts: UnitFacts, clock: Callable[[float], str]) -> BannerText:
    """The banner for ``facts``; ``clock`` renders a time of day (e.g. "09:14", local)."""
    down = [d for d in facts.destinations if d.state == "down"]
    blocked = [d for d in facts.destinations if d.state == "blocked"]
    safe = _plural(facts.studies_waiting, "study")
    if down or blocked:
        parts = []
        if down:
            since = clock(min(d.since for d in down))
            parts.append(f"{_names(down)} unreachable since {since}")
        if blocked:
            since = clock(min(d.since for d in blocked))
            parts.append(f"{_names(blocked)} refuses this unit since {since}")
        return BannerText("attention", f"ATTENTION: {'; '.join(parts)} - {safe} safe on this unit")
    refusing = [d for d in facts.destinations if d.failed]
    if refusing:
        failed = sum(d.failed for d in refusing)
        return BannerText(
            "attention",
            f"ATTENTION: {_plural(failed, 'object')} refused by {_names(refusing)} - "
            "waiting for an operator",
        )
    if facts.faults:
        return BannerText("attention", f"ATTENTION: {facts.faults[0]}")
    paused = [d for d in facts.destinations if d.state == "paused" and d.studies_waiting]
    if paused:
        waiting = sum(d.studies_waiting for d in paused)
        return BannerText(
            "attention",
            f"ATTENTION: {_names(paused)} paused - {_plural(waiting, 'study')} waiting",
        )
    if facts.studies_waiting:
        text = f"SENDING {facts.studies_waiting}"
        if facts.oldest_waiting_at is not None:
            text += f" - oldest waiting {_age(facts.now - facts.oldest_waiting_at)}"
        return BannerText("sending", text)
    if facts.unrouted_studies:
        return BannerText(
            "attention",
            f"ATTENTION: {_plural(facts.unrouted_studies, 'study')} matched no route - "
            "kept on this unit, sent nowhere",
        )
    return BannerText("ok", "ALL STUDIES DELIVERED")


def days_left(
    *,
    free_bytes: int,
    min_free_bytes: int,
    received_today_bytes: int,
    seconds_since_midnight: float,
) -> float | None:
    """Days until the spool refuses new objects at today's receiving rate.

    None when nothing was received today (no rate to project from). The rate is today's
    bytes over the part of the day gone by (at least an hour), as bytes per day."""
    if received_today_bytes <= 0:
        return None
    window = max(_MIN_RATE_WINDOW, min(seconds_since_midnight, _DAY))
    per_day = received_today_bytes / window * _DAY
    usable = max(0, free_bytes - min_free_bytes)
    return round(usable / per_day, 1)
