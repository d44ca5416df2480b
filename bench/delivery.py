"""Delivery benchmark: end to end through a router, and the C-STORE send rate, in one run.

All on 127.0.0.1, each router and each destination started fresh (empty spool, empty storage,
empty destination folder) for every run, byte-identical files (the ingest benchmark's cached
CT series and tiny objects), DCMTK ``storescu`` (TCP_NODELAY=1) as the modality and DCMTK
``storescp`` as the destination throughout:

1. **End to end** (modality -> router -> destination): storescu sends the workload to
   (a) Waystation routing everything to storescp, (b) Orthanc doing store-and-forward to the
   same kind of storescp (destination in DicomModalities, a Lua ``OnStoredInstance`` hook
   calling ``SendToModality``). Timed from storescu's start until the destination holds every
   object (inotify close-after-write events in its folder); the destination's content is then
   checked byte for byte against what was sent.
2. **Send rate**: Waystation is started with its destination's port closed and receives the
   workload (every object acknowledged, so queued in its spool); then storescp is started on
   that port and the drain is timed until storescp holds every object. The same files are sent
   by storescu straight into a fresh storescp for comparison.

The result replaces the "Delivery" section of ``docs/benchmarks.md``::

    make bench   # bench.ingest, then: .venv/bin/python -m bench.delivery --out docs/benchmarks.md
    .venv/bin/python -m bench.delivery --quick --out /tmp/bench-delivery.md   # while developing
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench import measure
from bench.delivery_peers import (
    DESTINATION_AE,
    RETRY_FIRST,
    RETRY_MAX,
    ArrivalWatcher,
    RunningRouter,
    check_arrived,
    closed_port,
    digests,
    log_tail,
    orthanc_forwarder,
    waystation_router,
)
from bench.delivery_report import (
    PAUSE,
    ROUTERS,
    SECTION,
    SENDERS,
    STORESCU,
    WAYSTATION,
    DeliveryResults,
    DeliveryWorkload,
    EndToEnd,
    SendRate,
    render,
    sample_rows,
)
from bench.ingest import (
    BENCH_ROOT,
    REPO,
    SEND_TIMEOUT,
    _csv,
    _ct_files,
    _debian_version,
    _tiny_files,
)
from bench.measure import BenchError, cpu_seconds
from bench.receivers import ORTHANC as RX_ORTHANC
from bench.receivers import STORESCP as RX_STORESCP
from bench.receivers import orthanc_binary, preflight, spool_cipher
from tests.support.peers import Storescp, StorescuResult, storescu

WORKLOADS = ("ct", "tiny")
PARTS = ("e2e", "send")
#: Seconds to wait for the destination to hold everything once the sending has started.
ARRIVAL_TIMEOUT = 600.0
#: Failed attempts to reach the destination before it comes back: with retry_first 0.1 s
#: doubling up to retry_max 1 s, the fifth and later retries wait the full 0.5-1 s.
OUTAGE_ATTEMPTS = 5
#: Seconds without a new arrival after which a run is declared stalled.
STALL_TIMEOUT = 120.0


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_workloads(selected: Sequence[str], quick: bool) -> list[DeliveryWorkload]:
    """The selected workloads, the same files as the ingest benchmark's (var/testdata).

    Full: the 300-slice CT series and 2,000 tiny objects; ``quick``: the first 60 slices and
    the first 400 tiny objects.
    """
    ct_count, tiny_count = (60, 400) if quick else (300, 2000)
    workloads: list[DeliveryWorkload] = []
    if "ct" in selected:
        files = _ct_files(ct_count)
        title = f"CT series, {len(files)} slices 512x512 16-bit"
        workloads.append(DeliveryWorkload("ct", title, tuple(files), "inst"))
    if "tiny" in selected:
        files = _tiny_files(tiny_count)
        size = sum(p.stat().st_size for p in files) / len(files) / 1000
        title = f"Tiny objects, {len(files)} x {size:.1f} kB"
        workloads.append(DeliveryWorkload("tiny", title, tuple(files), "obj"))
    for workload in workloads:
        if len(workload.files) < 2:
            raise BenchError(f"workload {workload.key} needs at least 2 files")
    return workloads


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[bench.delivery {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _check_acknowledged(result: StorescuResult, expected: int, label: str) -> None:
    """Fail unless storescu got a Success/Warning response for every file."""
    stored = result.succeeded + result.warnings
    if result.ok and stored == expected:
        return
    sample = list(result.failed_files.items())[:5]
    raise BenchError(
        f"{label}: storescu exit {result.returncode}, {stored} of {expected} acknowledged; "
        f"e.g. {sample}; stderr tail: {result.stderr[-800:]!r}"
    )


def _children_cpu() -> float:
    """User + system CPU of this process's terminated, reaped children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pauses(arrivals: Sequence[float]) -> tuple[float, int, float]:
    """The longest interval between consecutive arrivals, and how many intervals of at least
    :data:`~bench.delivery_report.PAUSE` seconds there were and how long they took in all."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    long_ones = [gap for gap in gaps if gap >= PAUSE]
    return max(gaps, default=0.0), len(long_ones), sum(long_ones)


class DeliveryBench:
    """Runs the measurements into a :class:`DeliveryResults` (work files under ``workdir``)."""

    def __init__(self, results: DeliveryResults, workdir: Path, keep: bool) -> None:
        self.results = results
        self.workdir = workdir
        self.keep = keep
        self.cipher: str | None = None
        self._sent: dict[str, Counter[str]] = {}

    def _sent_digests(self, workload: DeliveryWorkload) -> Counter[str]:
        if workload.key not in self._sent:
            self._sent[workload.key] = digests(workload.files)
        return self._sent[workload.key]

    def _verify(self, directory: Path, workload: DeliveryWorkload, label: str) -> None:
        arrived = check_arrived(directory, self._sent_digests(workload))
        if not arrived.exact:
            raise BenchError(
                f"{label}: the destination holds {arrived.held} files: {arrived.missing} sent "
                f"objects missing, {arrived.extra} extra (duplicates or altered)"
            )

    def _wait_arrivals(
        self, watcher: ArrivalWatcher, expected: int, label: str, log: Path | None
    ) -> None:
        """Wait until the destination holds ``expected`` objects; fail after
        :data:`ARRIVAL_TIMEOUT` in all or :data:`STALL_TIMEOUT` without a new arrival."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        last_count, last_change = -1, time.monotonic()
        while not watcher.wait(1.0):
            now = time.monotonic()
            if watcher.count != last_count:
                last_count, last_change = watcher.count, now
            if now > deadline or now - last_change > STALL_TIMEOUT:
                tail = f"\nrouter log tail:\n{log_tail(log)}" if log is not None else ""
                raise BenchError(
                    f"{label}: the destination holds only {watcher.count} of {expected} "
                    f"objects, the last arrived {now - last_change:.0f} s ago{tail}"
                )

    def _done(self, directory: Path) -> None:
        if not self.keep:
            shutil.rmtree(directory, ignore_errors=True)

    # -- end to end --------------------------------------------------------------------------

    def e2e_once(self, router: str, workload: DeliveryWorkload, run: int) -> EndToEnd:
        """storescu -> fresh router -> fresh storescp; timed until storescp holds all."""
        directory = self.workdir / f"e2e-{workload.key}-{router}-{run}"
        count = len(workload.files)
        label = f"e2e {workload.key} run {run + 1} via {router}"
        starter = waystation_router if router == WAYSTATION else orthanc_forwarder
        router_dir = directory / router
        log = router_dir / ("router.log" if router == WAYSTATION else "orthanc.log")
        measure.settle()
        scp = Storescp(directory / "dest", aet=DESTINATION_AE)
        with (
            ArrivalWatcher(scp.out_dir, count) as watcher,
            scp,
            starter(router_dir, scp.port) as running,
        ):
            cpu_before = cpu_seconds(running.pid)
            result = storescu(
                list(workload.files), port=running.port, aec=running.aec, timeout=SEND_TIMEOUT
            )
            start = time.monotonic() - result.elapsed
            _check_acknowledged(result, count, label)
            self._wait_arrivals(watcher, count, label, log)
            cpu = cpu_seconds(running.pid) - cpu_before
            done, first = watcher.complete_at, watcher.first
            longest, paused_count, paused = pauses(watcher.times()[:count])
            running.wait_delivered(count)
            if router == WAYSTATION and self.cipher is None:
                self.cipher = spool_cipher(router_dir / "spool")
            self._verify(scp.out_dir, workload, label)
        self._done(directory)
        sample = EndToEnd(
            router=router,
            workload=workload.key,
            run=run,
            objects=count,
            bytes=workload.total_bytes,
            wall=done - start,
            acked=result.elapsed,
            first=first - start,
            cpu_s=cpu,
            longest_gap=longest,
            pauses=paused_count,
            paused=paused,
        )
        _log(
            f"{label}: all held after {sample.wall:.2f} s ({sample.rate:.1f} {workload.unit}/s, "
            f"{sample.mbps:.1f} MB/s); acked {sample.acked:.2f} s, first held "
            f"{sample.first:.2f} s; {sample.pauses} pauses >= {PAUSE} s totalling "
            f"{sample.paused:.2f} s; router CPU {sample.cpu_ms_per_object:.2f} ms/object"
        )
        return sample

    # -- send rate ---------------------------------------------------------------------------

    def _queue_in_waystation(
        self, running: RunningRouter, workload: DeliveryWorkload, label: str
    ) -> None:
        """Send the workload into a Waystation whose destination is down; check it is queued."""
        count = len(workload.files)
        result = storescu(
            list(workload.files), port=running.port, aec=running.aec, timeout=SEND_TIMEOUT
        )
        _check_acknowledged(result, count, label)
        # The router must have found the destination down several times and be waiting for
        # its next retry, as after a long outage (not merely not have looked yet).
        running.wait_backed_off(OUTAGE_ATTEMPTS)
        states = running.delivery_states()
        queued = states.get("pending", 0) + states.get("inflight", 0)
        if queued != count or sum(states.values()) != count:
            raise BenchError(f"{label}: expected {count} queued deliveries, journal has {states}")

    def send_waystation(self, workload: DeliveryWorkload, run: int) -> SendRate:
        """Queue with the destination down, then start storescp and time the drain."""
        directory = self.workdir / f"send-{workload.key}-waystation-{run}"
        count = len(workload.files)
        label = f"send {workload.key} run {run + 1} by waystation"
        router_dir = directory / "waystation"
        with (
            closed_port() as (dest_port, reservation),
            waystation_router(router_dir, dest_port) as running,
        ):
            self._queue_in_waystation(running, workload, label)
            measure.settle()
            scp = Storescp(directory / "dest", port=dest_port, aet=DESTINATION_AE)
            reservation.close()  # storescp binds the port next
            with ArrivalWatcher(scp.out_dir, count) as watcher:
                cpu_before = cpu_seconds(running.pid)
                start = time.monotonic()
                with scp:
                    self._wait_arrivals(watcher, count, label, router_dir / "router.log")
                    cpu = cpu_seconds(running.pid) - cpu_before
                    done, first = watcher.complete_at, watcher.first
                    running.wait_delivered(count)
                    self._verify(scp.out_dir, workload, label)
        self._done(directory)
        return self._send_sample(WAYSTATION, workload, run, start, first, done, cpu, label)

    def send_storescu(self, workload: DeliveryWorkload, run: int) -> SendRate:
        """storescu straight into a fresh storescp."""
        directory = self.workdir / f"send-{workload.key}-storescu-{run}"
        count = len(workload.files)
        label = f"send {workload.key} run {run + 1} by storescu"
        measure.settle()
        scp = Storescp(directory / "dest", aet=DESTINATION_AE)
        with ArrivalWatcher(scp.out_dir, count) as watcher, scp:
            cpu_before = _children_cpu()
            result = storescu(
                list(workload.files), port=scp.port, aec=DESTINATION_AE, timeout=SEND_TIMEOUT
            )
            start = time.monotonic() - result.elapsed
            cpu = _children_cpu() - cpu_before  # storescu is the only child reaped meanwhile
            _check_acknowledged(result, count, label)
            self._wait_arrivals(watcher, count, label, None)
            done, first = watcher.complete_at, watcher.first
            self._verify(scp.out_dir, workload, label)
        self._done(directory)
        return self._send_sample(STORESCU, workload, run, start, first, done, cpu, label)

    def _send_sample(
        self,
        sender: str,
        workload: DeliveryWorkload,
        run: int,
        start: float,
        first: float,
        done: float,
        cpu: float,
        label: str,
    ) -> SendRate:
        sample = SendRate(
            sender=sender,
            workload=workload.key,
            run=run,
            objects=len(workload.files),
            bytes=workload.total_bytes,
            span=done - first,
            from_start=done - start,
            first=first - start,
            cpu_s=cpu,
        )
        _log(
            f"{label}: {sample.rate:.1f} {workload.unit}/s, {sample.mbps:.1f} MB/s first->last "
            f"({sample.span:.2f} s); first held {sample.first:.2f} s, all {sample.from_start:.2f}"
            f" s after start; sender CPU {sample.cpu_ms_per_object:.2f} ms/object"
        )
        return sample

    # -- everything --------------------------------------------------------------------------

    def run(self) -> None:
        """Every part x workload x run; the compared systems alternate, their order rotated
        per run, so background load from other users hits both alike."""
        for workload in self.results.workloads:
            for run in range(self.results.runs):
                if "e2e" in self.results.parts:
                    order = ROUTERS[run % 2 :] + ROUTERS[: run % 2]
                    for router in order:
                        self.results.e2e.append(self.e2e_once(router, workload, run))
                if "send" in self.results.parts:
                    order = SENDERS[run % 2 :] + SENDERS[: run % 2]
                    for sender in order:
                        if sender == WAYSTATION:
                            sample = self.send_waystation(workload, run)
                        else:
                            sample = self.send_storescu(workload, run)
                        self.results.send.append(sample)


