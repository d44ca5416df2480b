"""Studies, one study's objects with their deliveries and history, and an object's history.

A study is named by an opaque id (the hex of its keyed tag), never by its Study Instance
UID. Patient data comes only from the sealed summary, opened here; unless the caller gave the
operator PIN it leaves masked ("D*** J***").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import cast

from router.config.dicom_names import sop_class_name
from router.control.context import ControlContext
from router.control.schema import (
    DeliveryCounts,
    DeliveryState,
    DeliveryView,
    HistoryEvent,
    ObjectView,
    Priority,
    StudyDetail,
    StudyState,
    StudySummary,
)
from router.control.views import PRIORITY_NAMES
from router.errors import IntegrityError

# sort key (as the API names it) -> SQL order
SORTS = {
    "last_received": "last_received_at",
    "first_received": "first_received_at",
    "objects": "held",
    "state": "state",
}
STUDY_STATES = ("delivered", "sending", "waiting", "failed", "unrouted", "discarded")
# An unmasked text search decrypts summaries: it looks at the most recent studies only.
_SEARCH_WINDOW = 5000
_COLUMNS = (
    "study_id, study_tag, meta_object, meta, modalities, held, first_received_at,"
    " last_received_at, state"
)


def mask_name(name: str) -> str:
    """ "DOE^JOHN" -> "D*** J***": initials only."""
    words = [w for w in name.replace("^", " ").split() if w]
    return " ".join(f"{w[0]}***" for w in words)


def mask_id(value: str) -> str:
    """A patient ID with all but its last two characters hidden."""
    return "***" + value[-2:] if len(value) > 4 else "***" if value else ""


def _summary_text(ctx: ControlContext, meta_object: str, meta: bytes) -> dict[str, str]:
    if not meta:
        return {}  # every object's metadata was destroyed (retention)
    try:
        record: dict[str, str] = json.loads(ctx.spool.keyring.open_record(meta_object, meta))
    except (IntegrityError, ValueError):
        return {}
    return record


def _summary(
    ctx: ControlContext,
    row: Sequence[object],
    counts: dict[str, DeliveryCounts],
    priority: Priority,
    unmask: bool,
) -> StudySummary:
    study_id, _tag, meta_object, meta, modalities, held, first, last, state = row
    record = _summary_text(ctx, str(meta_object), bytes(cast(bytes, meta)))
    name, pid = record.get("patient_name", ""), record.get("patient_id", "")
    return StudySummary(
        study_id=str(study_id),
        masked=not unmask,
        patient_name=name if unmask else mask_name(name),
        patient_id=pid if unmask else mask_id(pid),
        study_date=record.get("study_date", ""),
        description=record.get("study_description", ""),
        accession=record.get("accession", "") if unmask else "",
        modalities=[m for m in str(modalities).split(",") if m],
        objects=int(cast(int, held)),
        first_received_at=float(cast(float, first)),
        last_received_at=float(cast(float, last)),
        priority=priority,
        state=cast(StudyState, state),
        destinations=counts,
    )


def _counts(
    conn: sqlite3.Connection, tags: list[bytes]
) -> tuple[dict[bytes, dict[str, DeliveryCounts]], dict[bytes, Priority]]:
    """Per study: delivery counts by destination, and the priority of what is left to send."""
    raw: dict[bytes, dict[str, dict[str, int]]] = {}
    ranks: dict[bytes, tuple[int, int]] = {}  # (undelivered min, overall min)
    if not tags:
        return {}, {}
    marks = ",".join("?" * len(tags))
    for tag, destination, state, priority, n in conn.execute(
        "SELECT study_tag, destination, state, priority, n FROM study_deliveries"
        f" WHERE study_tag IN ({marks}) AND n > 0",
        tags,
    ):
        tag = bytes(tag)
        per = raw.setdefault(tag, {}).setdefault(destination, {})
        per[state] = per.get(state, 0) + int(n)
        undelivered, overall = ranks.get(tag, (9, 9))
        if state in ("pending", "inflight", "failed", "committing"):
            undelivered = min(undelivered, int(priority))
        ranks[tag] = (undelivered, min(overall, int(priority)))
    counts = {
        tag: {
            dest: DeliveryCounts(**{k: v for k, v in states.items() if k != "cancelled"})
            for dest, states in by_dest.items()
        }
        for tag, by_dest in raw.items()
    }
    priorities: dict[bytes, Priority] = {}
    for tag, (undelivered, overall) in ranks.items():
        rank = undelivered if undelivered != 9 else overall
        priorities[tag] = PRIORITY_NAMES.get(rank, "routine")
    return counts, priorities


def _matches(summary: StudySummary, text: str) -> bool:
    needle = text.casefold()
    fields = [
        summary.study_id,
        summary.patient_name,
        summary.patient_id,
        summary.accession,
        summary.description,
        *summary.modalities,
    ]
    return any(needle in f.casefold() for f in fields if f)


def studies(
    ctx: ControlContext,
    conn: sqlite3.Connection,
    *,
    state: str | None,
    query: str | None,
    since: float | None,
    limit: int,
    offset: int,
    sort: str,
    unmask: bool,
) -> list[StudySummary]:
    """Studies held on the unit, filtered, sorted and paged (see docs/control-api.md)."""
    where = ["held > 0"]
    args: list[object] = []
    if state is not None:
        where.append("state = ?")
        args.append(state)
    if since is not None:
        where.append("last_received_at >= ?")
        args.append(since)
    search_in_python = bool(query) and unmask
    if query and not unmask:
        # Masked: only what is not patient data can be searched.
        where.append("(study_id LIKE ? OR instr(',' || modalities || ',', ?))")
        args += [query.lower() + "%", "," + query.upper() + ","]
    direction = "DESC" if sort.startswith("-") else "ASC"
    # rowid as the tie-break: it is the last column of every index, so the newest-first list
    # walks studies_last without sorting.
    order = f"{SORTS[sort.lstrip('-')]} {direction}, rowid {direction}"
    page = (_SEARCH_WINDOW, 0) if search_in_python else (limit, offset)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM studies WHERE {' AND '.join(where)}"
        f" ORDER BY {order} LIMIT ? OFFSET ?",
        (*args, *page),
    ).fetchall()
    if search_in_python:
        assert query is not None
        found = [s for s in _summaries(ctx, conn, rows, unmask) if _matches(s, query)]
        return found[offset : offset + limit]
    return _summaries(ctx, conn, rows, unmask)


def _summaries(
    ctx: ControlContext, conn: sqlite3.Connection, rows: list[tuple[object, ...]], unmask: bool
) -> list[StudySummary]:
    counts, priorities = _counts(conn, [bytes(cast(bytes, r[1])) for r in rows])
    out = []
    for row in rows:
        tag = bytes(cast(bytes, row[1]))
        out.append(_summary(ctx, row, counts.get(tag, {}), priorities.get(tag, "routine"), unmask))
    return out


def study_tag_of(conn: sqlite3.Connection, study_id: str) -> bytes | None:
    """The study tag behind an opaque study id, or None."""
    row = conn.execute("SELECT study_tag FROM studies WHERE study_id = ?", (study_id,)).fetchone()
    return bytes(row[0]) if row else None


def study(
    ctx: ControlContext, conn: sqlite3.Connection, study_id: str, *, unmask: bool
) -> StudyDetail | None:
    """One study with every object, its deliveries and the merged history; None if unknown."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM studies WHERE study_id = ?", (study_id,)).fetchone()
    if row is None:
        return None
    summary = _summaries(ctx, conn, [row], unmask)[0]
    objects = conn.execute(
        "SELECT id, sop_class_uid, modality, size, received_at, calling_ae, state FROM objects"
        " WHERE study_tag = ? ORDER BY received_at, rowid",
        (row[1],),
    ).fetchall()
    ids = [o[0] for o in objects]
    deliveries: dict[str, list[DeliveryView]] = {}
    history: list[HistoryEvent] = []
    for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
        marks = ",".join("?" * len(chunk))
        for d in conn.execute(
            "SELECT object_id, destination, rule, priority, state, attempts, next_attempt_at,"
            f" last_status, last_error, updated_at FROM deliveries WHERE object_id IN ({marks})"
            " ORDER BY destination",
            chunk,
        ):
            deliveries.setdefault(d[0], []).append(
                DeliveryView(
                    destination=d[1],
                    rule=d[2],
                    priority=PRIORITY_NAMES.get(int(d[3]), "routine"),
                    state=cast(DeliveryState, d[4]),
                    attempts=d[5],
                    next_attempt_at=d[6] or None,
                    last_status=d[7],
                    last_error=d[8] or "",
                    updated_at=d[9],
                )
            )
        history += _history(conn, f"object_id IN ({marks})", chunk)
    history.sort(key=lambda e: e.at)
    return StudyDetail(
        summary=summary,
        objects=[
            ObjectView(
                object_id=o[0],
                sop_class=sop_class_name(o[1]),
                modality=o[2],
                size=o[3],
                received_at=o[4],
                calling_ae=o[5],
                state=o[6],
                deliveries=deliveries.get(o[0], []),
            )
            for o in objects
        ],
        history=history,
    )


def _history(conn: sqlite3.Connection, where: str, args: Sequence[object]) -> list[HistoryEvent]:
    return [
        HistoryEvent(object_id=r[0], at=r[1], event=r[2], detail=json.loads(r[3] or "{}"))
        for r in conn.execute(
            f"SELECT object_id, at, event, detail FROM history WHERE {where} ORDER BY seq", args
        )
    ]


def object_history(conn: sqlite3.Connection, object_id: str) -> list[HistoryEvent] | None:
    """One object's history, oldest first; None when no such object."""
    if conn.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone() is None:
        return None
    return _history(conn, "object_id = ?", (object_id,))
