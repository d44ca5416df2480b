"""kill -9 of the router between the C-STORE and the Storage Commitment report: after restart
the commitment completes, nothing is lost and nothing stays committing or requested."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import _config

from tests.crash.conftest import soak
from tests.support import dicomgen
from tests.support.commitment_scp import CommitmentSCP
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


def open_requests(config: Path) -> int:
    journal = config.parent / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM commitments WHERE state IN ('requesting', 'waiting')"
        ).fetchone()
        return int(row[0])


def test_kill9_between_store_and_report_loses_nothing(tmp_path: Path) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=12)
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    port = free_port()
    # Reports come on a new association, 3 s after the request: a router killed right after
    # the request is down when the report is tried, so the report is lost for good.
    with CommitmentSCP(
        ae_title="PACS", report="new", report_to=("127.0.0.1", port, "WAYSTATION"), report_delay=3
    ) as pacs:
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=destination_toml(
                "pacs", "PACS", pacs.port, storage_commitment="true", commitment_timeout='"4 s"'
            )
            + route_toml("all", "pacs")
            + fast_retry_toml(),
        )
        router = RouterProcess(config).start()
        assert send(files, port).acknowledged == files

        # 1. Killed after the C-STOREs, before the commitment request (the batch lingers 2 s).
        assert wait_for(lambda: set(pacs.received()) == sent, 30)
        router.kill9()
        assert not pacs.requests()
        states = delivery_states(config)
        assert sum(states.values()) == len(files) and "delivered" not in states, states

        # 2. Killed right after the request, before the report.
        router = RouterProcess(config).start()
        pacs.wait_for_requests(1, timeout=30)
        router.kill9()
        assert open_requests(config) >= 1
        time.sleep(4)  # the report is tried while the router is down, and lost
        assert None in pacs.answers()

        # 3. A few more kills at random moments while it recovers.
        rng = random.Random(11)
        for _ in range(6 if soak() else 2):
            router = RouterProcess(config).start()
            time.sleep(rng.uniform(0.5, 6.0))
            router.kill9()

        router = RouterProcess(config).start()
        try:
            ok = wait_for(lambda: delivery_states(config) == {"delivered": len(files)}, 120)
            assert ok, (delivery_states(config), router.read_log()[-3000:])
            assert open_requests(config) == 0
            assert set(pacs.received()) == sent
            assert all(
                pacs.receive_count(u) <= 1 + 6 for u in sent
            )  # bounded: once, plus a resend per lost round
        finally:
            router.stop()
