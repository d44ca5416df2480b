"""Diagnostic for the end-to-end CT scenario on a shared machine: CPU per object by thread,
and sync calls per object, for storescu -> Waystation -> storescp.

Wall-clock ratios drift with other users' load; CPU time per object and syncs per object
do not (much). This runs the same scenario as ``bench.delivery --workloads ct --parts e2e``
(same files, same router configuration, same destination) and reports, per run:

* wall time until the destination held everything, and until the last acknowledgement;
* the router process's user and system CPU per object, and per thread (by thread name,
  from ``/proc/PID/task/*/stat``);
* with ``--strace``: fsync/fdatasync calls of the router per object (``strace -c -f``; strace
  slows the router, so its runs' times are not comparable with the others).

    .venv/bin/python -m bench.e2e_probe --runs 3
    .venv/bin/python -m bench.e2e_probe --runs 1 --strace
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import measure
from bench.delivery_peers import DESTINATION_AE, ArrivalWatcher, waystation_router
from bench.ingest import BENCH_ROOT, SEND_TIMEOUT, _ct_files
from tests.support.peers import Storescp, storescu

_TICK = os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int) -> Counter[str]:
    """CPU seconds (user + system) of each live thread of ``pid``, summed by thread name
    with trailing digits folded (``deliver-dest-0`` and ``-1`` count together)."""
    totals: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")].rstrip("0123456789-_")
        fields = text.rsplit(")", 1)[1].split()
        totals[name or "?"] += (int(fields[11]) + int(fields[12])) / _TICK
    return totals


def _process_cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _strace_syncs(output: Path) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in output.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            calls[parts[-1]] = int(parts[3] if len(parts) == 6 else parts[2])
    return calls


def run_once(
    files: list[Path], workdir: Path, trace: bool, attach: str | None = None
) -> dict[str, object]:
    """One end-to-end run; returns its figures."""
    count = len(files)
    measure.settle()
    scp = Storescp(workdir / "dest", aet=DESTINATION_AE)
    strace: subprocess.Popen[bytes] | None = None
    trace_out = workdir / "strace.txt"
    with (
        ArrivalWatcher(scp.out_dir, count) as watcher,
        scp,
        waystation_router(workdir / "waystation", scp.port) as running,
    ):
        if trace:
            strace = subprocess.Popen(
                ["strace", "--seccomp-bpf", "-c", "-f", "-e", "trace=fsync,fdatasync", "-o", str(trace_out),
                 "-p", str(running.pid)],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # attached to every thread
        profiler: subprocess.Popen[bytes] | None = None
        if attach:
            profiler = subprocess.Popen(attach.format(pid=running.pid), shell=True)
            time.sleep(1.0)
        threads_before = _thread_cpu(running.pid)
        user_before, sys_before = _process_cpu(running.pid)
        result = storescu(files, port=running.port, aec=running.aec, timeout=SEND_TIMEOUT)
        start = time.monotonic() - result.elapsed
        if not watcher.wait(120.0):
            raise measure.BenchError(f"only {watcher.count} of {count} arrived")
        user_after, sys_after = _process_cpu(running.pid)
        threads = _thread_cpu(running.pid)
        threads.subtract(threads_before)
        if profiler is not None:
            profiler.send_signal(2)
            profiler.wait(60)
        running.wait_delivered(count)
        if strace is not None:
            strace.terminate()
            strace.wait(30)
    figures: dict[str, object] = {
        "wall": watcher.complete_at - start,
        "acked": result.elapsed,
        "user_ms": (user_after - user_before) * 1000 / count,
        "sys_ms": (sys_after - sys_before) * 1000 / count,
        "threads_ms": {k: round(v * 1000 / count, 2) for k, v in threads.most_common() if v},
    }
    if strace is not None:
        syncs = _strace_syncs(trace_out)
        figures["syncs_per_object"] = round(sum(syncs.values()) / count, 2)
        figures["syncs"] = syncs
    return figures


def main() -> int:
    """Run and print one line per run, then medians."""
    parser = argparse.ArgumentParser(prog="python -m bench.e2e_probe", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=300, help="CT slices (default 300)")
    parser.add_argument("--strace", action="store_true", help="count the router's syncs")
    parser.add_argument("--attach", help="a command run against {pid} during the send")
    args = parser.parse_args()
    files = _ct_files(args.count)
    measure.warm_page_cache(files)
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    samples = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="e2e-probe-", dir=BENCH_ROOT) as work:
            figures = run_once(files, Path(work), args.strace, args.attach)
        samples.append(figures)
        print(f"run {run + 1}: {figures}", flush=True)
    for key in ("wall", "acked", "user_ms", "sys_ms"):
        values = [float(s[key]) for s in samples]  # type: ignore[arg-type]
        print(
            f"{key}: median {statistics.median(values):.3f} "
            f"(min {min(values):.3f}, max {max(values):.3f})"
        )
    rate = [args.count / float(s["wall"]) for s in samples]  # type: ignore[arg-type]
    print(f"inst/s: median {statistics.median(rate):.1f} (min {min(rate):.1f}, max {max(rate):.1f})")
    print(f"load average: {measure.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
