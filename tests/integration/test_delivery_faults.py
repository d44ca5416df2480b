"""Delivery through faults: a scripted destination (statuses, aborts, rejections, silence) and a
TCP fault proxy (lost responses, resets, blackhole, flapping). For each: eventual delivery when
the fault clears, nothing lost, duplicates no more than the objects in flight when it hit, and
the other destination unaffected."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import _config

from tests.support import dicomgen
from tests.support.faultproxy import FaultProxy
from tests.support.peers import Storescp
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
from tests.support.scripted_scp import (
    REJECT_CALLING_AE,
    REJECT_CONGESTION,
    Abort,
    NoAnswer,
    Respond,
    ScriptedSCP,
)
from tests.support.sender import send

_BATCH = 8  # deliveries claimed at once by a worker (router/delivery/worker.py)


@dataclass
class Rig:
    """A router delivering to a scripted PACS (through a fault proxy) and a healthy archive."""

    router: RouterProcess
    config: Path
    port: int
    pacs: ScriptedSCP
    proxy: FaultProxy
    archive: Storescp
    files: list[Path]

    def states(self, destination: str) -> dict[str, int]:
        return delivery_states(self.config, destination)

    def errors(self, destination: str) -> set[str]:
        journal = self.config.parent / "spool" / "journal.sqlite"
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT DISTINCT last_error FROM deliveries WHERE destination = ?"
                " AND last_error IS NOT NULL",
                (destination,),
            )
            return {r[0] for r in rows}


@contextmanager
def rig(tmp_path: Path, count: int = 24) -> Iterator[Rig]:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=count)
    with (
        ScriptedSCP(ae_title="PACS") as pacs,
        FaultProxy(pacs.port) as proxy,
        Storescp(tmp_path / "archive") as archive,
    ):
        port = free_port()
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=destination_toml("pacs", "PACS", proxy.port)
            + destination_toml("archive", "STORESCP", archive.port)
            + route_toml("everything", "pacs", "archive")
            + fast_retry_toml(response_timeout="2 s"),
        )
        with RouterProcess(config) as router:
            yield Rig(router, config, port, pacs, proxy, archive, files)


def check_outcome(r: Rig, *, in_flight_bound: int) -> None:
    """Everything reached both destinations; duplicates at the PACS stay bounded."""
    total = len(r.files)
    assert wait_for(lambda: r.states("pacs") == {"delivered": total}), r.states("pacs")
    assert wait_for(lambda: r.states("archive") == {"delivered": total})
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in r.files}
    received = r.pacs.received()
    assert set(received) == sent
    for uid, item in received.items():
        original = next(p for p in r.files if uid in p.read_bytes().decode("latin-1"))
        assert item.data == dicomgen.dataset_bytes(original)
    duplicates = sum(item.count for item in received.values()) - len(received)
    assert duplicates <= in_flight_bound, duplicates


def test_busy_statuses_are_retried_until_accepted(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.pacs.script([Respond(0xA700)] * 5)
        assert send(r.files, r.port).acknowledged == r.files
        check_outcome(r, in_flight_bound=0)
        assert r.pacs.statistics().statuses[0xA700] == 5


def test_a_permanent_failure_waits_for_an_operator_and_blocks_nothing(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        bad = str(dcmread(r.files[3], stop_before_pixels=True).SOPInstanceUID)
        r.pacs.script_for(bad, [Respond(0xC000)])
        assert send(r.files, r.port).acknowledged == r.files
        total = len(r.files)
        assert wait_for(lambda: r.states("pacs") == {"delivered": total - 1, "failed": 1})
        assert any("could not understand" in e for e in r.errors("pacs"))
        assert r.router.log_shows("NOT delivered to pacs", 10)
        assert wait_for(lambda: r.states("archive") == {"delivered": total})


def test_this_unit_not_known_blocks_the_destination_not_the_objects(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.pacs.set_association_default(REJECT_CALLING_AE)
        assert send(r.files, r.port).acknowledged == r.files
        total = len(r.files)
        assert wait_for(lambda: r.states("archive") == {"delivered": total}, timeout=30)
        assert wait_for(
            lambda: any("does not know this unit's name WAYSTATION" in e for e in r.errors("pacs")),
            timeout=30,
        )
        assert "failed" not in r.states("pacs")  # held and queued, never given up
        r.pacs.set_association_default(None)  # IT fixed the PACS
        check_outcome(r, in_flight_bound=0)


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("abort", lambda r: r.pacs.script([Abort(), Abort(keep=True)])),
        ("never answers", lambda r: r.pacs.script([NoAnswer(seconds=5)])),
        ("congested", lambda r: r.pacs.script_associations([REJECT_CONGESTION] * 3)),
        ("slow answer", lambda r: r.pacs.script([Respond(delay=3.0)])),
        ("reset after bytes", lambda r: r.proxy.reset_after(20_000, times=2)),
        ("lost responses", lambda r: r.proxy.lose_responses(after_bytes=2_000)),
        ("blackhole", lambda r: r.proxy.blackhole()),
        ("flapping link", lambda r: r.proxy.flap(0.7, 0.7, cycles=4)),
    ],
)
def test_fault_then_recovery(tmp_path: Path, name: str, fault: Callable[[Rig], object]) -> None:
    with rig(tmp_path) as r:
        fault(r)
        assert send(r.files, r.port).acknowledged == r.files
        if name in ("lost responses", "blackhole"):
            total = len(r.files)
            assert wait_for(lambda: r.states("archive") == {"delivered": total}, timeout=30)
            time.sleep(3)  # let the fault bite, then clear it
            r.proxy.normal()
        # In flight when a fault hits: at most one batch per association at a time; a
        # lost response may repeat once per retry of the objects it hit.
        check_outcome(r, in_flight_bound=2 * _BATCH)
