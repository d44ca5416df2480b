"""Storage Commitment transactions in the journal: what was asked of whom, and what came back.

A transaction moves requesting (recorded, N-ACTION not yet accepted) -> waiting (the
destination accepted the request) -> done (its result applied) | expired (no result in time).
Objects are named by id; their UIDs are read from the sealed metadata only to build the
request, and a report's UIDs are matched through the keyed lookup tags (objects.sop_tag).

Every change is one journal transaction that checks the state it expects first, so a report
that comes twice, late, or for a transaction this unit no longer waits for changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from router.core.commitment import Resolution
from router.spool.spool import Spool

_OPEN = ("requesting", "waiting")


@dataclass(frozen=True)
class Transaction:
    """One Storage Commitment request as the journal holds it."""

    uid: str
    destination: str
    round: int
    state: str
    attempts: int
    next_attempt_at: float
    deadline: float | None


@dataclass(frozen=True)
class Applied:
    """What applying a report changed (all zero: nothing, e.g. a repeated report)."""

    committed: int = 0
    resend: int = 0
    failed: int = 0
    ignored: bool = False


_TXN_COLUMNS = "transaction_uid, destination, round, state, attempts, next_attempt_at, deadline"


def _history(
    conn: sqlite3.Connection, object_id: str, at: float, event: str, **detail: Any
) -> None:
    conn.execute(
        "INSERT INTO history(object_id, at, event, detail) VALUES (?, ?, ?, ?)",
        (object_id, at, event, json.dumps(detail, sort_keys=True)),
    )


class CommitmentLedger:
    """Journal operations of Storage Commitment (one instance per router)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.journal = spool.journal

    # -- reading -----------------------------------------------------------------------------

    def unrequested(self, destination: str) -> tuple[int, float | None, float | None]:
        """Committing deliveries not in an open request: count, oldest and newest store time."""
        row = (
            self.spool.reader_connection()
            .execute(
                "SELECT count(*), min(d.updated_at), max(d.updated_at) FROM deliveries d"
                " WHERE d.destination = ? AND d.state = 'committing' AND NOT EXISTS ("
                "   SELECT 1 FROM commitment_items i JOIN commitments c"
                "   ON c.transaction_uid = i.transaction_uid"
                "   WHERE i.object_id = d.object_id AND c.destination = d.destination"
                "   AND c.state IN ('requesting', 'waiting'))",
                (destination,),
            )
            .fetchone()
        )
        return int(row[0]), row[1], row[2]

    def transaction(self, uid: str, conn: sqlite3.Connection | None = None) -> Transaction | None:
        """One transaction, or None when this unit never made it. ``conn``: read there
        instead of on this thread's reader connection."""
        row = (
            (conn or self.spool.reader_connection())
            .execute(f"SELECT {_TXN_COLUMNS} FROM commitments WHERE transaction_uid = ?", (uid,))
            .fetchone()
        )
        return Transaction(*row) if row else None

    def snapshot(self, uid: str) -> tuple[Transaction | None, list[tuple[str, str, bytes]]]:
        """A transaction and its items, read by the journal's own connection.

        For pynetdicom's short-lived association threads (reports): a reader connection of
        their own would stay open after the thread ends."""
        result: tuple[Transaction | None, list[tuple[str, str, bytes]]] = self.journal.run(
            lambda conn: (self.transaction(uid, conn), self.items(uid, conn))
        )
        return result

    def open_transactions(self, destination: str) -> list[Transaction]:
        """Requests still requesting or waiting, oldest first."""
        rows = self.spool.reader_connection().execute(
            f"SELECT {_TXN_COLUMNS} FROM commitments WHERE destination = ?"
            " AND state IN ('requesting', 'waiting') ORDER BY created_at",
            (destination,),
        )
        return [Transaction(*row) for row in rows]

    def items(
        self, uid: str, conn: sqlite3.Connection | None = None
    ) -> list[tuple[str, str, bytes]]:
        """The transaction's objects still committing: (object id, SOP class, keyed SOP tag)."""
        rows = (conn or self.spool.reader_connection()).execute(
            "SELECT o.id, o.sop_class_uid, o.sop_tag FROM commitment_items i"
            " JOIN commitments c ON c.transaction_uid = i.transaction_uid"
            " JOIN objects o ON o.id = i.object_id"
            " JOIN deliveries d ON d.object_id = i.object_id AND d.destination = c.destination"
            " WHERE i.transaction_uid = ? AND d.state = 'committing' ORDER BY o.rowid",
            (uid,),
        )
        return [(str(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    # -- changing ----------------------------------------------------------------------------

    def open_transaction(
        self, destination: str, uid: str, limit: int, *, round_: int = 1, now: float | None = None
    ) -> int:
        """Record a new request for up to ``limit`` unrequested committing objects; returns
        how many it names (0: nothing to ask, nothing recorded).

        Why before the N-ACTION is sent: a report can only be recognised for a transaction the
        journal already knows, and one may come back on the same association at once."""
        at = time.time() if now is None else now

        def transaction(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT d.object_id FROM deliveries d JOIN objects o ON o.id = d.object_id"
                " WHERE d.destination = ? AND d.state = 'committing' AND NOT EXISTS ("
                "   SELECT 1 FROM commitment_items i JOIN commitments c"
                "   ON c.transaction_uid = i.transaction_uid"
                "   WHERE i.object_id = d.object_id AND c.destination = d.destination"
                "   AND c.state IN ('requesting', 'waiting'))"
                " ORDER BY d.priority, d.updated_at LIMIT ?",
                (destination, limit),
            ).fetchall()
            if not rows:
                return 0
            self._insert(conn, uid, destination, round_, [r[0] for r in rows], at)
            return len(rows)

        count: int = self.journal.run(transaction)
        return count

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        uid: str,
        destination: str,
        round_: int,
        object_ids: list[str],
        at: float,
    ) -> None:
        conn.execute(
            "INSERT INTO commitments(transaction_uid, destination, round, state, created_at,"
            " updated_at) VALUES (?, ?, ?, 'requesting', ?, ?)",
            (uid, destination, round_, at, at),
        )
        for object_id in object_ids:
            conn.execute(
                "INSERT INTO commitment_items(transaction_uid, object_id) VALUES (?, ?)",
                (uid, object_id),
            )
            _history(
                conn,
                object_id,
                at,
                "commitment-requested",
                destination=destination,
                transaction=uid,
                round=round_,
            )

    def requested(self, uid: str, deadline: float, now: float | None = None) -> None:
        """The destination accepted the N-ACTION: wait for its result until ``deadline``.
        (A result that came first, on the same association, already finished it.)"""
        at = time.time() if now is None else now
        self.journal.run(
            lambda conn: conn.execute(
                "UPDATE commitments SET state = 'waiting', attempts = attempts + 1,"
                " deadline = ?, updated_at = ? WHERE transaction_uid = ? AND state = 'requesting'",
                (deadline, at, uid),
            )
        )

    def request_failed(self, uid: str, retry_at: float, reason: str) -> None:
        """The N-ACTION did not get through: try again at ``retry_at``."""
        self.journal.run(
            lambda conn: conn.execute(
                "UPDATE commitments SET attempts = attempts + 1, next_attempt_at = ?,"
                " outcome = ?, updated_at = ? WHERE transaction_uid = ? AND state = 'requesting'",
                (retry_at, reason, time.time(), uid),
            )
        )

    def close(self, uid: str, outcome: str) -> None:
        """Finish an open transaction that has nothing left to ask about."""
        self.journal.run(
            lambda conn: conn.execute(
                "UPDATE commitments SET state = 'done', outcome = ?, updated_at = ?"
                " WHERE transaction_uid = ? AND state IN ('requesting', 'waiting')",
                (outcome, time.time(), uid),
            )
        )

    def expire(self, txn: Transaction, new_uid: str, reason: str, now: float | None = None) -> str:
        """No result in time. Round 1: ask again (a new request, ``new_uid``, for the objects
        still committing). Later rounds: the objects go back to pending for a fresh C-STORE.
        Returns "ask-again", "resend" or "" (the transaction was no longer waiting)."""
        at = time.time() if now is None else now

        def transaction(conn: sqlite3.Connection) -> str:
            changed = conn.execute(
                "UPDATE commitments SET state = 'expired', outcome = ?, updated_at = ?"
                " WHERE transaction_uid = ? AND state = 'waiting'",
                (reason, at, txn.uid),
            ).rowcount
            if not changed:
                return ""
            ids = [
                str(r[0])
                for r in conn.execute(
                    "SELECT i.object_id FROM commitment_items i JOIN deliveries d"
                    " ON d.object_id = i.object_id AND d.destination = ?"
                    " WHERE i.transaction_uid = ? AND d.state = 'committing'",
                    (txn.destination, txn.uid),
                )
            ]
            if txn.round <= 1:
                if ids:
                    self._insert(conn, new_uid, txn.destination, txn.round + 1, ids, at)
                return "ask-again"
            for object_id in ids:
                conn.execute(
                    "UPDATE deliveries SET state = 'pending', next_attempt_at = 0,"
                    " last_error = ?, updated_at = ? WHERE object_id = ? AND destination = ?"
                    " AND state = 'committing'",
                    (reason, at, object_id, txn.destination),
                )
                _history(
                    conn,
                    object_id,
                    at,
                    "commitment-timeout",
                    destination=txn.destination,
                    transaction=txn.uid,
                    reason=reason,
                )
            return "resend"

        outcome: str = self.journal.run(transaction)
        return outcome

    def apply(
        self,
        uid: str,
        resolution: Resolution,
        reasons: dict[int, tuple[str, bool]],
        now: float | None = None,
    ) -> Applied:
        """Apply a matched report in one commit: committed objects become delivered, failed
        ones pending again (or failed for good where sending again cannot help).

        Only deliveries still committing change. A report for a finished transaction changes
        nothing; for an expired one only its successes count (the destination has them)."""
        at = time.time() if now is None else now

        def transaction(conn: sqlite3.Connection) -> Applied:
            row = conn.execute(
                "SELECT destination, state FROM commitments WHERE transaction_uid = ?", (uid,)
            ).fetchone()
            if row is None or row[1] == "done":
                return Applied(ignored=True)
            destination, state = str(row[0]), str(row[1])
            committed = resend = failed = 0
            for object_id in resolution.committed:
                if conn.execute(
                    "UPDATE deliveries SET state = 'delivered', last_error = NULL, updated_at = ?"
                    " WHERE object_id = ? AND destination = ? AND state = 'committing'",
                    (at, object_id, destination),
                ).rowcount:
                    committed += 1
                    _history(
                        conn, object_id, at, "committed", destination=destination, transaction=uid
                    )
            if state in _OPEN:
                for object_id, reason in resolution.failed:
                    words, permanent = reasons[reason]
                    changed = conn.execute(
                        "UPDATE deliveries SET state = ?, next_attempt_at = 0, last_status = ?,"
                        " last_error = ?, updated_at = ? WHERE object_id = ? AND destination = ?"
                        " AND state = 'committing'",
                        (
                            "failed" if permanent else "pending",
                            reason,
                            words,
                            at,
                            object_id,
                            destination,
                        ),
                    ).rowcount
                    if changed:
                        failed += permanent
                        resend += not permanent
                        _history(
                            conn,
                            object_id,
                            at,
                            "commitment-failed",
                            destination=destination,
                            transaction=uid,
                            status=reason,
                            reason=words,
                        )
                conn.execute(
                    "UPDATE commitments SET state = 'done', outcome = ?, updated_at = ?"
                    " WHERE transaction_uid = ?",
                    (f"{committed} committed, {resend + failed} not", at, uid),
                )
            return Applied(committed, resend, failed)

        applied: Applied = self.journal.run(transaction)
        return applied
