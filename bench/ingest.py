"""Ingest benchmark: one sender, byte-identical files, three receivers, one run.

The sender is DCMTK ``storescu`` (TCP_NODELAY=1); the receivers, each started fresh with empty
storage for every run, all on 127.0.0.1:

1. Waystation (``waystation run``), spool and key file on the real disk under ``var/bench/``,
2. Orthanc (Debian package) with its default durability (fsync of every stored file),
3. DCMTK ``storescp`` (no fsync: the speed ceiling).

Workloads: a CT series (one association), tiny objects (one and four associations) and one big
multi-frame object (throughput and the receiver's peak resident set). A diagnostic fourth
receiver, Waystation with its spool in /dev/shm, shows what the syncs cost (CT and tiny x1 only).
Then Waystation (and, if it works, Orthanc) runs again with its storage on CrashFS to count sync
calls per acknowledged object. The result replaces the "Ingest" section of ``docs/benchmarks.md``::

    make bench                      # = .venv/bin/python -m bench.ingest --out docs/benchmarks.md
    .venv/bin/python -m bench.ingest --quick --out /tmp/bench.md   # while developing
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bench import measure
from bench.measure import BenchError, cpu_seconds, peak_rss_mib, send_concurrently, split
from bench.receivers import (
    DIAGNOSTIC_WORKLOADS,
    MAX_PDU,
    NAMES,
    ORTHANC,
    RECEIVERS,
    STARTERS,
    STORESCP,
    WAYSTATION,
    orthanc_binary,
    preflight,
    spool_cipher,
)
from bench.report import IngestResults, Sample, SyncCount, Workload, render
from tests.support import dicomgen
from tests.support.crashfs import CrashFS

REPO = Path(__file__).resolve().parents[1]
BENCH_ROOT = REPO / "var" / "bench"
WORKLOADS = ("ct", "tiny1", "tiny4", "big")
PEERS = (WAYSTATION, ORTHANC, STORESCP)
SEND_TIMEOUT = 600.0  # seconds per storescu run; a stall fails the benchmark instead of hanging


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _ct_files(count: int) -> list[Path]:
    root = dicomgen.cached_dataset(
        "ct-300-seed1", lambda d: dicomgen.make_ct_series(d, 300, seed=1)
    )
    return sorted(root.glob("*.dcm"))[:count]


def _tiny_files(count: int) -> list[Path]:
    root = dicomgen.cached_dataset(
        "tiny-2000-seed2", lambda d: dicomgen.make_tiny_objects(d, 2000, seed=2)
    )
    return sorted(root.glob("*.dcm"))[:count]


def _big_file(size_mb: int) -> Path:
    root = dicomgen.cached_dataset(
        f"multiframe-{size_mb}mb",
        lambda d: dicomgen.make_multiframe(d / "mf.dcm", size_mb=size_mb),
    )
    return root / "mf.dcm"


def build_workloads(selected: Sequence[str], quick: bool) -> list[Workload]:
    """The selected workloads with their data (built once into var/testdata, then reused).

    Full: 300 CT slices, 2,000 tiny objects, a 210 MiB multi-frame object. ``quick``: the first
    60 slices, the first 400 tiny objects and a 60 MiB object.
    """
    ct_count, tiny_count, big_mb = (60, 400, 60) if quick else (300, 2000, 210)
    workloads: list[Workload] = []
    if "ct" in selected:
        files = _ct_files(ct_count)
        title = f"CT series, {len(files)} slices 512x512 16-bit, 1 association"
        workloads.append(Workload("ct", title, tuple(files), 1, "inst", True, True, False))
    for key, associations in (("tiny1", 1), ("tiny4", 4)):
        if key in selected:
            files = _tiny_files(tiny_count)
            size = sum(p.stat().st_size for p in files) / len(files) / 1000
            noun = "association" if associations == 1 else "concurrent associations"
            title = f"Tiny objects, {len(files)} x {size:.1f} kB, {associations} {noun}"
            workloads.append(
                Workload(key, title, tuple(files), associations, "obj", True, False, False)
            )
    if "big" in selected:
        big = _big_file(big_mb)
        title = f"Big object, 1 multi-frame of {big.stat().st_size / measure.MB:.0f} MB"
        workloads.append(Workload("big", title, (big,), 1, "obj", False, True, True))
    for workload in workloads:
        if len(workload.files) == 0:
            raise BenchError(f"workload {workload.key} has no files")
    return workloads


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[bench.ingest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class IngestBench:
    """Runs the measurements into an :class:`IngestResults` (work files under ``workdir``)."""

    def __init__(self, results: IngestResults, workdir: Path) -> None:
        self.results = results
        self.workdir = workdir
        self.cipher: str | None = None

    def measure_once(self, receiver: str, workload: Workload, run: int) -> Sample:
        """One run: fresh receiver, send, check every object is acknowledged and held."""
        directory = self.workdir / f"{workload.key}-{receiver}-{run}"
        groups = split(workload.files, workload.associations)
        measure.settle()
        with STARTERS[receiver](directory) as rx:
            idle = peak_rss_mib(rx.pid)
            cpu_before = cpu_seconds(rx.pid)
            label = f"{workload.key} run {run + 1} -> {receiver}"
            outcome = send_concurrently(
                groups, port=rx.port, aec=rx.aec, timeout=SEND_TIMEOUT, label=label
            )
            peak = peak_rss_mib(rx.pid)
            cpu = cpu_seconds(rx.pid) - cpu_before
            rx.wait_stored(outcome.acknowledged)
            if receiver == WAYSTATION and self.cipher is None:
                self.cipher = spool_cipher(rx.storage)
        shutil.rmtree(directory, ignore_errors=True)
        sample = Sample(
            receiver=receiver,
            workload=workload.key,
            run=run,
            wall=outcome.wall,
            objects=outcome.acknowledged,
            bytes=outcome.bytes_sent,
            idle_rss_mib=idle,
            peak_rss_mib=peak,
            cpu_s=cpu,
        )
        _log(
            f"{label}: {sample.wall:.2f} s, {sample.rate:.1f} {workload.unit}/s, "
            f"{sample.mbps:.1f} MB/s, peak RSS {peak:.0f} MiB, receiver CPU "
            f"{sample.cpu_ms_per_object:.2f} ms/object ({sample.cpu_share:.2f} of wall)"
        )
        return sample

    def throughput(self) -> None:
        """Every workload x run x receiver; receivers are interleaved and their order rotated
        per run, so background load from other users hits every receiver alike."""
        receivers = self.results.receivers
        for workload in self.results.workloads:
            for run in range(self.results.runs):
                shift = run % len(receivers)
                for receiver in receivers[shift:] + receivers[:shift]:
                    if workload.key not in DIAGNOSTIC_WORKLOADS.get(receiver, (workload.key,)):
                        continue
                    self.results.samples.append(self.measure_once(receiver, workload, run))

    def count_syncs(self, receiver: str, workload: Workload) -> SyncCount:
        """Send ``workload`` to ``receiver`` whose storage (spool + key file) is on CrashFS."""
        mount = self.workdir / f"crashfs-{workload.key}-{receiver}"
        mount.mkdir(parents=True)
        groups = split(workload.files, workload.associations)
        log = self.workdir / f"crashfs-{workload.key}-{receiver}.log"
        with CrashFS(mount) as fs, STARTERS[receiver](mount / "data", log=log) as rx:
            fs.reset_stats()  # only the syncs made for received objects, not start-up's
            label = f"syncs {workload.key} -> {receiver}"
            outcome = send_concurrently(
                groups, port=rx.port, aec=rx.aec, timeout=SEND_TIMEOUT, label=label
            )
            stats = fs.stats()
            rx.wait_stored(outcome.acknowledged)
        shutil.rmtree(mount, ignore_errors=True)
        count = SyncCount(
            receiver=receiver,
            workload=workload.key,
            acknowledged=outcome.acknowledged,
            fsync=stats.fsync,
            fdatasync=stats.fdatasync,
            fsyncdir=stats.fsyncdir,
        )
        _log(
            f"{label}: {count.total} syncs ({stats.fsync} fsync incl. {stats.fdatasync} "
            f"fdatasync, {stats.fsyncdir} fsyncdir) for {count.acknowledged} objects = "
            f"{count.per_object:.2f}/object"
        )
        return count

    def syncs(self, with_orthanc: bool) -> None:
        """Sync calls per object: tiny objects over 1 and 4 associations, and the CT series."""
        by_key = {w.key: w for w in self.results.workloads}
        receivers = [WAYSTATION]
        if with_orthanc and ORTHANC in self.results.receivers:
            receivers.append(ORTHANC)
        for key in ("tiny1", "tiny4", "ct"):
            if key not in by_key:
                continue
            for receiver in receivers:
                try:
                    count = self.count_syncs(receiver, by_key[key])
                except Exception as exc:
                    if receiver == WAYSTATION:
                        raise
                    # Optional figure: report why it is missing instead of failing the run.
                    _log(f"syncs {key} -> {receiver} failed: {exc}")
                    reason = str(exc).splitlines()[0][:120]
                    count = SyncCount(receiver, key, 0, 0, 0, 0, error=reason)
                self.results.syncs.append(count)


# --------------------------------------------------------------------------------------------
# Environment and method
# --------------------------------------------------------------------------------------------


def _debian_version() -> str:
    try:
        return "Debian " + Path("/etc/debian_version").read_text().strip()
    except OSError:
        return platform.platform()


def environment(results: IngestResults, cipher: str, load_start: str) -> list[tuple[str, str]]:
    """The environment rows of the report."""
    nproc = len(os.sched_getaffinity(0))
    versions = ", ".join(
        f"{name} {measure.package_version(name)}"
        for name in ("waystation", "pynetdicom", "pydicom", "cryptography")
    )
    versions += f", Python {platform.python_version()}"
    peers = f"DCMTK {measure.dcmtk_version()}"
    if ORTHANC in results.receivers:
        peers += f", Orthanc {measure.orthanc_version(orthanc_binary())}"
    aes = "yes" if measure.cpu_has_aes_flag() else "no"
    data = []
    for workload in results.workloads:
        if workload.key == "tiny4":
            continue
        total = workload.total_bytes
        name = {"ct": "CT", "tiny1": "tiny", "big": "big object"}.get(workload.key, workload.key)
        count = len(workload.files)
        data.append(
            f"{name}: {count} file{'s' if count > 1 else ''}, {total / measure.MB:.1f} MB"
            + (f" (mean {total / count:,.0f} B)" if count > 1 else "")
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
        ("Waystation cipher", f"{cipher} (read from a stored object's header; CPU AES "
                              f"instructions: {aes})"),
        ("sender", "DCMTK storescu, TCP_NODELAY=1, one process per association, each file "
                   "in its own transfer syntax (Explicit VR Little Endian)"),
        ("max PDU offered by the receiver",
         "; ".join(f"{NAMES[r]}: {MAX_PDU[r]}" for r in results.receivers if r in PEERS)),
        ("data (tests/support/dicomgen, cached in var/testdata)", "; ".join(data)),
    ]  # fmt: skip


METHOD_NOTES = [
    "Every run starts the receiver fresh with empty storage; receivers are interleaved within "
    "each run and their order rotated from run to run, so other users' load is shared out.",
    "All files are read once before measuring (page cache), and `sync` runs before each run so "
    "the previous run's write-back does not land in the next one.",
    "Wall time: from storescu's start to its exit (four associations: first start to last "
    "exit). Every object must be acknowledged (storescu's per-file C-STORE responses) and the "
    "receiver must then hold exactly that many, otherwise the benchmark fails.",
    "MB = 10^6 bytes of DICOM files sent; RSS in MiB, VmHWM of the receiver's own PID read "
    "after storescu exits (Waystation: the `waystation run` Python process).",
    "Durability: Waystation answers only once the encrypted object and its journal commit "
    "are synced (see the sync counts below); Orthanc keeps its default (SyncStorageArea: "
    "fdatasync per stored file, SQLite index); storescp syncs nothing.",
    "storescp runs with its defaults (no `--fork`): it serves one association at a time, so "
    "with four associations three wait in its listen queue; Orthanc and Waystation serve them "
    "concurrently.",
    "Waystation on tmpfs (ct and tiny x1 only) is a diagnostic: the same router with spool and "
    "key file in /dev/shm, where syncs cost almost nothing; the gap to the real-disk figure is "
    "what durability costs on this disk. It is not compared with the targets.",
    "Receiver CPU: user + system time of the receiver process (all threads) during the send, "
    "from /proc/PID/stat; CPU / wall near 1.0 means one core busy all the time.",
]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _csv(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated subset of ``choices`` (returned in their order)."""

    def parse(text: str) -> tuple[str, ...]:
        items = {item.strip() for item in text.split(",") if item.strip()}
        if not items or not items <= set(choices):
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return tuple(c for c in choices if c in items)

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Ingest benchmark: Waystation vs Orthanc vs DCMTK storescp, same sender.",
    )
    parser.add_argument(
        "--out", type=Path, help="Markdown file whose Ingest section is replaced (else stdout)"
    )
    parser.add_argument("--runs", type=int, help="runs per figure, median reported (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="development run: 60 CT slices, 400 tiny objects, 60 MiB object, 1 run",
    )
    parser.add_argument(
        "--receivers",
        type=_csv(RECEIVERS),
        default=RECEIVERS,
        help=f"comma-separated subset of {','.join(RECEIVERS)} (default all)",
    )
    parser.add_argument(
        "--workloads",
        type=_csv(WORKLOADS),
        default=WORKLOADS,
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default all)",
    )
    parser.add_argument("--no-fsyncs", action="store_true", help="skip the sync counts on CrashFS")
    parser.add_argument(
        "--no-orthanc-fsyncs",
        action="store_true",
        help="count syncs for Waystation only (Orthanc on CrashFS is optional)",
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
    command = shlex.join([interpreter, "-m", "bench.ingest", *argv])
    if os.environ.get("MAKELEVEL"):
        return f"`make bench`, which ran `{command}`"
    return f"`{command}`"


def run(args: argparse.Namespace, argv: Sequence[str]) -> IngestResults:
    """Measure everything the arguments ask for."""
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    receivers: tuple[str, ...] = args.receivers
    need_crashfs = not args.no_fsyncs and WAYSTATION in receivers
    preflight(receivers, need_crashfs)
    load_start = measure.load_average()
    code_at_start = measure.source_digest(REPO / "router")
    _log("preparing data (built once into var/testdata)")
    workloads = build_workloads(args.workloads, args.quick)
    unique = {path for workload in workloads for path in workload.files}
    warmed = measure.warm_page_cache(sorted(unique))
    _log(f"{len(unique)} files, {warmed / measure.MB:.0f} MB in the page cache")
    results = IngestResults(
        command=_command_line(argv),
        date=measure.utc_now(),
        runs=runs,
        quick=args.quick,
        environment=[],
        workloads=workloads,
        receivers=receivers,
        notes=list(METHOD_NOTES),
    )
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=BENCH_ROOT))
    keep = args.keep
    try:
        bench = IngestBench(results, workdir)
        bench.throughput()
        if need_crashfs:
            bench.syncs(with_orthanc=not args.no_orthanc_fsyncs)
        cipher = bench.cipher or "not measured (Waystation not run)"
        results.environment = environment(results, cipher, load_start)
        if measure.source_digest(REPO / "router") != code_at_start:
            warning = "router/ changed DURING this run: figures may mix code versions; re-run"
            _log(f"WARNING: {warning}")
            results.environment.insert(0, ("WARNING", warning))
    except Exception:
        keep = True  # a failure: leave the receivers' logs and storage for inspection
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
        name="bench.ingest",
        title="Ingest",
        section="ingest",
        argv=argv,
        build_parser=build_parser,
        run=run,
        render=render,
        raw=lambda results: {
            "command": results.command,
            "environment": dict(results.environment),
            "samples": [asdict(s) for s in results.samples],
            "syncs": [asdict(c) for c in results.syncs],
        },
        log=_log,
        stopped="every receiver was stopped",
    )


if __name__ == "__main__":
    sys.exit(main())
