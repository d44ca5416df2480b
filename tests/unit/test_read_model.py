"""The control API's read model (studies, study_deliveries, destination_stats, spool_totals)
is kept by journal triggers: it must equal a recount from objects and deliveries after every
kind of change, a version-2 journal must migrate to it, and the audit log must refuse to be
changed."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from router.core.retry import Classification
from router.delivery.queue import DeliveryQueue
from router.spool.journal import connect
from router.spool.retention import expire
from router.spool.schema import SCHEMA_VERSION
from router.spool.spool import Spool
from tests.unit.test_queue import open_spool, store

STUDY = "1.2.826.0.1.3680043.2.1125.77"


def read_model(conn: sqlite3.Connection) -> tuple[object, ...]:
    studies = conn.execute(
        "SELECT study_tag, held, pending, inflight, delivered, failed, discarded, state,"
        " first_received_at, last_received_at, modalities FROM studies ORDER BY study_tag"
    ).fetchall()
    counts = conn.execute(
        "SELECT study_tag, destination, state, priority, n FROM study_deliveries WHERE n != 0"
        " ORDER BY 1, 2, 3, 4"
    ).fetchall()
    totals = conn.execute("SELECT held_objects, held_bytes FROM spool_totals").fetchall()
    return studies, counts, totals


def recount(conn: sqlite3.Connection) -> tuple[object, ...]:
    """What the read model must say, counted from the base tables."""

    def n(tag: bytes, state: str) -> int:
        return int(
            conn.execute(
                "SELECT count(*) FROM deliveries d JOIN objects o ON o.id = d.object_id"
                " WHERE o.study_tag = ? AND d.state = ?",
                (tag, state),
            ).fetchone()[0]
        )

    studies = []
    for tag, held, first, last in conn.execute(
        "SELECT study_tag, sum(state = 'held'), min(received_at), max(received_at) FROM objects"
        " GROUP BY study_tag ORDER BY study_tag"
    ).fetchall():
        c = {s: n(tag, s) for s in ("pending", "inflight", "delivered", "failed", "discarded")}
        state = (
            "failed"
            if c["failed"]
            else "sending"
            if c["inflight"]
            else "waiting"
            if c["pending"]
            else "discarded"
            if c["discarded"]
            else "delivered"
            if c["delivered"]
            else "unrouted"
        )
        studies.append(
            (
                tag,
                held,
                c["pending"],
                c["inflight"],
                c["delivered"],
                c["failed"],
                c["discarded"],
                state,
                first,
                last,
                "CT",
            )
        )
    counts = conn.execute(
        "SELECT o.study_tag, d.destination, d.state, d.priority, count(*) FROM deliveries d"
        " JOIN objects o ON o.id = d.object_id GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    ).fetchall()
    totals = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE state = 'held'"
    ).fetchall()
    return studies, counts, totals


def exercise(spool: Spool) -> None:
    """Every kind of change the router makes: ingest, claims, outcomes, retries, retention,
    operator updates of priority and state."""
    queue = DeliveryQueue(spool)
    for _ in range(3):
        store(spool, "routine", study=STUDY)
    store(spool, "stat")
    store(spool, "bulk", study=STUDY)
    claimed = queue.claim("pacs", 3)
    queue.record("pacs", claimed[0], Classification("delivered", "ok", 0)).result()
    queue.record("pacs", claimed[1], Classification("permanent", "refused", 0xA900)).result()
    queue.record(
        "pacs", claimed[2], Classification("transient", "busy", 0xA700), retry_at=time.time() + 60
    ).result()
    queue.retry_failed("pacs")
    spool.journal.run(
        lambda c: c.execute(
            "UPDATE deliveries SET priority = 0 WHERE rowid = (SELECT max(rowid) FROM deliveries)"
        )
    )
    spool.journal.run(
        lambda c: c.execute(
            "UPDATE deliveries SET state = 'discarded' WHERE rowid ="
            " (SELECT min(rowid) FROM deliveries WHERE state = 'pending')"
        )
    )
    delivered = queue.claim("pacs", 10)
    for item in delivered[:2]:
        queue.record("pacs", item, Classification("delivered", "ok", 0)).result()
    # An UPSERT (the operator's resend): new copies and reset ones, in one statement.
    for destination in ("pacs", "archive"):
        spool.journal.run(
            lambda c, d=destination: c.execute(  # type: ignore[misc]
                "INSERT INTO deliveries(object_id, destination, rule, priority, send, state,"
                " updated_at) SELECT id, ?, 'resend', 2, 'object', 'pending', 0 FROM objects"
                " WHERE state = 'held' ORDER BY rowid DESC LIMIT 2"
                " ON CONFLICT(object_id, destination) DO UPDATE SET state = 'pending'"
                " WHERE deliveries.state != 'inflight'",
                (d,),
            )
        )
    expire(spool, 0, now=time.time() + 1)


def test_triggers_keep_the_read_model_equal_to_a_recount(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    exercise(spool)
    conn = spool.reader_connection()
    assert read_model(conn) == recount(conn)
    # The exercise really covered several states (otherwise the test proves little).
    states = {row[2] for row in read_model(conn)[1]}  # type: ignore[index]
    assert {"delivered", "pending", "discarded"} <= states
    spool.close()


def test_destination_stats_keep_the_last_success_and_last_error(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    store(spool)
    store(spool)
    first, second = queue.claim("pacs", 2)
    queue.record("pacs", first, Classification("delivered", "ok", 0), now=100.0).result()
    queue.record(
        "pacs", second, Classification("permanent", "The PACS refused it.", 0xA900), now=200.0
    ).result()
    row = (
        spool.reader_connection()
        .execute("SELECT last_delivered_at, last_error, last_error_at FROM destination_stats")
        .fetchone()
    )
    assert row == (100.0, "The PACS refused it.", 200.0)
    spool.close()


def test_retention_shreds_the_study_summary_with_the_last_object(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    store(spool, study=STUDY)
    (claimed,) = queue.claim("pacs", 1)
    queue.record("pacs", claimed, Classification("delivered", "ok", 0)).result()
    conn = spool.reader_connection()
    assert conn.execute("SELECT length(meta) FROM studies").fetchone()[0] > 0
    assert expire(spool, 0, now=time.time() + 1) == 1
    assert conn.execute("SELECT length(meta), held FROM studies").fetchone() == (0, 0)
    spool.close()


def test_discarded_objects_fall_under_retention(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    store(spool)
    spool.journal.run(lambda c: c.execute("UPDATE deliveries SET state = 'discarded'"))
    assert expire(spool, 0, now=time.time() + 1) == 1
    spool.close()


def test_a_version_2_journal_is_migrated_with_its_read_model_filled(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    exercise(spool)
    conn = spool.reader_connection()
    expected = recount(conn)
    spool.close()
    # Make it a version-2 journal: no read model, no audit, schema 2.
    journal = tmp_path / "spool" / "journal.sqlite"
    raw = connect(journal)
    triggers = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    for name in triggers:
        raw.execute(f"DROP TRIGGER {name}")
    for table in ("studies", "study_deliveries", "destination_stats", "spool_totals", "audit"):
        raw.execute(f"DROP TABLE {table}")
    raw.execute("UPDATE journal_meta SET value = '2' WHERE key = 'schema'")
    raw.close()

    spool = open_spool(tmp_path)
    conn = spool.reader_connection()
    version = conn.execute("SELECT value FROM journal_meta WHERE key = 'schema'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 4
    assert read_model(conn) == expected
    # ...and the triggers work on the migrated journal.
    store(spool, study=STUDY)
    assert read_model(conn) == recount(conn)
    spool.close()


def test_the_audit_log_refuses_updates_and_deletes(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.journal.run(
        lambda c: c.execute(
            "INSERT INTO audit(at, user, uid, action, target)"
            " VALUES (1, 'root', 0, 'pause', 'pacs')"
        )
    )
    for statement in ("UPDATE audit SET outcome = 'forged'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            spool.journal.run(lambda c, s=statement: c.execute(s))  # type: ignore[misc]
    assert spool.reader_connection().execute(
        "SELECT count(*), max(outcome) FROM audit"
    ).fetchone() == (1, "")
    spool.close()
