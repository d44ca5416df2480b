"""Operator actions: each one journal transaction that changes deliveries, writes the history
of every object it touches and appends its audit entry, so the three never disagree.

Log lines name the user, the action, the destination or opaque study id and the outcome;
never patient data, and never the operator's free-text reason (it may quote some).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable

from router.control.auth import Peer
from router.control.context import ControlContext
from router.control.failures import ApiFailure, bad_request, not_found
from router.control.schema import ActionRequest, ActionResult
from router.control.study_views import study_tag_of
from router.core.objects import PRIORITIES

log = logging.getLogger("waystation.control")

# Objects whose undelivered copies can still change: not the ones being sent right now (their
# outcome is on its way) and not delivered ones.
_OPEN = ("pending", "failed", "committing")
_HISTORY_SQL = "INSERT INTO history(object_id, at, event, detail) VALUES (?, ?, ?, ?)"


def append_audit(
    conn: sqlite3.Connection,
    peer: Peer,
    action: str,
    target: str,
    reason: str,
    outcome: str,
    at: float | None = None,
) -> int:
    """Append one audit entry (inside the caller's transaction); returns its sequence."""
    cursor = conn.execute(
        "INSERT INTO audit(at, user, uid, action, target, reason, outcome)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (time.time() if at is None else at, peer.user, peer.uid, action, target, reason, outcome),
    )
    log.info("operator %s (uid %d): %s %s: %s", peer.user, peer.uid, action, target, outcome)
    return int(cursor.lastrowid or 0)


def audit_only(
    ctx: ControlContext, peer: Peer, action: str, target: str, reason: str, outcome: str
) -> int:
    """Append an audit entry on its own (refusals, echoes, unmasking)."""
    seq: int = ctx.spool.journal.run(
        lambda conn: append_audit(conn, peer, action, target, reason, outcome)
    )
    return seq


class Actions:
    """The operator actions, as the control API's POST endpoints call them."""

    def __init__(self, ctx: ControlContext) -> None:
        self.ctx = ctx

    def _destination(self, name: str) -> None:
        if name not in self.ctx.workers:
            known = ", ".join(sorted(self.ctx.workers)) or "none configured"
            raise not_found(f"there is no destination {name!r}", f"destinations: {known}")

    def _run(
        self,
        peer: Peer,
        action: str,
        target: str,
        reason: str,
        change: Callable[[sqlite3.Connection, float], tuple[int, str]],
    ) -> ActionResult:
        def transaction(conn: sqlite3.Connection) -> tuple[int, str, int]:
            now = time.time()
            affected, message = change(conn, now)
            seq = append_audit(conn, peer, action, target, reason, f"ok: {message}", now)
            return affected, message, seq

        affected, message, seq = self.ctx.spool.journal.run(transaction)
        return ActionResult(ok=True, affected=affected, message=message, audit_seq=seq)

    # -- destinations ----------------------------------------------------------------------

    def pause(self, peer: Peer, name: str, request: ActionRequest) -> ActionResult:
        """Stop sending to a destination (objects stay queued); survives restarts."""
        return self._set_paused(peer, name, request, paused=True)

    def resume(self, peer: Peer, name: str, request: ActionRequest) -> ActionResult:
        """Send to a paused destination again."""
        result = self._set_paused(peer, name, request, paused=False)
        self.ctx.workers[name].retry_now()
        return result

    def _set_paused(
        self, peer: Peer, name: str, request: ActionRequest, *, paused: bool
    ) -> ActionResult:
        self._destination(name)

        def change(conn: sqlite3.Connection, now: float) -> tuple[int, str]:
            conn.execute(
                "INSERT INTO destination_state(name, paused, changed_by, reason, changed_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " paused = excluded.paused, changed_by = excluded.changed_by,"
                " reason = excluded.reason, changed_at = excluded.changed_at",
                (name, int(paused), peer.user, request.reason, now),
            )
            waiting = _count(conn, name, ("pending", "inflight", "failed", "committing"))
            verb = "paused: nothing is sent to it" if paused else "resumed: sending again"
            return waiting, f"{name} {verb}; {waiting} objects queued for it"

        action = "pause" if paused else "resume"
        return self._run(peer, action, name, request.reason, change)

    def retry(self, peer: Peer, name: str, request: ActionRequest) -> ActionResult:
        """Try a destination now: forget its backoff and make every queued copy due."""
        self._destination(name)

        def change(conn: sqlite3.Connection, now: float) -> tuple[int, str]:
            count = conn.execute(
                "UPDATE deliveries SET next_attempt_at = 0"
                " WHERE destination = ? AND state = 'pending'",
                (name,),
            ).rowcount
            return count, f"{count} queued objects for {name} are due now"

        result = self._run(peer, "retry", name, request.reason, change)
        self.ctx.workers[name].retry_now()
        return result

    def retry_failed(self, peer: Peer, name: str, request: ActionRequest) -> ActionResult:
        """Queue again the copies a destination refused for good (an operator's decision)."""
        self._destination(name)

        def change(conn: sqlite3.Connection, now: float) -> tuple[int, str]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT object_id FROM deliveries WHERE destination = ? AND state = 'failed'",
                    (name,),
                )
            ]
            conn.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = 0, updated_at = ?"
                " WHERE destination = ? AND state = 'failed'",
                (now, name),
            )
            detail = _detail(peer, request, destination=name)
            _history(conn, ids, now, "operator-retry", detail)
            return len(ids), f"{len(ids)} refused objects queued again for {name}"

        result = self._run(peer, "retry-failed", name, request.reason, change)
        self.ctx.workers[name].retry_now()
        return result

    # -- studies ---------------------------------------------------------------------------

    def _study(self, study_id: str) -> bytes:
        with self.ctx.readers.snapshot() as conn:
            tag = study_tag_of(conn, study_id)
        if tag is None:
            raise not_found(f"there is no study {study_id!r} on this unit")
        return tag

    def set_priority(self, peer: Peer, study_id: str, request: ActionRequest) -> ActionResult:
        """Change the priority of a study's copies not yet delivered."""
        if request.priority is None:
            raise bad_request("give a priority", "one of: stat, urgent, routine, bulk")
        tag = self._study(study_id)
        rank = PRIORITIES[request.priority]

        def change(conn: sqlite3.Connection, now: float) -> tuple[int, str]:
            ids = _study_deliveries(conn, tag, ("pending", "inflight", "failed"))
            for object_id, destination in ids:
                conn.execute(
                    "UPDATE deliveries SET priority = ?, updated_at = ?"
                    " WHERE object_id = ? AND destination = ?",
                    (rank, now, object_id, destination),
                )
            detail = _detail(peer, request, priority=request.priority)
            _history(conn, sorted({i for i, _ in ids}), now, "priority-changed", detail)
            return len(ids), f"{len(ids)} copies not yet delivered are now {request.priority}"

        result = self._run(peer, "priority", study_id, request.reason, change)
        self._wake_all()
        return result

    def resend(self, peer: Peer, study_id: str, request: ActionRequest) -> ActionResult:
        """Send every held object of a study (again) to a destination."""
        if not request.destination:
            raise bad_request("give the destination to send the study to")
        self._destination(request.destination)
        tag = self._study(study_id)
        destination = request.destination

        def change(conn: sqlite3.Connection, now: float) -> tuple[int, str]:
            held = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM objects WHERE study_tag = ? AND state = 'held'", (tag,)
                )
            ]
            rank = conn.execute(
                "SELECT min(priority) FROM study_deliveries WHERE study_tag = ? AND n > 0",
                (tag,),
            ).fetchone()[0]
            sent = 0
            for object_id in held:
                # An object being sent right now keeps going; the rest are queued afresh.
                sent += conn.execute(
                    "INSERT INTO deliveries(object_id, destination, rule, priority, send, state,"
                    " updated_at) VALUES (?, ?, 'resend', ?, 'object', 'pending', ?)"
                    " ON CONFLICT(object_id, destination) DO UPDATE SET state = 'pending',"
                    " attempts = 0, next_attempt_at = 0, last_status = NULL, last_error = NULL,"
                    " send = 'object', updated_at = excluded.updated_at"
                    " WHERE deliveries.state != 'inflight'",
                    (object_id, destination, 2 if rank is None else rank, now),
                ).rowcount
            _history(conn, held, now, "resend", _detail(peer, request, destination=destination))
            gone = conn.execute(
                "SELECT count(*) FROM objects WHERE study_tag = ? AND state = 'deleted'", (tag,)
            ).fetchone()[0]
            message = f"{sent} objects queued for {destination}"
            if gone:
                message += f"; {gone} objects were already deleted after delivery"
            return sent, message

        result = self._run(peer, "resend", study_id, request.reason, change)
        self.ctx.workers[destination].retry_now()
        return result

    def discard(self, peer: Peer, study_id: str, request: ActionRequest) -> ActionResult:
        """Give up a study's copies not yet delivered; its objects then fall under retention."""
        if not request.reason.strip():
            raise bad_request(
                "discarding needs a reason", "say why these objects will never be sent"
            )
        tag = self._study(study_id)

        def change(conn: sqlite3.Connection, now: float) -> tuple[int, str]:
            ids = _study_deliveries(conn, tag, _OPEN)
            for object_id, destination in ids:
                conn.execute(
                    "UPDATE deliveries SET state = 'discarded', updated_at = ?"
                    " WHERE object_id = ? AND destination = ?"
                    " AND state IN ('pending', 'failed', 'committing')",
                    (now, object_id, destination),
                )
            _history(conn, sorted({i for i, _ in ids}), now, "discarded", _detail(peer, request))
            sending = len(_study_deliveries(conn, tag, ("inflight",)))
            message = f"{len(ids)} copies not yet delivered were discarded"
            if sending:
                message += f"; {sending} being sent right now were left to finish"
            return len(ids), message

        return self._run(peer, "discard", study_id, request.reason, change)

    def _wake_all(self) -> None:
        for worker in self.ctx.workers.values():
            worker.wake()


