"""Read model queries: the unit's status, its destinations, alarms and the audit log.

Every query reads the small tables the journal's triggers keep (studies, study_deliveries,
destination_stats, spool_totals) or an index range, never a scan of every object, so the
answers stay fast with 100,000 objects held (bench/control.py).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from datetime import datetime
from typing import Literal, cast

from router import __version__
from router.config.model import HubDestination, StowDestination
from router.control.certificates import certificate_health
from router.control.context import ControlContext
from router.control.schema import (
    AlarmView,
    AuditEntry,
    Banner,
    DestinationState,
    DestinationView,
    HealthItem,
    Priority,
    SpoolUsage,
    UnitStatus,
)
from router.core.objects import PRIORITIES
from router.core.status import DestinationFacts, UnitFacts, banner, days_left

PRIORITY_NAMES: dict[int, Priority] = {rank: name for name, rank in PRIORITIES.items()}


def _midnight(now: float) -> float:
    """The unit's local midnight before ``now``: "today" as people at the site count it."""
    local = datetime.fromtimestamp(now)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M")


def destinations(ctx: ControlContext, conn: sqlite3.Connection) -> list[DestinationView]:
    """One view per configured destination, in configuration order."""
    return [_destination(ctx, conn, d.name) for d in ctx.config.destinations]


def _destination(ctx: ControlContext, conn: sqlite3.Connection, name: str) -> DestinationView:
    queued: dict[Priority, int] = {}
    inflight = failed = committing = 0
    for state, priority, count in conn.execute(
        "SELECT state, priority, sum(n) FROM study_deliveries"
        " WHERE destination = ? AND state IN ('pending', 'inflight', 'failed', 'committing')"
        " AND n > 0 GROUP BY state, priority",
        (name,),
    ):
        if state == "pending":
            queued[PRIORITY_NAMES.get(int(priority), "routine")] = int(count)
        elif state == "inflight":
            inflight += int(count)
        elif state == "committing":
            committing += int(count)
        else:
            failed += int(count)
    studies_waiting, oldest = conn.execute(
        "SELECT count(*), min(s.first_received_at) FROM studies s WHERE s.study_tag IN ("
        " SELECT study_tag FROM study_deliveries WHERE destination = ?"
        " AND state IN ('pending', 'inflight', 'failed', 'committing') AND n > 0)",
        (name,),
    ).fetchone()
    stats = conn.execute(
        "SELECT last_delivered_at, last_error FROM destination_stats WHERE name = ?", (name,)
    ).fetchone()
    pause = conn.execute(
        "SELECT paused, changed_by, reason, changed_at FROM destination_state WHERE name = ?",
        (name,),
    ).fetchone()
    paused = bool(pause and pause[0])
    worker = ctx.workers.get(name)
    status = worker.status if worker is not None else None
    state = status.state if status is not None else "idle"
    reason = status.reason if status is not None else ""
    since = status.since if status is not None else ctx.started_at
    queued_total = sum(queued.values())
    if paused:
        state, since = "paused", float(pause[3])
        reason = f"Paused by {pause[1] or 'an operator'}" + (f": {pause[2]}" if pause[2] else ".")
    elif state in ("idle", "paused") and (queued_total or inflight):
        state = "waiting" if not inflight else "sending"
        reason = reason or "Copies are waiting for their next attempt."
    elif state == "idle" and committing:
        state = "waiting"
        reason = reason or (
            f"{committing} objects were stored there; waiting for it to confirm them "
            "(Storage Commitment)."
        )
    if failed and state in ("idle", "sending", "waiting") and not reason:
        reason = (
            f"{failed} objects were refused for good. Look at the studies marked failed; "
            "retry them once the cause is fixed."
        )
    destination = next(d for d in ctx.config.destinations if d.name == name)
    hub: dict[str, object] = {}
    if isinstance(destination, HubDestination):
        receipts = dict(
            conn.execute(
                "SELECT state, count(*) FROM hub_uploads WHERE destination = ? GROUP BY state",
                (name,),
            ).fetchall()
        )
        hub = {
            "kind": "hub",
            "link": hub_link(state),
            "at_hub": int(receipts.get("committed", 0)),
            "at_provider": int(receipts.get("delivered", 0)),
        }
    if isinstance(destination, StowDestination):
        hub = {"kind": "stow"}
    return DestinationView(
        name=name,
        address=(
            destination.url
            if isinstance(destination, HubDestination | StowDestination)
            else f"{destination.ae_title}@{destination.host}:{destination.port}"
        ),
        state=cast(DestinationState, state),
        reason=reason,
        since=since,
        queued=queued,
        queued_total=queued_total,
        inflight=inflight,
        committing=committing,
        failed=failed,
        oldest_waiting_at=oldest,
        studies_waiting=int(studies_waiting),
        last_success_at=stats[0] if stats else None,
        next_retry_at=status.next_retry_at if status is not None else None,
        last_error=(stats[1] or "") if stats else "",
        paused=paused,
        paused_by=pause[1] if paused else "",
        paused_reason=pause[2] if paused else "",
        **hub,  # type: ignore[arg-type]
    )


