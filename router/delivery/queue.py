"""The delivery queue in the journal: claim work by priority, record each outcome.

A delivery moves pending -> inflight (claimed by a worker) -> delivered | pending (transient
failure, with a time to retry) | failed (permanent; waits for an operator). To a destination
with Storage Commitment, a stored object goes inflight -> committing, and only the
destination's commitment result makes it delivered (see commitment.py). It changes only
on the destination's response; a crash leaves it inflight, and recovery makes it pending again,
so an object in flight at a crash is sent again (duplicates bounded by what was in flight).
"""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from router.core.retry import Classification
from router.spool.spool import Spool


@dataclass(frozen=True)
class Claimed:
    """A delivery a worker has taken: the object, its priority and how often it was tried."""

    object_id: str
    priority: int
    attempts: int
    rule: str


@dataclass(frozen=True)
class QueueDepth:
    """How much a destination still has to send."""

    pending: dict[int, int]
    inflight: int
    failed: int
    oldest_received_at: float | None
    next_attempt_at: float | None
    last_delivered_at: float | None
    last_error: str | None
    committing: int = 0  # stored, waiting for the destination's Storage Commitment result


class DeliveryQueue:
    """Journal operations of the delivery engine (one instance per router)."""

    def __init__(self, spool: Spool, *, study_quiet_seconds: float = 300.0) -> None:
        self.spool = spool
        self.journal = spool.journal
        self.study_quiet_seconds = study_quiet_seconds

    def claim(self, destination: str, limit: int, now: float | None = None) -> list[Claimed]:
        """Take up to ``limit`` due deliveries, most urgent first, oldest first within a
        priority. Study-mode deliveries are due only once their study has been quiet."""
        at = time.time() if now is None else now
        quiet_before = at - self.study_quiet_seconds

        def transaction(conn: sqlite3.Connection) -> list[Claimed]:
            rows = conn.execute(
                "UPDATE deliveries SET state = 'inflight', attempts = attempts + 1, updated_at = ?"
                " WHERE rowid IN ("
                "   SELECT d.rowid FROM deliveries d JOIN objects o ON o.id = d.object_id"
                "   WHERE d.destination = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
                "   AND (d.send = 'object' OR NOT EXISTS ("
                "     SELECT 1 FROM objects s WHERE s.study_tag = o.study_tag"
                "     AND s.received_at > ?))"
                "   ORDER BY d.priority, o.received_at, d.rowid LIMIT ?)"
                " RETURNING object_id, priority, attempts, rule",
                (at, destination, at, quiet_before, limit),
            ).fetchall()
            rows.sort(key=lambda r: r[1])
            return [Claimed(*row) for row in rows]

        # Lazy (no fsync of its own): a claim lost in a power cut leaves the delivery pending,
        # which is where recovery would put an inflight one anyway (Journal.submit says why).
        result: list[Claimed] = self.journal.run(transaction, durable=False)
        return result

    def record(
        self,
        destination: str,
        claimed: Claimed,
        verdict: Classification,
        *,
        retry_at: float | None = None,
        now: float | None = None,
        extra: dict[str, Any] | None = None,
        awaiting_commitment: bool = False,
    ) -> Future[Any]:
        """Record one attempt's outcome. Returns at once; the journal commits it in the next
        batch, lazily: not fsynced on its own, but by the next durable commit or within
        moments (Journal.submit). If a crash or power cut loses it, the delivery is inflight
        (recovery makes it pending) and is simply sent again.

        With ``awaiting_commitment`` a stored object is not delivered yet: it becomes
        "committing" until the destination's Storage Commitment result."""
        at = time.time() if now is None else now
        state = {"delivered": "delivered", "transient": "pending", "permanent": "failed"}[
            verdict.verdict
        ]
        event = {"delivered": "delivered", "transient": "attempt-failed", "permanent": "failed"}[
            verdict.verdict
        ]
        if state == "delivered" and awaiting_commitment:
            state, event = "committing", "stored"
        detail: dict[str, Any] = {
            "destination": destination,
            "attempt": claimed.attempts,
            "status": verdict.status,
            "reason": verdict.reason,
        }
        if retry_at is not None:
            detail["retry_at"] = round(retry_at, 3)
        detail.update(extra or {})
        if event == "stored":
            detail["reason"] = "stored, awaiting commitment"

        def transaction(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_status = ?,"
                " last_error = ?, updated_at = ?"
                " WHERE object_id = ? AND destination = ? AND state = 'inflight'",
                (
                    state,
                    retry_at or 0.0,
                    verdict.status,
                    None if state == "delivered" else verdict.reason,
                    at,
                    claimed.object_id,
                    destination,
                ),
            ).rowcount
            if changed:
                conn.execute(
                    "INSERT INTO history(object_id, at, event, detail) VALUES (?, ?, ?, ?)",
                    (claimed.object_id, at, event, json.dumps(detail, sort_keys=True)),
                )

        return self.journal.submit(transaction, durable=False)

    def release(self, destination: str, claimed: list[Claimed], retry_at: float) -> Future[Any]:
        """Put claimed deliveries back, not counted as attempts (the destination was down)."""

        def transaction(conn: sqlite3.Connection) -> None:
            for item in claimed:
                conn.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = attempts - 1,"
                    " next_attempt_at = ? WHERE object_id = ? AND destination = ?"
                    " AND state = 'inflight'",
                    (retry_at, item.object_id, destination),
                )

        # Lazy: if lost, the deliveries stay inflight and recovery makes them pending.
        return self.journal.submit(transaction, durable=False)

    def requeue(self, destination: str, object_ids: list[str]) -> int:
        """Put back, due now and not counted as attempts, those of ``object_ids`` still in
        flight to ``destination``: deliveries whose outcome the journal failed to record.
        Only the worker that claimed them may call this (no one else is sending them).
        Waits for the commit; returns how many were still in flight."""
        at = time.time()

        def transaction(conn: sqlite3.Connection) -> int:
            return sum(
                conn.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = attempts - 1,"
                    " next_attempt_at = ? WHERE object_id = ? AND destination = ?"
                    " AND state = 'inflight'",
                    (at, object_id, destination),
                ).rowcount
                for object_id in object_ids
            )

        return int(self.journal.run(transaction))

    def has_more_urgent(self, destination: str, priority: int, now: float | None = None) -> bool:
        """Whether a delivery more urgent than ``priority`` is due (and would be claimed):
        a running upload pauses at its next chunk boundary for it."""
        at = time.time() if now is None else now
        row = (
            self.spool.reader_connection()
            .execute(
                "SELECT 1 FROM deliveries d JOIN objects o ON o.id = d.object_id"
                " WHERE d.destination = ? AND d.state = 'pending' AND d.priority < ?"
                " AND d.next_attempt_at <= ?"
                " AND (d.send = 'object' OR NOT EXISTS (SELECT 1 FROM objects s"
                "   WHERE s.study_tag = o.study_tag AND s.received_at > ?)) LIMIT 1",
                (destination, priority, at, at - self.study_quiet_seconds),
            )
            .fetchone()
        )
        return row is not None

    def next_due(self, destination: str) -> float | None:
        """When the earliest pending delivery becomes due (None: nothing pending)."""
        row = (
            self.spool.reader_connection()
            .execute(
                "SELECT min(next_attempt_at) FROM deliveries"
                " WHERE destination = ? AND state = 'pending'",
                (destination,),
            )
            .fetchone()
        )
        return float(row[0]) if row and row[0] is not None else None

    def set_paused(self, destination: str, paused: bool, *, who: str, why: str) -> None:
        """Pause or resume a destination; survives restarts."""
        self.journal.run(
            lambda conn: conn.execute(
                "INSERT INTO destination_state(name, paused, changed_by, reason, changed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET paused = excluded.paused,"
                " changed_by = excluded.changed_by, reason = excluded.reason,"
                " changed_at = excluded.changed_at",
                (destination, int(paused), who, why, time.time()),
            )
        )

    def is_paused(self, destination: str) -> bool:
        """Whether an operator paused this destination."""
        row = (
            self.spool.reader_connection()
            .execute("SELECT paused FROM destination_state WHERE name = ?", (destination,))
            .fetchone()
        )
        return bool(row and row[0])

    def retry_failed(self, destination: str) -> int:
        """Make permanently failed deliveries pending again (an operator's decision)."""
        count: int = self.journal.run(
            lambda conn: (
                conn.execute(
                    "UPDATE deliveries SET state = 'pending', next_attempt_at = 0"
                    " WHERE destination = ? AND state = 'failed'",
                    (destination,),
                ).rowcount
            )
        )
        return count

    def depth(self, destination: str) -> QueueDepth:
        """Queue depth by priority, and the ages a console needs."""
        conn = self.spool.reader_connection()
        pending: dict[int, int] = {}
        for priority, count in conn.execute(
            "SELECT priority, count(*) FROM deliveries WHERE destination = ? AND state = 'pending'"
            " GROUP BY priority",
            (destination,),
        ):
            pending[int(priority)] = int(count)
        inflight, failed, committing, next_at, last_at = conn.execute(
            "SELECT sum(state = 'inflight'), sum(state = 'failed'), sum(state = 'committing'),"
            " min(CASE WHEN state = 'pending' THEN next_attempt_at END),"
            " max(CASE WHEN state = 'delivered' THEN updated_at END)"
            " FROM deliveries WHERE destination = ?",
            (destination,),
        ).fetchone()
        oldest = conn.execute(
            "SELECT min(o.received_at) FROM deliveries d JOIN objects o ON o.id = d.object_id"
            " WHERE d.destination = ?"
            " AND d.state IN ('pending', 'inflight', 'failed', 'committing')",
            (destination,),
        ).fetchone()[0]
        error = conn.execute(
            "SELECT last_error FROM deliveries WHERE destination = ? AND last_error IS NOT NULL"
            " AND state != 'delivered' ORDER BY updated_at DESC LIMIT 1",
            (destination,),
        ).fetchone()
        return QueueDepth(
            pending=pending,
            inflight=int(inflight or 0),
            failed=int(failed or 0),
            oldest_received_at=oldest,
            next_attempt_at=next_at,
            last_delivered_at=last_at,
            last_error=error[0] if error else None,
            committing=int(committing or 0),
        )