# --------------------------------------------------------------------------------------------
# Environment and method
# --------------------------------------------------------------------------------------------


def environment(results: DeliveryResults, cipher: str, load_start: str) -> list[tuple[str, str]]:
    """The environment rows of the report."""
    nproc = len(os.sched_getaffinity(0))
    versions = ", ".join(
        f"{name} {measure.package_version(name)}"
        for name in ("waystation", "pynetdicom", "pydicom", "cryptography")
    )
    versions += f", Python {platform.python_version()}"
    peers = f"DCMTK {measure.dcmtk_version()}"
    if "e2e" in results.parts:
        peers += f", Orthanc {measure.orthanc_version(orthanc_binary())}"
    data = []
    for workload in results.workloads:
        total = workload.total_bytes
        count = len(workload.files)
        name = "CT" if workload.key == "ct" else workload.key
        data.append(
            f"{name}: {count} files, {total / measure.MB:.1f} MB (mean {total / count:,.0f} B)"
        )
    return [
        ("date", results.date),
        ("machine", f"{nproc} CPUs (nproc), {measure.cpu_model()}, "
                    f"{measure.mem_total_gib():.1f} GiB RAM"),
        ("OS, kernel", f"{_debian_version()}, Linux {platform.release()}"),
        ("load average 1/5/15 min", f"start {load_start}; end {measure.load_average()}"),
        ("storage under var/bench/", measure.filesystem_of(BENCH_ROOT)),
        ("Waystation and libraries", versions),
        ("source", measure.source_revision(REPO)),
        ("peers", peers),
        ("Waystation cipher", cipher),
        ("modality", "DCMTK storescu, TCP_NODELAY=1, one association, each file in its own "
                     "transfer syntax (Explicit VR Little Endian)"),
        ("destination", "DCMTK storescp -pm +xa +B (bit-preserving, no fsync), TCP_NODELAY=1, "
                        "default max PDU 16 KiB, fresh and empty for every run"),
        ("Waystation routing", "one rule routing everything to the destination; 1 association "
                               f"per destination (default); retry_first {RETRY_FIRST}, "
                               f"retry_max {RETRY_MAX} (the smallest allowed; defaults 5 s and "
                               "300 s); ingest offers a 256 KiB max PDU"),
        ("Orthanc forwarding", "Lua OnStoredInstance -> SendToModality(instanceId, 'dest'), "
                               "destination in DicomModalities; default durability "
                               "(SyncStorageArea: fdatasync per stored file), default "
                               "MaximumPduLength 16 KiB"),
        ("data (tests/support/dicomgen, cached in var/testdata)", "; ".join(data)),
    ]  # fmt: skip


