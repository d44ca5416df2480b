"""kill -9 of the router during delivery, many times: every object ends up at the
destination, nothing stays "in progress", and duplicates stay within what was in flight."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from pydicom import dcmread
from pynetdicom import _config

from tests.crash.conftest import soak
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
    write_config,
)
from tests.support.sender import send

_BATCH = 8  # router/delivery/worker.py: deliveries claimed at once per association


def deliveries(config: Path) -> dict[str, int]:
    return delivery_states(config)


def test_kill9_during_delivery_loses_nothing_and_bounds_duplicates(tmp_path: Path) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=300) + dicomgen.make_ct_series(
        tmp_path / "ct", count=60
    )
    kills = 40 if soak() else 6
    rng = random.Random(7)
    # The destination sits behind a fault proxy: refused while the queue builds, then slowed
    # to 2 MB/s, so every kill lands in the middle of delivery.
    with Storescp(tmp_path / "pacs") as pacs, FaultProxy(pacs.port) as link:
        link.refuse()
        port = free_port()
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=destination_toml("pacs", "STORESCP", link.port)
            + route_toml("all", "pacs")
            + fast_retry_toml(),
        )
        router = RouterProcess(config).start()
        assert send(files, port).acknowledged == files
        link.rate(2_000_000)
        link.accept()
        done_kills = 0
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 2.0))
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
    assert done_kills >= 5
    assert duplicates <= _BATCH * done_kills
