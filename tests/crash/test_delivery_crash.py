"""kill -9 of the router during delivery, many times: every object ends up at the
destination, nothing stays "in progress", and duplicates stay within what was in flight."""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

from pydicom import dcmread
from pynetdicom import _config

from tests.crash.conftest import soak
from tests.support import dicomgen
from tests.support.peers import Storescp
from tests.support.router_proc import RouterProcess, free_port, write_config
from tests.support.sender import send

_BATCH = 8  # router/delivery/worker.py: deliveries claimed at once per association


def deliveries(config: Path) -> dict[str, int]:
    journal = config.parent / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))


def test_kill9_during_delivery_loses_nothing_and_bounds_duplicates(tmp_path: Path) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=300) + dicomgen.make_ct_series(
        tmp_path / "ct", count=60
    )
    kills = 40 if soak() else 8
    rng = random.Random(7)
    with Storescp(tmp_path / "pacs") as pacs:
        port = free_port()
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=f"""
[[destinations]]
name = "pacs"
type = "dimse"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {pacs.port}

[[routes]]
name = "all"
to = ["pacs"]

[delivery]
retry_first = "0.5 s"
retry_max = "2 s"
""",
        )
        router = RouterProcess(config).start()
        assert send(files, port).acknowledged == files
        done_kills = 0
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 0.6))
            router.kill9()
            done_kills += 1
            router = RouterProcess(config).start()
            if deliveries(config).get("delivered", 0) == len(files):
                break
        deadline = time.monotonic() + 120
        while deliveries(config).get("delivered", 0) < len(files) and time.monotonic() < deadline:
            time.sleep(0.2)
        router.stop()
        assert deliveries(config) == {"delivered": len(files)}  # nothing stuck in progress
        received = Counter(
            str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pacs.files()
        )
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert set(received) == sent
    duplicates = sum(received.values()) - len(received)
    print(f"{done_kills} kills during delivery, {duplicates} duplicates at the destination")
    assert done_kills >= 3
    assert duplicates <= _BATCH * done_kills
