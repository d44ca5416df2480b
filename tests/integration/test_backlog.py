"""A backlog of 10,000 queued objects drains when the destination comes back, and the router's
memory does not grow with the backlog."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from router.config import load_config
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.spool.spool import Spool
from tests.support import dicomgen
from tests.support.peers import Storescp
from tests.support.router_proc import RouterProcess, free_port, write_config
from tests.support.sender import echo_ok

BACKLOG = 10_000


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def delivered(config: Path) -> int:
    journal = config.parent / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered'").fetchone()
        return int(row[0])


def queue_backlog(config: Path, template: bytes, count: int) -> None:
    """Fill the spool as ingest would, without the network (the queue is what is tested)."""
    spool = Spool(load_config(config).spool)
    source = Source("CT01", "WAYSTATION", "127.0.0.1")

    def one(index: int) -> None:
        incoming = spool.begin()
        incoming.write(template)
        incoming.finish()
        attributes = ObjectAttributes(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=f"2.25.{index}",
            study_instance_uid="2.25.1",
            series_instance_uid="2.25.2",
            transfer_syntax="1.2.840.10008.1.2.1",
            modality="CT",
        )
        spool.store(incoming, attributes, source, [PlannedDelivery("pacs", "all")])

    with ThreadPoolExecutor(8) as pool:  # concurrent stores share journal commits
        list(pool.map(one, range(count)))
    spool.close()


def test_ten_thousand_queued_objects_drain_in_bounded_memory(tmp_path: Path) -> None:
    [tiny] = dicomgen.make_tiny_objects(tmp_path / "tiny", count=1)
    pacs_port = free_port()
    (tmp_path / "unit").mkdir()
    config = write_config(
        tmp_path / "unit",
        port=free_port(),
        destinations=f"""
[[destinations]]
name = "pacs"
type = "dimse"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {pacs_port}

[[routes]]
name = "all"
to = ["pacs"]

[delivery]
retry_first = "0.5 s"
retry_max = "1 s"
""",
    )
    queue_backlog(config, tiny.read_bytes(), BACKLOG)
    # Promise 5: with 10,000 objects queued the router accepts associations within seconds
    # of starting (recovery included).
    port = int(load_config(config).ingest.listen.rsplit(":", 1)[1])
    begun = time.monotonic()
    with RouterProcess(config) as router:
        while not echo_ok(port) and time.monotonic() - begun < 60:
            time.sleep(0.05)
        accepting = time.monotonic() - begun
        assert router.proc is not None
        pid = router.proc.pid
        time.sleep(2)  # the destination is still down: the router waits, holding everything
        at_start = rss_mib(pid, "VmRSS")
        with Storescp(tmp_path / "pacs", port=pacs_port):
            started = time.monotonic()
            deadline = started + 600
            while delivered(config) < BACKLOG and time.monotonic() < deadline:
                time.sleep(1)
            seconds = time.monotonic() - started
        peak = rss_mib(pid, "VmHWM")
    assert delivered(config) == BACKLOG
    print(f"accepting {accepting:.1f} s after start with {BACKLOG} queued")
    assert accepting < 20, accepting
    print(f"drained {BACKLOG} in {seconds:.0f} s; RSS {at_start:.0f} MiB at start, peak {peak:.0f}")
    assert peak - at_start < 40, (at_start, peak)
