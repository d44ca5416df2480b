"""The conditions a routing rule can test: pure checks on an object, its sender and the time.

Each condition answers ``failure(attributes, source, now)``: ``None`` when it holds, otherwise
the reason in words ("modality MR is not one of CT"), for the dry-run. Reasons never quote an
attribute's value unless it is a code string (VR CS, e.g. BodyPartExamined), so patient names
and IDs never appear in them.

An attribute that is absent or empty is "missing": it never satisfies equals, one_of or regex,
and it satisfies ``present = false``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from router.core.objects import ObjectAttributes, Source

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

Fact = Literal["calling_ae", "called_ae", "modality", "sop_class"]
_FACT_LABELS: dict[Fact, str] = {
    "calling_ae": "calling AE title",
    "called_ae": "called AE title",
    "modality": "modality",
    "sop_class": "SOP class",
}


class Condition(Protocol):
    """One test of a rule. ``keywords`` are the attributes it reads from the header."""

    @property
    def keywords(self) -> frozenset[str]:
        """The DICOM keywords this condition needs decoded at ingest."""
        ...

    def failure(self, attributes: ObjectAttributes, source: Source, now: datetime) -> str | None:
        """``None`` if the condition holds, otherwise why not, in words."""
        ...


def _fact(fact: Fact, attributes: ObjectAttributes, source: Source) -> str:
    if fact == "calling_ae":
        return source.calling_ae.strip()
    if fact == "called_ae":
        return source.called_ae.strip()
    if fact == "modality":
        return attributes.modality.strip()
    return attributes.sop_class_uid.strip()


@dataclass(frozen=True)
class FactIsOneOf:
    """The calling or called AE title, the modality or the SOP Class UID is one of ``values``
    (exact comparison, surrounding spaces ignored)."""

    fact: Fact
    values: tuple[str, ...]
    # How to show a value in reasons, e.g. a SOP Class UID by its name ("CT Image Storage").
    describe: Callable[[str], str] = str

    @property
    def keywords(self) -> frozenset[str]:
        """None: these facts are always read."""
        return frozenset()

    def failure(self, attributes: ObjectAttributes, source: Source, now: datetime) -> str | None:
        """See Condition."""
        value = _fact(self.fact, attributes, source)
        if value in self.values:
            return None
        shown = self.describe(value) if value else "(none)"
        expected = ", ".join(self.describe(v) for v in self.values)
        return f"{_FACT_LABELS[self.fact]} {shown} is not one of {expected}"


def _value(attributes: ObjectAttributes, keyword: str) -> str | None:
    value = attributes.keywords.get(keyword)
    return value if value else None


def _shown(keyword: str, value: str, show_value: bool) -> str:
    return f"{keyword} {value!r}" if show_value else keyword


@dataclass(frozen=True)
class AttributeIsOneOf:
    """The attribute's value equals one of ``values`` (``equals`` is a list of one)."""

    keyword: str
    values: tuple[str, ...]
    ignore_case: bool = False
    show_value: bool = False  # only for code strings: never quote patient data

    @property
    def keywords(self) -> frozenset[str]:
        """The attribute tested."""
        return frozenset({self.keyword})

    def failure(self, attributes: ObjectAttributes, source: Source, now: datetime) -> str | None:
        """See Condition."""
        value = _value(attributes, self.keyword)
        if value is None:
            return f"{self.keyword} is missing"
        if self.ignore_case:
            if value.casefold() in {v.casefold() for v in self.values}:
                return None
        elif value in self.values:
            return None
        expected = (
            f"{self.values[0]!r}"
            if len(self.values) == 1
            else f"one of {', '.join(repr(v) for v in self.values)}"
        )
        case = " (ignoring case)" if self.ignore_case else ""
        return f"{_shown(self.keyword, value, self.show_value)} is not {expected}{case}"


@dataclass(frozen=True)
class AttributeMatches:
    """The regular expression is found in the attribute's value (``re.search``: anywhere in
    the value unless anchored with ^ and $)."""

    keyword: str
    pattern: re.Pattern[str]
    show_value: bool = False

    @property
    def keywords(self) -> frozenset[str]:
        """The attribute tested."""
        return frozenset({self.keyword})

    def failure(self, attributes: ObjectAttributes, source: Source, now: datetime) -> str | None:
        """See Condition."""
        value = _value(attributes, self.keyword)
        if value is None:
            return f"{self.keyword} is missing"
        if self.pattern.search(value):
            return None
        case = " (ignoring case)" if self.pattern.flags & re.IGNORECASE else ""
        shown = _shown(self.keyword, value, self.show_value)
        return f"{shown} does not match regex {self.pattern.pattern!r}{case}"


@dataclass(frozen=True)
class AttributePresent:
    """The attribute is present with a value (``present = true``), or absent or empty."""

    keyword: str
    present: bool

    @property
    def keywords(self) -> frozenset[str]:
        """The attribute tested."""
        return frozenset({self.keyword})

    def failure(self, attributes: ObjectAttributes, source: Source, now: datetime) -> str | None:
        """See Condition."""
        has_value = _value(attributes, self.keyword) is not None
        if has_value == self.present:
            return None
        return f"{self.keyword} is missing" if self.present else f"{self.keyword} is present"


@dataclass(frozen=True)
class TimeWindow:
    """Local time is inside ``hours`` (minutes after midnight, start included, end excluded)
    on one of ``days`` (0 = Monday).

    A window that wraps past midnight ("22:00-06:00") belongs to the day it starts on: with
    ``days = [Fri]`` it covers Friday 22:00 to Saturday 06:00, not Friday 00:00-06:00.
    Without hours, the day is the calendar day; without days, every day.
    """

    hours: tuple[int, int] | None = None
    days: frozenset[int] | None = None

    @property
    def keywords(self) -> frozenset[str]:
        """None: time is not an attribute."""
        return frozenset()

    def failure(self, attributes: ObjectAttributes, source: Source, now: datetime) -> str | None:
        """See Condition."""
        minute = now.hour * 60 + now.minute
        day = now.weekday()
        at = f"{DAY_NAMES[day]} {now:%H:%M}"
        if self.hours is not None:
            start, end = self.hours
            if start < end:
                inside = start <= minute < end
            elif minute >= start:
                inside = True
            else:
                inside = minute < end
                day = (day - 1) % 7  # the early hours belong to the night that began yesterday
            if not inside:
                return f"{at} is outside hours {self.window}"
        if self.days is not None and day not in self.days:
            allowed = ", ".join(DAY_NAMES[d] for d in sorted(self.days))
            if day != now.weekday():
                return (
                    f"{at} is in {DAY_NAMES[day]}'s {self.window} window and "
                    f"{DAY_NAMES[day]} is not one of {allowed}"
                )
            return f"{at}: {DAY_NAMES[day]} is not one of {allowed}"
        return None

    @property
    def window(self) -> str:
        """The hours as written ("22:00-06:00"), or "all day"."""
        if self.hours is None:
            return "all day"
        return "-".join(f"{m // 60:02d}:{m % 60:02d}" for m in self.hours)
