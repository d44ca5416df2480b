"""The hub sender in the WAN benchmark (bench/wan.py): resumable chunked HTTP uploads to a
Waystation hub in namespace ``b``, which forwards to storescp beside it.

Like the C-STORE sender: the router (namespace ``a``) queues the workload while the far
side is down; the clock starts when the hub listens and stops when storescp (behind the hub,
on ``b``'s loopback) holds every object, checked byte for byte. The share reported is
original bytes over the link's rate, so the envelope's compression can take it past 100%.
Plain HTTP on the emulated link: TLS costs one more round trip per connection and a few
percent of CPU, not goodput; the hub's TLS is exercised by tests/integration.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.delivery_peers import ArrivalWatcher, check_arrived, digests
from bench.measure import BenchError
from tests.support.peers import require
from tests.support.router_proc import REPO, RouterProcess, write_config

if TYPE_CHECKING:
    from bench.wan import Workload
    from tests.support.wanlink import WanLink

HUB_PORT = 18443
PACS_PORT = 11114
ROUTER_PORT = 11112


def _listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN in the network namespace of ``pid`` (its own /proc/PID/net)."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while port not in _listening_ports(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{what} did not start in the link's namespace (see {log})")
        time.sleep(0.02)


def hub_sender(link: WanLink, workload: Workload, workdir: Path) -> float:
    """Seconds from the hub listening until storescp behind it holds every object."""
    hub_dir = workdir / "hub"
    hub_dir.mkdir()
    hub_config = hub_dir / "hub.toml"
    hub_config.write_text(
        f"""
[unit]
ae_title = "HUB"
[spool]
path = "{hub_dir / "spool"}"
key_file = "{hub_dir / "hub.keys"}"
min_free = "16 MiB"
[hub]
listen = "{link.b_addr}:{HUB_PORT}"
insecure_plain_http = true
[[destinations]]
name = "pacs"
type = "dimse"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {PACS_PORT}
[[routes]]
name = "everything"
to = ["pacs"]
[delivery]
retry_first = "0.1 s"
retry_max = "1 s"
"""
    )
    hub_cli = [sys.executable, "-m", "router.cli", "hub", "--config", str(hub_config)]
    enrolled = subprocess.run(
        [*hub_cli, "enroll", "BENCH"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if enrolled.returncode != 0:
        raise BenchError(f"hub enroll failed: {enrolled.stderr[-400:]}")
    token = workdir / "hub.token"
    token.write_text(enrolled.stdout)
    destinations = f"""
[[destinations]]
name = "hub"
type = "hub"
url = "http://{link.b_addr}:{HUB_PORT}"
token_file = "{token}"

[[routes]]
name = "everything"
to = ["hub"]

[delivery]
retry_first = "0.1 s"
retry_max = "1 s"
"""
    unit_dir = workdir / "unit"
    unit_dir.mkdir()
    config = write_config(unit_dir, port=ROUTER_PORT, destinations=destinations)
    router = RouterProcess(config, prefix=link.command("a", []))
    router.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        store = [require("storescu"), "-aec", "WAYSTATION", "-nh", "127.0.0.1", str(ROUTER_PORT)]
        sent = link.run("a", [*store, *map(str, workload.files)], timeout=300)
        if sent.returncode != 0:
            raise BenchError(f"storescu into the router failed: {sent.stderr[-800:]}")
        out = workdir / "received"
        out.mkdir()
        with ArrivalWatcher(out, len(workload.files)) as watch:
            scp_log = out.with_suffix(".log")
            with open(scp_log, "ab") as log:
                scp = link.popen(
                    "b",
                    [require("storescp"), "-aet", "STORESCP", "+xa", "-pm", "+B", "+uf",
                     "-od", str(out), str(PACS_PORT)],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            processes.append(scp)
            _wait_listening(scp, PACS_PORT, "storescp", scp_log)
            hub_log = hub_dir / "hub.log"
            with open(hub_log, "ab") as log:
                hub = link.popen("b", hub_cli, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            processes.append(hub)
            _wait_listening(hub, HUB_PORT, "the hub", hub_log)
            started = time.monotonic()
            if not watch.wait(1800):
                raise BenchError(f"only {watch.count} of {len(workload.files)} arrived")
            seconds = watch.complete_at - started
        arrived = check_arrived(out, digests(workload.files))
        if not arrived.exact:
            raise BenchError(f"hub over the link: {arrived} - not byte-exact")
        return seconds
    finally:
        router.stop()
        for proc in processes:
            proc.terminate()
            proc.wait(30)