def hub_link(state: str) -> str:
    """A hub destination's link in one word, from its worker's state."""
    if state in ("down", "blocked"):
        return "down"
    if state == "waiting":
        return "degraded"
    return "up"


def spool_usage(ctx: ControlContext, conn: sqlite3.Connection, now: float) -> SpoolUsage:
    """Space on the spool and how many days it lasts at today's receiving rate."""
    held_objects, held_bytes = conn.execute(
        "SELECT held_objects, held_bytes FROM spool_totals WHERE id = 1"
    ).fetchone()
    midnight = _midnight(now)
    today_bytes = conn.execute(
        "SELECT coalesce(sum(size), 0) FROM objects WHERE received_at >= ?", (midnight,)
    ).fetchone()[0]
    fs = os.statvfs(ctx.spool.root)
    free = fs.f_bavail * fs.f_frsize
    min_free = ctx.config.spool.min_free
    return SpoolUsage(
        total_bytes=fs.f_blocks * fs.f_frsize,
        free_bytes=free,
        held_bytes=int(held_bytes),
        held_objects=int(held_objects),
        min_free_bytes=min_free,
        days_left=days_left(
            free_bytes=free,
            min_free_bytes=min_free,
            received_today_bytes=int(today_bytes),
            seconds_since_midnight=now - midnight,
        ),
    )


def status(ctx: ControlContext, conn: sqlite3.Connection) -> UnitStatus:
    """Everything the console's first screen needs, in one read transaction."""
    now = time.time()
    midnight = _midnight(now)
    views = destinations(ctx, conn)
    count = conn.execute
    received_today = count(
        "SELECT count(*) FROM studies WHERE last_received_at >= ?", (midnight,)
    ).fetchone()[0]
    delivered_today = count(
        "SELECT count(*) FROM studies WHERE last_delivered_at >= ? AND state = 'delivered'",
        (midnight,),
    ).fetchone()[0]
    last_received = count("SELECT max(received_at) FROM objects").fetchone()[0]
    waiting, oldest = count(
        "SELECT count(*), min(first_received_at) FROM studies"
        " WHERE state IN ('waiting', 'sending', 'failed')"
    ).fetchone()
    unrouted_studies, unrouted_objects = count(
        "SELECT count(*), coalesce(sum(held), 0) FROM studies WHERE state = 'unrouted' AND held > 0"
    ).fetchone()
    alarms = [AlarmView(**vars(a)) for a in ctx.alarms.active()]
    facts = UnitFacts(
        now=now,
        destinations=[
            DestinationFacts(
                name=v.name,
                state=v.state,
                since=v.since,
                studies_waiting=v.studies_waiting,
                failed=v.failed,
                paused_by=v.paused_by,
            )
            for v in views
        ],
        studies_waiting=int(waiting),
        oldest_waiting_at=oldest,
        unrouted_studies=int(unrouted_studies),
        faults=[a.message for a in alarms],
    )
    line = banner(facts, _clock)
    spool = spool_usage(ctx, conn, now)
    spool_state: Literal["ok", "warn", "fault"] = "ok"
    if spool.free_bytes < spool.min_free_bytes:
        spool_state = "fault"
    elif spool.days_left is not None and spool.days_left < 2:
        spool_state = "warn"
    listen = ctx.config.ingest.listen
    return UnitStatus(
        unit_name=ctx.config.unit.name,
        ae_title=ctx.config.unit.ae_title,
        listen=listen,
        addresses=_addresses(ctx.config.ingest.host),
        version=__version__,
        now=now,
        started_at=ctx.started_at,
        banner=Banner(level=line.level, text=line.text),
        received_today=int(received_today),
        delivered_today=int(delivered_today),
        last_received_at=last_received,
        unrouted=int(unrouted_objects),
        spool=spool,
        health=[
            HealthItem(
                name="spool",
                state=spool_state,
                detail=f"{spool.free_bytes // 1024**2} MiB free"
                + (f", about {spool.days_left:g} days left" if spool.days_left else ""),
            ),
            *(HealthItem(name=c.name, state=c.state, detail=c.detail) for c in ctx.health()),
            *certificate_health(ctx.config),
        ],
        alarms=alarms,
        destinations=views,
    )


def _addresses(host: str) -> list[str]:
    if host not in ("0.0.0.0", "::", ""):
        return [host]
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)})
    except OSError:
        return []


def alarms(ctx: ControlContext) -> list[AlarmView]:
    """The active alarms, oldest first."""
    return [AlarmView(**vars(a)) for a in ctx.alarms.active()]


def audit(conn: sqlite3.Connection, limit: int, before: int | None) -> list[AuditEntry]:
    """The audit log, newest first; ``before`` pages back from a sequence number."""
    rows = conn.execute(
        "SELECT seq, at, user, uid, action, target, reason, outcome FROM audit"
        " WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        (before if before is not None else 2**62, limit),
    )
    return [
        AuditEntry(
            seq=r[0],
            at=r[1],
            user=r[2],
            uid=r[3],
            action=r[4],
            target=r[5],
            reason=r[6],
            outcome=r[7],
        )
        for r in rows
    ]
