"""Plain-text wording for the console: times, sizes, states. Pure functions, no Textual.

Everything here must read well on a bare Linux console: ASCII only, and every state written
out in words (never conveyed by colour alone).
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from router.control.schema import Banner, DestinationView, HealthItem, SpoolUsage

BANNER_MARKERS = {"ok": "OK", "sending": ">>", "attention": "!!", "unknown": "??"}

DESTINATION_STATES = {
    "idle": "OK",
    "sending": "SENDING",
    "waiting": "WAITING",
    "paused": "PAUSED",
    "down": "DOWN",
    "blocked": "BLOCKED",
}

HEALTH_STATES = {"ok": "ok", "warn": "WARNING", "fault": "FAULT", "unknown": "unknown"}


def banner_line(banner: Banner) -> str:
    """The banner with a text marker in front, so its level reads without colour."""
    return f"{BANNER_MARKERS.get(banner.level, '??')} {banner.text}"


def ago(seconds: float) -> str:
    """How long ago, in the largest unit that fits: "3 s", "6 min", "2 h 5 min", "3 days"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"


def clock_time(at: float | None, now: float, tz: tzinfo | None, *, seconds: bool = False) -> str:
    """A time of day, with the date in front when it is not today; "-" when unknown."""
    if at is None:
        return "-"
    when = datetime.fromtimestamp(at, tz)
    today = datetime.fromtimestamp(now, tz).date()
    text = when.strftime("%H:%M:%S" if seconds else "%H:%M")
    return text if when.date() == today else f"{when:%d %b} {text}"


def size(nbytes: float) -> str:
    """Bytes in the largest unit under 1024: "512 B", "3.4 MB", "12.3 GB"."""
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plural(count: int, word: str, words: str | None = None) -> str:
    """ "1 object", "3 objects"."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def destination_state(view: DestinationView) -> str:
    """The state word shown for a destination."""
    return DESTINATION_STATES.get(view.state, view.state.upper())


def destination_reason(view: DestinationView) -> str:
    """What is going on with a destination in plain words, or "" when all is well."""
    if view.paused:
        who = f" by {view.paused_by}" if view.paused_by else ""
        why = f": {view.paused_reason}" if view.paused_reason else ""
        return view.reason or f"Paused{who}{why}. Press r on Destinations to resume."
    return view.reason or view.last_error


def spool_line(spool: SpoolUsage) -> str:
    """Disk use and roughly how long the free space lasts at today's rate."""
    used_pct = 100 * (spool.total_bytes - spool.free_bytes) / max(1, spool.total_bytes)
    text = f"{size(spool.free_bytes)} free of {size(spool.total_bytes)} ({used_pct:.0f}% used)"
    if spool.free_bytes <= spool.min_free_bytes:
        text = "DISK FULL - not accepting studies. " + text
    elif spool.free_bytes <= 2 * spool.min_free_bytes or (
        spool.days_left is not None and spool.days_left < 2
    ):
        text = "DISK NEARLY FULL. " + text
    return text


def outlook_line(spool: SpoolUsage) -> str:
    """How long the space lasts at today's rate, and what the unit holds."""
    held = f"{plural(spool.held_objects, 'object')} held ({size(spool.held_bytes)})"
    if spool.days_left is None:
        return f"No studies today to estimate days left. {held}"
    return f"{days_left(spool.days_left).capitalize()} left at today's rate. {held}"


def days_left(days: float) -> str:
    """Roughly how long the free space lasts, in words: "less than a day", "about 18 days"."""
    if days < 1:
        return "less than a day"
    if days > 365:
        return "more than a year"
    return f"about {plural(round(days), 'day')}"


def health_line(items: list[HealthItem]) -> str:
    """ "Link: ok   Clock: WARNING (not synchronised)   Power: ok" from the known items."""
    parts = []
    for item in items:
        state = HEALTH_STATES.get(item.state, item.state)
        detail = f" ({item.detail})" if item.detail and item.state != "ok" else ""
        parts.append(f"{item.name.capitalize()}: {state}{detail}")
    return "   ".join(parts) if parts else "Link, clock, power: not known on this unit"


def mask(text: str, masked: bool) -> str:
    """Patient data as the daemon sent it; masked fields show as stars, never blank."""
    if masked and not text.strip("*"):
        return "*****"
    return text or "-"
