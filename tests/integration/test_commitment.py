"""Storage Commitment against real peers: a scripted commitment SCP that reports on the same
association, on a new one, with failures, or never; and Debian's Orthanc, which reports on an
association of its own to the AE in its DicomModalities.

An object to a destination with ``storage_commitment = true`` ends "delivered" only after the
destination's report; until then it is "committing" and visible as such."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import _config

from tests.support import dicomgen
from tests.support.commitment_scp import CommitmentSCP, send_report
from tests.support.peers import Orthanc
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    destination_toml,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)
from tests.support.sender import send


def history(config: Path, event: str | None = None) -> list[tuple[str, str, dict[str, object]]]:
    """(object id, event, detail) rows of the router's history, in order."""
    journal = config.parent / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT object_id, event, detail FROM history ORDER BY seq")
        found = [(str(o), str(e), json.loads(d)) for o, e, d in rows]
    return [row for row in found if event is None or row[1] == event]


def uids(files: list[Path]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


@dataclass
class Rig:
    router: RouterProcess
    config: Path
    port: int
    pacs: CommitmentSCP
    files: list[Path]

    def states(self) -> dict[str, int]:
        return delivery_states(self.config, "pacs")


@contextmanager
def rig(
    tmp_path: Path,
    *,
    report: str,
    count: int = 6,
    timeout: str = "1 h",
    allowed_callers: tuple[str, ...] = (),
    **scp: object,
) -> Iterator[Rig]:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=count)
    port = free_port()
    with CommitmentSCP(
        ae_title="PACS", report=report, report_to=("127.0.0.1", port, "WAYSTATION"), **scp
    ) as pacs:
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            allowed_callers=allowed_callers,
            destinations=destination_toml(
                "pacs",
                "PACS",
                pacs.port,
                storage_commitment="true",
                commitment_timeout=f'"{timeout}"',
            )
            + route_toml("everything", "pacs")
            + fast_retry_toml(),
        )
        with RouterProcess(config) as router:
            yield Rig(router, config, port, pacs, files)


def test_report_on_the_same_association_makes_objects_delivered(tmp_path: Path) -> None:
    with rig(tmp_path, report="same") as r:
        assert send(r.files, r.port).acknowledged == r.files
        assert wait_for(lambda: r.states() == {"delivered": len(r.files)}, 60), r.states()
        requests = r.pacs.requests()
        assert sorted(i for q in requests for i in q.instances) == sorted(uids(r.files))
        assert all(q.calling_ae == "WAYSTATION" for q in requests)
        assert r.pacs.answers() and set(r.pacs.answers()) == {0x0000}
        # The history says stored (awaiting commitment) first, then committed.
        for object_id in {o for o, _e, _d in history(r.config, "routed")}:
            events = [e for o, e, _d in history(r.config) if o == object_id]
            assert events.index("stored") < events.index("committed"), events
            assert "delivered" not in events
        stored = history(r.config, "stored")
        assert all(d["reason"] == "stored, awaiting commitment" for _o, _e, d in stored)


def test_failed_references_are_sent_again_and_committed_later(tmp_path: Path) -> None:
    with rig(tmp_path, report="new", count=6) as r:
        bad = uids(r.files)[2]
        r.pacs.fail_next(bad)
        assert send(r.files, r.port).acknowledged == r.files
        assert wait_for(lambda: r.states() == {"delivered": len(r.files)}, 90), r.states()
        assert r.pacs.receive_count(bad) == 2  # sent again after the failure report
        assert all(r.pacs.receive_count(u) == 1 for u in uids(r.files) if u != bad)
        failed = history(r.config, "commitment-failed")
        assert len(failed) == 1
        assert "could not keep it (processing failure)" in str(failed[0][2]["reason"])
        assert len(history(r.config, "committed")) == len(r.files)
        assert set(r.pacs.answers()) == {0x0000}  # reports on a new association answered


