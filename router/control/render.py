"""Plain-text tables for the CLI, readable at 80 columns; no colour, no special glyphs."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence
from datetime import datetime

from router.control.schema import (
    DestinationView,
    HistoryEvent,
    StudyDetail,
    StudySummary,
    UnitStatus,
)

WIDTH = 80


def when(at: float | None, now: float | None = None) -> str:
    """A time as people at the unit read it: "14:02" today, "11-26 14:02" before, "-" none."""
    if at is None:
        return "-"
    now = time.time() if now is None else now
    moment = datetime.fromtimestamp(at)
    if moment.date() == datetime.fromtimestamp(now).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M")


def age(at: float | None, now: float | None = None) -> str:
    """How long ago: "40 s", "6 min", "3 h", "2 d"; "-" for none."""
    if at is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - at)
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 172_800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86_400)} d"


def size(count: int) -> str:
    """Bytes in the largest binary unit that keeps the number short."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def wrap(text: str, indent: str = "") -> str:
    """Free text (banners, reasons) folded at 80 columns."""
    return textwrap.fill(text, WIDTH, subsequent_indent=indent) + "\n"


def days(value: float | None) -> str:
    """Days of spool left, as a person would say it."""
    if value is None:
        return ""
    if value > 365:
        return ", more than a year left at today's rate"
    return f", about {value:g} days left at today's rate"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns as wide as their widest cell; the last column is cut to fit 80 columns."""
    if not rows:
        return "  ".join(headers) + "\n(none)\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    room = WIDTH - sum(widths[:-1]) - 2 * (len(widths) - 1)
    widths[-1] = max(8, min(widths[-1], room))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i])[: widths[i]] for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def destinations(views: Sequence[DestinationView]) -> str:
    """The destinations table, then each destination's reason in full."""
    rows = [
        [
            v.name,
            v.state.upper(),
            str(v.queued_total),
            str(v.inflight),
            str(v.failed),
            age(v.oldest_waiting_at),
            when(v.last_success_at),
            when(v.next_retry_at),
        ]
        for v in views
    ]
    text = table(
        ["DESTINATION", "STATE", "QUEUED", "SENDING", "FAILED", "OLDEST", "LAST OK", "RETRY"],
        rows,
    )
    for v in views:
        if v.reason:
            text += wrap(f"{v.name}: {v.reason}", "  ")
    return text


def status(unit: UnitStatus) -> str:
    """The CLI's status page: banner first, then the unit, destinations, spool and alarms."""
    spool = unit.spool
    lines = [
        unit.banner.text,
        "",
        f"unit {unit.unit_name}  AE {unit.ae_title}  listening {unit.listen}  "
        f"version {unit.version}",
        f"today: {unit.received_today} studies received, {unit.delivered_today} delivered; "
        f"last received {when(unit.last_received_at)}",
        f"spool: {spool.held_objects} objects held ({size(spool.held_bytes)}), "
        f"{size(spool.free_bytes)} free{days(spool.days_left)}",
    ]
    if unit.unrouted:
        lines.append(f"unrouted: {unit.unrouted} objects matched no route (kept, sent nowhere)")
    text = "".join(wrap(line, "  ") if line else "\n" for line in lines)
    text += "\n" + destinations(unit.destinations)
    for alarm in unit.alarms:
        text += wrap(f"ALARM {alarm.code}: {alarm.message} (since {when(alarm.raised_at)})", "  ")
    return text


def studies(rows: Sequence[StudySummary]) -> str:
    """The studies table (ids cut to 12 characters: enough to name one, as a prefix)."""
    return table(
        ["STUDY", "RECEIVED", "STATE", "PRIO", "OBJ", "MOD", "PATIENT"],
        [
            [
                s.study_id[:12],
                when(s.last_received_at),
                s.state.upper(),
                "STAT" if s.priority == "stat" else s.priority,
                str(s.objects),
                ",".join(s.modalities),
                f"{s.patient_name} ({s.patient_id})" if s.patient_id else s.patient_name,
            ]
            for s in rows
        ],
    )


def history(events: Sequence[HistoryEvent], *, with_object: bool = False) -> str:
    """History lines, oldest first."""
    lines = []
    for e in events:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(e.detail.items()))
        who = f"{e.object_id[:12]}  " if with_object else ""
        lines.append(wrap(f"{when(e.at)}  {who}{e.event}  {detail}".rstrip(), " " * 10))
    return "".join(lines)


def study(detail: StudyDetail) -> str:
    """A study: its summary, its objects with their deliveries, then the merged history."""
    s = detail.summary
    text = studies([s]) + f"study id {s.study_id}\n\n"
    rows = []
    for o in detail.objects:
        copies = "; ".join(f"{d.destination} {d.state}" for d in o.deliveries) or "unrouted"
        rows.append([o.object_id[:12], o.modality, size(o.size), o.state, copies])
    text += table(["OBJECT", "MOD", "SIZE", "STATE", "DELIVERIES"], rows)
    return text + "\n" + history(detail.history, with_object=True)