def _count(conn: sqlite3.Connection, destination: str, states: tuple[str, ...]) -> int:
    marks = ",".join("?" * len(states))
    row = conn.execute(
        f"SELECT coalesce(sum(n), 0) FROM study_deliveries WHERE destination = ?"
        f" AND state IN ({marks})",
        (destination, *states),
    ).fetchone()
    return int(row[0])


def _study_deliveries(
    conn: sqlite3.Connection, tag: bytes, states: tuple[str, ...]
) -> list[tuple[str, str]]:
    marks = ",".join("?" * len(states))
    return [
        (str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT d.object_id, d.destination FROM deliveries d JOIN objects o"
            f" ON o.id = d.object_id WHERE o.study_tag = ? AND d.state IN ({marks})",
            (tag, *states),
        )
    ]


def _detail(peer: Peer, request: ActionRequest, **extra: object) -> dict[str, object]:
    return {"by": peer.user, "reason": request.reason, **extra}


def _history(
    conn: sqlite3.Connection,
    object_ids: list[str],
    at: float,
    event: str,
    detail: dict[str, object],
) -> None:
    text = json.dumps(detail, sort_keys=True)
    conn.executemany(_HISTORY_SQL, [(object_id, at, event, text) for object_id in object_ids])


def refuse(
    ctx: ControlContext, peer: Peer, action: str, target: str, reason: str, failure: ApiFailure
) -> None:
    """Audit a refused action (then the caller re-raises ``failure``)."""
    audit_only(ctx, peer, action, target, reason, f"refused: {failure.code}: {failure.message}")
