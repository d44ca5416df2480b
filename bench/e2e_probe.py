"""Diagnostic for the end-to-end CT scenario on a shared machine: the router's CPU and system
calls per object, for storescu -> Waystation -> storescp.

Wall-clock ratios drift with other users' load; CPU time per object and syncs per object
do not (much). This runs the same scenario as ``bench.delivery --workloads ct --parts e2e``
(same files, same router configuration, same destination) and reports, per run:

* wall time until the destination held everything, and until the last acknowledgement;
* the router process's user and system CPU per object (``/proc/PID/stat``);
* with ``--syscalls``: the router's fsync, fdatasync, pwrite64, pread64 and openat calls per
  object (``perf stat`` on its syscall tracepoints: needs root or perf_event_paranoid <= -1).

    .venv/bin/python -m bench.e2e_probe --runs 3
    .venv/bin/python -m bench.e2e_probe --runs 3 --syscalls
    .venv/bin/python -m bench.e2e_probe --runs 1 \
        --attach "exec py-spy record -f raw -o prof.txt -p {pid}"   # any tool, on the router

Not part of ``make bench``: it compares code versions, not products (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import measure
from bench.delivery_peers import DESTINATION_AE, ArrivalWatcher, waystation_router
from bench.ingest import BENCH_ROOT, SEND_TIMEOUT, _ct_files
from tests.support.peers import Storescp, storescu

_TICK = os.sysconf("SC_CLK_TCK")
_COUNTED = ("fsync", "fdatasync", "pwrite64", "pread64", "openat")


def _process_cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _perf_counts(output: Path) -> dict[str, int]:
    """System calls counted by ``perf stat -x ,`` (CSV: value,unit,event,...)."""
    calls: dict[str, int] = {}
    for line in output.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
            calls[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0])
    return calls


def run_once(
    files: list[Path], workdir: Path, trace: bool, attach: str | None = None
) -> dict[str, object]:
    """One end-to-end run; returns its figures."""
    count = len(files)
    measure.settle()
    scp = Storescp(workdir / "dest", aet=DESTINATION_AE)
    counter: subprocess.Popen[bytes] | None = None
    trace_out = workdir / "perf-stat.txt"
    with (
        ArrivalWatcher(scp.out_dir, count) as watcher,
        scp,
        waystation_router(workdir / "waystation", scp.port) as running,
    ):
        if trace:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in _COUNTED)
            counter = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-e", events, "-o", str(trace_out),
                 "-p", str(running.pid)],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # attached to every thread
        profiler: subprocess.Popen[bytes] | None = None
        if attach:
            profiler = subprocess.Popen(attach.format(pid=running.pid), shell=True)
            time.sleep(1.0)
        user_before, sys_before = _process_cpu(running.pid)
        result = storescu(files, port=running.port, aec=running.aec, timeout=SEND_TIMEOUT)
        start = time.monotonic() - result.elapsed
        if not watcher.wait(120.0):
            raise measure.BenchError(f"only {watcher.count} of {count} arrived")
        user_after, sys_after = _process_cpu(running.pid)
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(60)
        running.wait_delivered(count)
        if counter is not None:
            counter.send_signal(signal.SIGINT)
            counter.wait(30)
    figures: dict[str, object] = {
        "wall": watcher.complete_at - start,
        "acked": result.elapsed,
        "user_ms": (user_after - user_before) * 1000 / count,
        "sys_ms": (sys_after - sys_before) * 1000 / count,
    }
    if counter is not None:
        calls = _perf_counts(trace_out)
        figures["syncs_per_object"] = round((calls["fsync"] + calls["fdatasync"]) / count, 2)
        figures["calls_per_object"] = {k: round(v / count, 1) for k, v in calls.items()}
    return figures


def main() -> int:
    """Run and print one line per run, then medians."""
    parser = argparse.ArgumentParser(prog="python -m bench.e2e_probe", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=300, help="CT slices (default 300)")
    parser.add_argument(
        "--syscalls", action="store_true", help="count the router's syncs, reads, writes (perf)"
    )
    parser.add_argument("--attach", help="a command run against {pid} during the send")
    args = parser.parse_args()
    files = _ct_files(args.count)
    measure.warm_page_cache(files)
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    samples = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="e2e-probe-", dir=BENCH_ROOT) as work:
            figures = run_once(files, Path(work), args.syscalls, args.attach)
        samples.append(figures)
        print(f"run {run + 1}: {figures}", flush=True)
    for key in ("wall", "acked", "user_ms", "sys_ms"):
        values = [float(s[key]) for s in samples]  # type: ignore[arg-type]
        print(
            f"{key}: median {statistics.median(values):.3f} "
            f"(min {min(values):.3f}, max {max(values):.3f})"
        )
    rate = [args.count / float(s["wall"]) for s in samples]  # type: ignore[arg-type]
    print(
        f"inst/s: median {statistics.median(rate):.1f} (min {min(rate):.1f}, max {max(rate):.1f})"
    )
    print(f"load average: {measure.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
