"""The router -> hub path on loopback: objects per second and CPU per object per process.

No link emulator: this measures the CPU the hub path spends per object, which bounds how
fast it can fill a WAN link (docs/benchmarks.md, "WAN"). The router queues the workload
while the hub is down; the clock starts when the hub listens and stops twice: when the
router has recorded the hub's commit of every object ("committed"), and when storescp behind
the hub holds every object, checked byte for byte ("arrived"). CPU is each process's user +
system time (from /proc) up to "committed", and the hub's up to "arrived" too. With
``--py-spy DIR`` both processes are sampled by py-spy (in the venv or on PATH; it is not a
project dependency) into collapsed-stack files, which ``python -m bench.pyspy_top FILE``
summarizes.

    python -m bench.hub_loopback --kind ct --count 60
    python -m bench.hub_loopback --kind tiny --count 600 --py-spy var/prof
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.delivery_peers import ArrivalWatcher, check_arrived, digests
from bench.measure import BenchError
from bench.wan_hub import hub_config_text
from tests.support import dicomgen
from tests.support.peers import require
from tests.support.router_proc import (
    REPO,
    RouterProcess,
    delivery_states,
    free_port,
    write_config,
)

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def workload(kind: str, count: int) -> list[Path]:
    """CT slices (512x512, ~525 kB) or tiny objects (~5 kB), cached in var/testdata."""
    if kind == "ct":
        root = dicomgen.cached_dataset(
            f"hubperf-ct-{count}", lambda d: dicomgen.make_ct_series(d, count, seed=1)
        )
    else:
        root = dicomgen.cached_dataset(
            f"hubperf-tiny-{count}", lambda d: dicomgen.make_tiny_objects(d, count, seed=2)
        )
    return sorted(root.glob("*.dcm"))


def _hub_config(directory: Path, port: int, pacs_port: int) -> Path:
    path = directory / "hub.toml"
    path.write_text(hub_config_text(directory, f"127.0.0.1:{port}", pacs_port))
    return path


def _py_spy(pid: int, out: Path, idle: bool) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed (pip install py-spy into the venv)")
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--threads",
         "--nonblocking", "--output", str(out), *(["--idle"] if idle else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def run(
    kind: str, count: int, streams: int, profile_dir: Path | None, idle: bool = False
) -> dict[str, float]:
    """One transfer; returns seconds, objects/s and CPU ms per object per process."""
    files = workload(kind, count)
    work = Path(tempfile.mkdtemp(prefix="hubperf-"))
    hub_dir, unit_dir, out = work / "hub", work / "unit", work / "received"
    for d in (hub_dir, unit_dir, out):
        d.mkdir()
    hub_port, pacs_port, router_port = free_port(), free_port(), free_port()
    hub_config = _hub_config(hub_dir, hub_port, pacs_port)
    cli = [sys.executable, "-m", "router.cli", "hub", "--config", str(hub_config)]
    enrolled = subprocess.run([*cli, "enroll", "BENCH"], cwd=REPO, capture_output=True,
                              text=True, check=True)  # fmt: skip
    token = work / "hub.token"
    token.write_text(enrolled.stdout)
    destinations = f"""
[[destinations]]
name = "hub"
type = "hub"
url = "http://127.0.0.1:{hub_port}"
insecure_plain_http = true
token_file = "{token}"
streams = {streams}

[[routes]]
name = "everything"
to = ["hub"]

[delivery]
retry_first = "0.1 s"
retry_max = "1 s"
"""
    router = RouterProcess(write_config(unit_dir, port=router_port, destinations=destinations))
    hub = RouterProcess(hub_config, command=("hub",), ready=b"waystation hub ready",
                        log=hub_dir / "hub.log")  # fmt: skip
    scp = None
    spies: list[subprocess.Popen[bytes]] = []
    try:
        router.start()
        store = [require("storescu"), "-aet", "STORESCU", "-aec", "WAYSTATION", "-nh",
                 "127.0.0.1", str(router_port), *map(str, files)]  # fmt: skip
        subprocess.run(store, check=True, capture_output=True, timeout=1800)
        with open(work / "scp.log", "ab") as scp_log:
            scp = subprocess.Popen(
                [require("storescp"), "-aet", "STORESCP", "+xa", "-pm", "+B", "+uf",
                 "-od", str(out), str(pacs_port)],
                stdout=scp_log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        time.sleep(0.5)
        assert router.proc is not None
        time.sleep(2.0)  # the router settles (ingest done, backing off the absent hub)
        with ArrivalWatcher(out, len(files)) as watch:
            router_cpu0 = cpu_seconds(router.proc.pid)
            hub.start()
            assert hub.proc is not None
            started = time.monotonic()
            hub_cpu0 = cpu_seconds(hub.proc.pid)
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
                for name, proc in (("router", router.proc), ("hub", hub.proc)):
                    spy = _py_spy(proc.pid, profile_dir / f"{kind}-{name}.txt", idle)
                    if spy is not None:
                        spies.append(spy)
            # Committed: the router recorded the hub's answer for every object.
            while delivery_states(router.config, "hub").get("delivered", 0) < len(files):
                if time.monotonic() - started > 3600:
                    raise BenchError("the hub did not commit every object")
                time.sleep(0.05)
            committed = time.monotonic() - started
            router_cpu = cpu_seconds(router.proc.pid) - router_cpu0
            hub_commit_cpu = cpu_seconds(hub.proc.pid) - hub_cpu0
            if not watch.wait(3600):
                raise BenchError(f"only {watch.count} of {len(files)} arrived")
            seconds = watch.complete_at - started
            hub_cpu = cpu_seconds(hub.proc.pid) - hub_cpu0
        arrived = check_arrived(out, digests(files))
        if not arrived.exact:
            raise BenchError(f"{arrived} - not byte-exact")
    finally:
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its output and ends
            spy.wait(60)
        router.stop()
        hub.stop()
        if scp is not None:
            scp.terminate()
            scp.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "objects": len(files),
        "committed_s": committed,
        "committed_per_s": len(files) / committed,
        "arrived_s": seconds,
        "arrived_per_s": len(files) / seconds,
        # CPU until every object was committed at the hub (the upload path) ...
        "router_cpu_ms_per_object": 1000 * router_cpu / len(files),
        "hub_commit_cpu_ms_per_object": 1000 * hub_commit_cpu / len(files),
        # ... and the hub's until storescp behind it held every one (onward delivery too).
        "hub_cpu_ms_per_object": 1000 * hub_cpu / len(files),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kind", choices=("ct", "tiny"), default="ct")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--py-spy", type=Path, default=None, dest="py_spy")
    parser.add_argument("--idle", action="store_true", help="py-spy samples waiting threads too")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    figures = run(args.kind, args.count, args.streams, args.py_spy, args.idle)
    print(f"{args.kind} x{args.count}, {args.streams} streams, load {load[0]:.2f}: " + ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