METHOD_NOTES = [
    "Every run starts the router and the destination fresh with empty storage; the two "
    "systems compared alternate within each run and their order is rotated from run to run.",
    "All files are read once before measuring (page cache), and `sync` runs before each run so "
    "the previous run's write-back does not land in the next one.",
    "Arrival times: a thread reads inotify close-after-write events of storescp's output "
    "folder as they happen, so 'the destination holds an object' means storescp has written "
    "and closed its file. After each run the destination's files are compared byte for byte "
    "(data set SHA-256) with the files sent: every object exactly once, or the run fails.",
    "End to end: from storescu's start until the destination holds every object. 'Last ack' "
    "is storescu's exit (every object acknowledged by the router); for Waystation that means "
    "stored durably and encrypted, for Orthanc stored with its default fsync.",
    "Send rate, Waystation: the router starts with its destination's port closed (bound, not "
    "listening: connections are refused), receives the workload (all acknowledged, all queued "
    f"in the journal) and is left until {OUTAGE_ATTEMPTS} attempts to reach the destination "
    "have failed, so it is backing off as after a long outage; then storescp is launched on "
    "that port. Send rate, storescu: the same files straight into a fresh storescp.",
    "The send rate is counted from the first object held to the last ((n - 1) objects over "
    "that interval), for both senders alike: it leaves out Waystation's wait for its next "
    "retry of the destination and storescu's process start, which the 'from start' columns "
    "include (Waystation: from storescp's launch; storescu: from its own launch).",
    "MB = 10^6 bytes of DICOM files; CPU is user + system time of the router process "
    "(Waystation: the `waystation run` Python process; Orthanc) from /proc/PID/stat, and of "
    "storescu from getrusage(RUSAGE_CHILDREN) around its run.",
]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.delivery",
        description="Delivery benchmark: end to end vs Orthanc store-and-forward, and the "
        "C-STORE send rate vs DCMTK storescu, same files, same destination (storescp).",
    )
    parser.add_argument(
        "--out", type=Path, help="Markdown file whose Delivery section is replaced (else stdout)"
    )
    parser.add_argument("--runs", type=int, help="runs per figure, median reported (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="development run: 60 CT slices, 400 tiny objects, 1 run",
    )
    parser.add_argument(
        "--workloads",
        type=_csv(WORKLOADS),
        default=WORKLOADS,
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default all)",
    )
    parser.add_argument(
        "--parts",
        type=_csv(PARTS),
        default=PARTS,
        help="comma-separated subset of e2e (end to end), send (send rate); default both",
    )
    parser.add_argument("--json", type=Path, help="also write the raw samples as JSON here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory under var/bench/"
    )
    return parser


