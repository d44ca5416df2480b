"""Parsing of human-friendly values used by the configuration: byte sizes ("1 GiB", "500 MB"),
durations ("90 s", "5 min") and daily time windows ("08:00-17:00")."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Return the number of bytes in ``value``: an integer or a string like "1 GiB".

    Raises ValueError with a message that names the accepted units.
    """
    if isinstance(value, bool):
        raise ValueError('expected a size such as "1 GiB", not true/false')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f'{value!r} is not a size; write a number and a unit, e.g. "1 GiB" or "500 MB" '
            "(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int) -> str:
    """Return ``n`` bytes as a short human string using binary units."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_DURATION_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: str | int | float) -> float:
    """Return the number of seconds in ``value``: a number of seconds or a string such as
    "90 s", "5 min", "2 h" or "1 day".

    Raises ValueError with a message that names the accepted units.
    """
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "5 min", not true/false')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(value)
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(
            f'{value!r} is not a duration; write a number and a unit, e.g. "90 s", "5 min" or '
            '"2 h" (units: s, min, h, d)'
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_hours(value: str) -> tuple[int, int]:
    """Return a daily time window "HH:MM-HH:MM" as (start, end) minutes after midnight.

    The start is included and the end is not; an end before the start wraps past midnight
    ("22:00-06:00"). "24:00" is accepted as an end, so "00:00-24:00" is the whole day.
    Raises ValueError explaining the format.
    """
    start_text, sep, end_text = value.partition("-")
    start = _minutes(start_text.strip())
    end = 24 * 60 if end_text.strip() == "24:00" else _minutes(end_text.strip())
    if not sep or start is None or end is None:
        raise ValueError(
            f'{value!r} is not a time window; write "HH:MM-HH:MM" in 24-hour local time, '
            'e.g. "08:00-17:00" or "22:00-06:00" (wraps past midnight)'
        )
    if start == end:
        raise ValueError(
            f'{value!r} starts and ends at the same time; for the whole day write "00:00-24:00"'
        )
    return start, end


def _minutes(text: str) -> int | None:
    match = _CLOCK.match(text)
    return int(match.group(1)) * 60 + int(match.group(2)) if match else None
