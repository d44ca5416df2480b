"""Storage Commitment: the pure decisions (request, report, matching, reasons, batching,
expiry) and the journal ledger (committing state, transactions, results applied once,
timeouts, retention, recovery, schema upgrade)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from router.config.model import DimseDestination
from router.core.commitment import (
    BadReport,
    Reference,
    Report,
    Resolution,
    batch_due,
    build_request,
    failure_words,
    on_expiry,
    read_report,
    resolve,
)
from router.core.retry import Classification
from router.delivery.commitment import CommitmentManager
from router.delivery.commitment_ledger import CommitmentLedger
from router.delivery.queue import DeliveryQueue
from router.spool.recovery import recover
from router.spool.retention import expire
from router.spool.schema import SCHEMA_VERSION
from router.spool.spool import Spool
from tests.unit.test_queue import open_spool, store

CT = "1.2.840.10008.5.1.4.1.1.2"


# -- pure ------------------------------------------------------------------------------------


def test_request_names_every_reference_under_the_transaction_uid() -> None:
    refs = [Reference(CT, "1.2.3.1"), Reference(CT, "1.2.3.2")]
    ds = build_request("9.8.7", refs)
    assert ds.TransactionUID == "9.8.7"
    assert [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence
    ] == [
        (CT, "1.2.3.1"),
        (CT, "1.2.3.2"),
    ]


def _report_dataset(committed: list[str], failed: list[tuple[str, int]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = "9.8.7"
    ok = []
    for uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, uid
        ok.append(item)
    bad = []
    for uid, reason in failed:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, uid
        item.FailureReason = reason
        bad.append(item)
    if ok:
        ds.ReferencedSOPSequence = ok
    if bad:
        ds.FailedSOPSequence = bad
    return ds


def test_report_is_read_with_successes_and_failures() -> None:
    report = read_report(2, _report_dataset(["1.1"], [("1.2", 0x0112)]))
    assert report == Report("9.8.7", 2, (Reference(CT, "1.1"),), ((Reference(CT, "1.2"), 0x0112),))
    assert read_report(1, _report_dataset(["1.1"], [])).failed == ()


@pytest.mark.parametrize(
    ("event_type", "dataset", "status"),
    [(3, _report_dataset(["1.1"], []), 0x0113), (1, Dataset(), 0x0115), (1, None, 0x0115)],
)
def test_unusable_reports_get_a_status(
    event_type: int, dataset: Dataset | None, status: int
) -> None:
    with pytest.raises(BadReport) as caught:
        read_report(event_type, dataset)
    assert caught.value.status == status


def test_references_resolve_through_keyed_tags_only() -> None:
    tag = {"1.1": b"t1", "1.2": b"t2", "1.3": b"t3"}
    report = Report(
        "9", 2, (Reference(CT, "1.1"), Reference(CT, "9.9")), ((Reference(CT, "1.2"), 0x0110),)
    )
    items = {b"t1": "obj1", b"t2": "obj2", b"t3": "obj3"}
    result = resolve(report, lambda uid: tag.get(uid, b"?"), items)
    assert result == Resolution(["obj1"], [("obj2", 0x0110)], not_ours=1)


def test_failure_reasons_in_plain_words() -> None:
    words, permanent = failure_words("pacs", 0x0110)
    assert words == "pacs could not keep it (processing failure) (0x0110). Sending it again."
    assert not permanent
    words, permanent = failure_words("pacs", 0x0122)
    assert permanent and "does not commit this kind of image. Call IT" in words
    assert failure_words("pacs", 0x9999)[0].startswith("pacs did not commit it (0x9999)")


@pytest.mark.parametrize(
    ("count", "quiet_for", "waited", "due"),
    [
        (0, 99, 99, False),  # nothing to ask
        (5, 0.5, 0.5, False),  # still arriving
        (5, 2.0, 2.0, True),  # quiet: the series went out
        (500, 0.0, 0.0, True),  # full
        (5, 0.1, 30.0, True),  # waited long enough under a steady stream
    ],
)
def test_batching(count: int, quiet_for: float, waited: float, due: bool) -> None:
    assert (
        batch_due(
            count=count, quiet_for=quiet_for, waited=waited, max_batch=500, linger=2, max_wait=30
        )
        is due
    )


def test_expiry_asks_again_once_then_resends() -> None:
    assert on_expiry(1) == "ask-again"
    assert on_expiry(2) == "resend"


# -- the ledger in a real journal ------------------------------------------------------------


def committing(spool: Spool, count: int) -> list[str]:
    """Store ``count`` objects and record their C-STORE success to a committing destination."""
    queue = DeliveryQueue(spool)
    ids = [store(spool) for _ in range(count)]
    for claimed in queue.claim("pacs", count):
        queue.record(
            "pacs", claimed, Classification("delivered", "delivered", 0), awaiting_commitment=True
        ).result()
    return ids


def states(spool: Spool) -> dict[str, str]:
    rows = spool.reader_connection().execute("SELECT object_id, state FROM deliveries")
    return {str(o): str(s) for o, s in rows}


def events(spool: Spool, object_id: str) -> list[str]:
    rows = spool.reader_connection().execute(
        "SELECT event FROM history WHERE object_id = ? ORDER BY seq", (object_id,)
    )
    return [str(r[0]) for r in rows]


def test_a_stored_object_is_committing_not_delivered_and_never_expires(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ids = committing(spool, 2)
    assert set(states(spool).values()) == {"committing"}
    assert events(spool, ids[0])[-1] == "stored"
    assert DeliveryQueue(spool).depth("pacs").committing == 2
    assert expire(spool, 0, now=time.time() + 10 * 86400) == 0  # retention keeps it
    assert recover(spool).inflight_requeued == 0  # a restart keeps it committing
    assert set(states(spool).values()) == {"committing"}
    spool.close()


def test_results_apply_once_committed_delivered_failed_pending(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ledger = CommitmentLedger(spool)
    one, two, three = committing(spool, 3)
    assert ledger.unrequested("pacs")[0] == 3
    assert ledger.open_transaction("pacs", "1.9.1", 500) == 3
    assert ledger.unrequested("pacs")[0] == 0
    assert ledger.open_transaction("pacs", "1.9.2", 500) == 0  # nothing left to ask
    assert ledger.transaction("1.9.2") is None
    items = {tag: oid for oid, _c, tag in ledger.items("1.9.1")}
    assert sorted(items.values()) == sorted([one, two, three])
    resolution = Resolution([one], [(two, 0x0110)])
    reasons = {0x0110: failure_words("pacs", 0x0110)}
    applied = ledger.apply("1.9.1", resolution, reasons)
    assert (applied.committed, applied.resend, applied.failed) == (1, 1, 0)
    assert states(spool) == {one: "delivered", two: "pending", three: "committing"}
    assert events(spool, one)[-1] == "committed"
    assert events(spool, two)[-1] == "commitment-failed"
    # The same report again changes nothing.
    assert ledger.apply("1.9.1", resolution, reasons).ignored
    assert states(spool) == {one: "delivered", two: "pending", three: "committing"}
    # Not named in the report: asked about again in a new request.
    assert ledger.unrequested("pacs")[0] == 1
    # The object is deleted only once its retention has passed after the commitment.
    assert expire(spool, 0, now=time.time() + 1) == 1
    spool.close()


def test_silence_asks_again_then_sends_again(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ledger = CommitmentLedger(spool)
    ids = committing(spool, 2)
    ledger.open_transaction("pacs", "1.9.1", 500)
    ledger.requested("1.9.1", deadline=time.time() - 1)
    first = ledger.transaction("1.9.1")
    assert first is not None and first.state == "waiting" and first.attempts == 1
    assert ledger.expire(first, "1.9.2", "no result") == "ask-again"
    second = ledger.transaction("1.9.2")
    assert second is not None and second.round == 2 and second.state == "requesting"
    assert sorted(o for o, _c, _t in ledger.items("1.9.2")) == sorted(ids)
    assert ledger.expire(first, "1.9.3", "no result") == ""  # only once
    ledger.requested("1.9.2", deadline=time.time() - 1)
    second = ledger.transaction("1.9.2")
    assert second is not None
    assert ledger.expire(second, "1.9.3", "no result") == "resend"
    assert set(states(spool).values()) == {"pending"}
    assert events(spool, ids[0])[-1] == "commitment-timeout"
    # A late success for an expired request still counts - only where still committing.
    late = ledger.apply("1.9.2", Resolution([ids[0]]), {})
    assert late.committed == 0
    spool.close()


def test_a_report_arriving_before_the_request_is_marked_waiting_wins(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ledger = CommitmentLedger(spool)
    (one,) = committing(spool, 1)
    ledger.open_transaction("pacs", "1.9.1", 500)
    ledger.apply("1.9.1", Resolution([one]), {})  # same association, before N-ACTION-RSP
    ledger.requested("1.9.1", deadline=time.time() + 60)
    txn = ledger.transaction("1.9.1")
    assert txn is not None and txn.state == "done"
    assert states(spool) == {one: "delivered"}
    spool.close()


def test_a_version_2_journal_is_upgraded(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    store(spool)
    spool.close()
    journal = tmp_path / "spool" / "journal.sqlite"
    with sqlite3.connect(journal) as conn:
        conn.execute("DROP TABLE commitment_items")
        conn.execute("DROP TABLE commitments")
        conn.execute("UPDATE journal_meta SET value = '2' WHERE key = 'schema'")
    spool = open_spool(tmp_path)
    row = (
        spool.reader_connection()
        .execute("SELECT value FROM journal_meta WHERE key = 'schema'")
        .fetchone()
    )
    assert int(row[0]) == SCHEMA_VERSION == 4
    assert CommitmentLedger(spool).unrequested("pacs") == (0, None, None)
    assert len(states(spool)) == 1
    spool.close()


def test_only_commitment_destinations_may_report_by_ae_title_and_address(tmp_path: Path) -> None:
    def dest(name: str, ae: str, host: str, commit: bool) -> DimseDestination:
        return DimseDestination(
            name=name, type="dimse", ae_title=ae, host=host, port=104, storage_commitment=commit
        )

    spool = open_spool(tmp_path)
    manager = CommitmentManager(
        [
            dest("pacs", "PACS", "127.0.0.1", True),
            dest("far", "FAR", "10.255.0.1", True),
            dest("plain", "PLAIN", "127.0.0.1", False),
        ],
        unit_ae="WAYSTATION",
        spool=spool,
    )
    assert manager.report_callers == ["FAR", "PACS"]
    found = manager._sender("PACS", "127.0.0.1")
    assert found is not None and found.name == "pacs"
    assert manager._sender("PACS", "127.0.0.2") is None  # right AE title, wrong address
    assert manager._sender("FAR", "127.0.0.1") is None
    assert manager._sender("PLAIN", "127.0.0.1") is None  # no storage_commitment
    spool.close()