def _command_line(argv: Sequence[str]) -> str:
    """How this run was started, as Markdown (``make bench`` when make ran it)."""
    python = Path(sys.executable)
    try:
        interpreter = str(python.relative_to(REPO))
    except ValueError:
        interpreter = "python"
    command = shlex.join([interpreter, "-m", "bench.delivery", *argv])
    if os.environ.get("MAKELEVEL"):
        return f"`make bench`, which ran `{command}`"
    return f"`{command}`"


def run(args: argparse.Namespace, argv: Sequence[str]) -> DeliveryResults:
    """Measure everything the arguments ask for."""
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    parts: tuple[str, ...] = args.parts
    preflight((RX_ORTHANC, RX_STORESCP) if "e2e" in parts else (RX_STORESCP,), False)
    load_start = measure.load_average()
    code_at_start = measure.source_digest(REPO / "router")
    _log("preparing data (built once into var/testdata)")
    workloads = build_workloads(args.workloads, args.quick)
    unique = {path for workload in workloads for path in workload.files}
    warmed = measure.warm_page_cache(sorted(unique))
    _log(f"{len(unique)} files, {warmed / measure.MB:.0f} MB in the page cache")
    results = DeliveryResults(
        command=_command_line(argv),
        date=measure.utc_now(),
        runs=runs,
        quick=args.quick,
        environment=[],
        workloads=workloads,
        parts=parts,
        notes=list(METHOD_NOTES),
    )
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="delivery-", dir=BENCH_ROOT))
    keep = args.keep
    try:
        bench = DeliveryBench(results, workdir, keep)
        bench.run()
        cipher = bench.cipher or "not read (no end-to-end Waystation run)"
        results.environment = environment(results, cipher, load_start)
        if measure.source_digest(REPO / "router") != code_at_start:
            warning = "router/ changed DURING this run: figures may mix code versions; re-run"
            _log(f"WARNING: {warning}")
            results.environment.insert(0, ("WARNING", warning))
    except BaseException:
        keep = True  # a failure: leave the logs and storage for inspection
        raise
    finally:
        if keep:
            _log(f"work directory kept (logs, storage): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, then write the section (or print it)."""
    return measure.bench_main(
        name="bench.delivery",
        title="Delivery",
        section=SECTION,
        argv=argv,
        build_parser=build_parser,
        run=run,
        render=render,
        raw=lambda results: {
            "command": results.command,
            "environment": dict(results.environment),
            "end_to_end": sample_rows(results.e2e),
            "send_rate": sample_rows(results.send),
        },
        log=_log,
        stopped="every router and destination was stopped",
    )


if __name__ == "__main__":
    sys.exit(main())
