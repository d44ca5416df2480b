"""Promises 3 and 6 through the whole pipeline: a full disk, failing writes or a failing fsync
under the router while it delivers to its PACS and to the hub (and under the hub while it
receives) - refusal with 0xA700 and an alarm, nothing already held lost, every acknowledged
object at both PACS bit-exact in the end, normal service once the fault clears.
(tests/crash/test_storage_faults.py covers the router alone, without deliveries.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.crash.pipeline import Ledger, Pipeline, Senders, pipeline, send_one
from tests.crash.soak import SoakFigures, check, drain, storage_fault_episode, torn
from tests.support.crashfs import crashfs_unavailable_reason

pytestmark = pytest.mark.fuse


@pytest.fixture(autouse=True)
def _needs_crashfs() -> None:
    reason = crashfs_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _traffic(senders: Senders, seconds: float) -> None:
    senders.start()
    time.sleep(seconds)
    senders.halt()


def _finish(rig: Pipeline, ledger: Ledger, figures: SoakFigures) -> None:
    rig.link.normal()
    drain(rig, ledger, timeout=180)
    rig.stop()
    torn(rig, figures, "at the final stop")
    check(rig, ledger, figures)
    print(figures.report())
    assert not figures.failures(), "\n".join([figures.report(), *figures.failures()])


def test_storage_faults_under_the_router_while_it_delivers_everywhere(
    tmp_path: Path, mixed_templates: list[Path]
) -> None:
    with pipeline(tmp_path) as rig:
        ledger = Ledger()
        senders = Senders(rig.port, mixed_templates, ledger, seed=5)
        rig.link.rate(400_000, direction="up")  # uploads to the hub still going on
        figures = SoakFigures()
        for fault in ("enospc", "fsync-eio", "full"):
            _traffic(senders, 1.5)  # a backlog being delivered when the fault strikes
            storage_fault_episode(rig, senders, fault, figures, hold=3.0)
        _traffic(senders, 1.0)  # normal service after the faults
        assert len(figures.faults) == 3 and not figures.fault_failures, figures.faults
        _finish(rig, ledger, figures)
    assert figures.acknowledged > 20


def test_storage_faults_under_the_hub_hold_uploads_back_and_lose_nothing(
    tmp_path: Path, mixed_templates: list[Path]
) -> None:
    with pipeline(tmp_path) as rig:
        ledger = Ledger()
        senders = Senders(rig.port, mixed_templates, ledger, seed=6)
        figures = SoakFigures()
        for fault in ("enospc", "fsync-eio"):
            before = len(ledger.acked)
            rig.hub_fs.inject(fault)  # type: ignore[arg-type]
            try:
                _traffic(senders, 3.0)
            finally:
                rig.hub_fs.inject("none")
            # A failing hub never stops the unit acknowledging (its spool is its own).
            assert len(ledger.acked) > before + 5, fault
            alarms = rig.new_alarms("hub")
            assert any(a.startswith(("storage-fault", "spool-full")) for a in alarms), alarms
        assert send_one(rig.port, senders)[1] == 0
        _finish(rig, ledger, figures)
    assert figures.acknowledged > 10