def test_no_report_asks_again_then_resends_and_nothing_is_lost(tmp_path: Path) -> None:
    with rig(tmp_path, report="never", count=3, timeout="3 s") as r:
        assert send(r.files, r.port).acknowledged == r.files
        assert wait_for(lambda: r.states() == {"committing": 3}, 30), r.states()
        # Asked, asked again after 3 s, then sent again and asked anew.
        r.pacs.wait_for_requests(3, timeout=60)
        assert wait_for(lambda: all(r.pacs.receive_count(u) >= 2 for u in uids(r.files)), 60)
        first, second = r.pacs.requests()[:2]
        assert sorted(first.instances) == sorted(second.instances) == sorted(uids(r.files))
        assert first.transaction_uid != second.transaction_uid
        assert history(r.config, "commitment-timeout")
        assert "delivered" not in r.states()
        assert r.router.log_shows("sent no Storage Commitment result")
        # The destination starts reporting: everything ends delivered.
        r.pacs.report = "same"
        assert wait_for(lambda: r.states() == {"delivered": 3}, 60), r.states()


def test_reports_from_strangers_are_refused_and_unknown_transactions_ignored(
    tmp_path: Path,
) -> None:
    with rig(tmp_path, report="never", count=2) as r:
        assert send(r.files, r.port).acknowledged == r.files
        request = r.pacs.wait_for_requests(1)[0]
        sop_class = str(dcmread(r.files[0], stop_before_pixels=True).SOPClassUID)
        instances = dict.fromkeys(request.instances, sop_class)
        # Not a destination with storage_commitment: refused, nothing changes.
        stranger = send_report(
            r.port,
            calling_ae="STRANGER",
            transaction_uid=request.transaction_uid,
            instances=instances,
        )
        assert stranger == 0x0124
        # The right AE, a transaction this unit never made: answered, ignored.
        unknown = send_report(
            r.port, calling_ae="PACS", transaction_uid="1.2.3.4.5", instances=instances
        )
        assert unknown == 0x0000
        assert r.states() == {"committing": 2}
        # The real thing, twice: applied once, the repeat answered and ignored.
        for _ in range(2):
            ok = send_report(
                r.port,
                calling_ae="PACS",
                transaction_uid=request.transaction_uid,
                instances=instances,
            )
            assert ok == 0x0000
        assert wait_for(lambda: r.states() == {"delivered": 2}, 10)
        assert len(history(r.config, "committed")) == 2
        assert r.router.log_shows("refused: no destination with storage_commitment")
        log = r.router.read_log()
        for uid in request.instances:
            assert uid not in log  # no UIDs of objects in the log


def test_with_allowed_callers_a_destination_may_report_but_not_store(tmp_path: Path) -> None:
    with rig(tmp_path, report="new", count=3, allowed_callers=("TESTSCU",)) as r:
        assert send(r.files, r.port).acknowledged == r.files
        assert wait_for(lambda: r.states() == {"delivered": 3}, 60), r.states()
        assert set(r.pacs.answers()) == {0x0000}
        refused = send(r.files[:1], r.port, calling_ae="PACS")
        assert refused.statuses == {r.files[0]: 0x0124}
        assert send(r.files[:1], r.port, calling_ae="OTHER").error  # not admitted at all


@pytest.mark.timeout(300)
def test_orthanc_commits_and_only_then_objects_are_delivered(tmp_path: Path) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=5)
    port = free_port()
    with Orthanc(
        tmp_path / "orthanc",
        modalities={"waystation": ("WAYSTATION", "127.0.0.1", port)},
    ) as orthanc:
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=destination_toml(
                "orthanc", "ORTHANC", orthanc.dicom_port, storage_commitment="true"
            )
            + route_toml("everything", "orthanc"),
        )
        with RouterProcess(config) as router:
            assert send(files, port).acknowledged == files
            ok = wait_for(lambda: delivery_states(config) == {"delivered": 5}, 120)
            assert ok, (delivery_states(config), router.read_log()[-3000:])
            assert orthanc.instance_count() == 5
            committed = history(config, "committed")
            assert len(committed) == 5
            assert all(d["destination"] == "orthanc" for _o, _e, d in committed)
            assert router.log_shows("orthanc committed 5 objects")
