"""The delivery queue in the journal: priority order, pause that survives restarts,
operator retry, study completeness, and outcomes changing state only from inflight."""

from __future__ import annotations

import io
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from router.config.model import SpoolConfig
from router.core.objects import PlannedDelivery, PriorityName, SendMode, Source
from router.core.retry import Classification
from router.delivery.queue import DeliveryQueue
from router.ingest.attributes import read_attributes
from router.spool.spool import Spool

CT = Path(str(get_testdata_file("CT_small.dcm")))
SOURCE = Source("CT01", "WAYSTATION", "127.0.0.1")


def store(
    spool: Spool,
    priority: PriorityName = "routine",
    *,
    study: str | None = None,
    send: SendMode = "object",
) -> str:
    ds = dcmread(CT)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if study:
        ds.StudyInstanceUID = study
    buffer = io.BytesIO()
    ds.save_as(buffer)
    incoming = spool.begin()
    incoming.write(buffer.getvalue())
    incoming.finish()
    with incoming.reader() as reader:
        attributes = read_attributes(reader, command_sop_class="", command_sop_instance="")  # type: ignore[arg-type]
    plan = [PlannedDelivery("pacs", f"rule-{priority}", priority, send)]
    return spool.store(incoming, attributes, SOURCE, plan).object_id


def open_spool(tmp_path: Path) -> Spool:
    return Spool(SpoolConfig(path=tmp_path / "spool", min_free=0))


def test_stat_goes_before_a_routine_backlog_received_days_earlier(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    backlog = [store(spool, "routine") for _ in range(20)]
    bulk = store(spool, "bulk")
    stat = store(spool, "stat")
    urgent = store(spool, "urgent")
    first = queue.claim("pacs", 3)
    assert [c.object_id for c in first] == [stat, urgent, backlog[0]]
    rest = queue.claim("pacs", 100)
    assert [c.object_id for c in rest] == [*backlog[1:], bulk]
    spool.close()


def test_outcomes_and_retry_times(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    one, two, three = (store(spool) for _ in range(3))
    claimed = {c.object_id: c for c in queue.claim("pacs", 3)}
    now = time.time()
    queue.record("pacs", claimed[one], Classification("delivered", "delivered", 0)).result()
    queue.record(
        "pacs", claimed[two], Classification("transient", "PACS busy", 0xA700), retry_at=now + 60
    ).result()
    queue.record(
        "pacs", claimed[three], Classification("permanent", "PACS refused", 0xC000)
    ).result()
    assert queue.claim("pacs", 10) == []  # the transient one is not due yet
    assert [c.object_id for c in queue.claim("pacs", 10, now=now + 61)] == [two]
    depth = queue.depth("pacs")
    assert depth.failed == 1 and depth.inflight == 1
    assert depth.last_error in ("PACS refused", "PACS busy")
    assert queue.retry_failed("pacs") == 1
    assert [c.object_id for c in queue.claim("pacs", 10)] == [three]
    conn = spool.reader_connection()
    events = [
        r[0]
        for r in conn.execute("SELECT event FROM history WHERE object_id = ? ORDER BY seq", (two,))
    ]
    assert events[-1] == "attempt-failed"
    spool.close()


def test_a_late_outcome_never_overrides_a_newer_state(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    object_id = store(spool)
    [claimed] = queue.claim("pacs", 1)
    queue.record("pacs", claimed, Classification("delivered", "delivered", 0)).result()
    queue.record("pacs", claimed, Classification("permanent", "late", 0xC000)).result()
    state = (
        spool.reader_connection()
        .execute("SELECT state FROM deliveries WHERE object_id = ?", (object_id,))
        .fetchone()[0]
    )
    assert state == "delivered"
    spool.close()


def test_pause_survives_a_restart(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    DeliveryQueue(spool).set_paused("pacs", True, who="tech", why="PACS maintenance")
    spool.close()
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    assert queue.is_paused("pacs") and not queue.is_paused("archive")
    queue.set_paused("pacs", False, who="tech", why="done")
    assert not queue.is_paused("pacs")
    spool.close()


def test_study_mode_waits_for_the_quiet_period_and_late_objects_follow(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool, study_quiet_seconds=60)
    study = generate_uid()
    first = [store(spool, study=study, send="study") for _ in range(3)]
    now = time.time()
    assert queue.claim("pacs", 10, now=now) == []
    assert sorted(c.object_id for c in queue.claim("pacs", 10, now=now + 61)) == sorted(first)
    late = store(spool, study=study, send="study")
    assert queue.claim("pacs", 10, now=time.time() + 1) == []
    assert [c.object_id for c in queue.claim("pacs", 10, now=time.time() + 61)] == [late]
    spool.close()


def test_inflight_deliveries_are_pending_again_after_a_crash(tmp_path: Path) -> None:
    from router.spool.recovery import recover

    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    store(spool)
    store(spool)
    assert len(queue.claim("pacs", 10)) == 2
    spool.close()  # as if the process died with both in flight
    spool = open_spool(tmp_path)
    assert recover(spool).inflight_requeued == 2
    assert len(DeliveryQueue(spool).claim("pacs", 10)) == 2
    spool.close()


def test_retention_deletes_only_fully_delivered_objects_and_destroys_keys(
    tmp_path: Path,
) -> None:
    from router.errors import IntegrityError
    from router.spool.retention import expire
    from router.spool.verify import verify

    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    delivered, pending, failed = (store(spool) for _ in range(3))
    claimed = {c.object_id: c for c in queue.claim("pacs", 3)}
    queue.record("pacs", claimed[delivered], Classification("delivered", "ok", 0)).result()
    queue.record("pacs", claimed[failed], Classification("permanent", "no", 0xC000)).result()
    queue.release("pacs", [claimed[pending]], time.time()).result()
    assert expire(spool, 3600) == 0  # too recent
    later = time.time() + 7200
    assert expire(spool, 3600, now=later) == 1
    held = spool.get(delivered)
    assert held is not None and held.state == "deleted" and held.wrapped_key is None
    try:
        spool.open_object(held)
        raise AssertionError("a deleted object must not open")
    except IntegrityError:
        pass
    remaining = {h.id for h in spool.held_objects()}
    assert remaining == {pending, failed}  # undelivered objects are never deleted
    assert verify(spool).ok
    spool.close()


def test_requeue_puts_back_only_deliveries_still_in_flight(tmp_path: Path) -> None:
    # What a worker does after a journal write failed to record an outcome (worker.py).
    spool = open_spool(tmp_path)
    queue = DeliveryQueue(spool)
    first, second = store(spool), store(spool)
    claimed = queue.claim("pacs", 2)
    assert {c.object_id for c in claimed} == {first, second}
    done = next(c for c in claimed if c.object_id == first)
    queue.record("pacs", done, Classification("delivered", "ok", 0)).result()
    assert queue.requeue("pacs", [first, second]) == 1  # the delivered one is left alone
    assert [c.object_id for c in queue.claim("pacs", 5)] == [second]
    assert queue.claim("pacs", 5) == []
    spool.close()
