"""Measurement helpers: peak resident set, timing of concurrent senders, medians, environment.

Nothing here starts a receiver; see :mod:`bench.receivers` for that.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.peers import StorescuResult, storescu

MIB = 1024 * 1024
MB = 1_000_000


class BenchError(RuntimeError):
    """A benchmark cannot go on (missing peer, unacknowledged object, dead receiver)."""


# --------------------------------------------------------------------------------------------
# Process memory
# --------------------------------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field (e.g. ``VmHWM``, ``VmRSS``) of ``/proc/PID/status``."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise BenchError(f"process {pid} is gone (reading {field})") from None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def peak_rss_mib(pid: int) -> float:
    """The peak resident set (VmHWM) of process ``pid`` in MiB."""
    return proc_status_kib(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` (all its threads), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        raise BenchError(f"process {pid} is gone (reading its CPU time)") from None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0]
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def process_name(pid: int) -> str:
    """``/proc/PID/comm``: checks that a PID is the receiver itself, not a wrapper."""
    return Path(f"/proc/{pid}/comm").read_text().strip()


# --------------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendOutcome:
    """What one send (one or several concurrent storescu runs) achieved."""

    wall: float  # seconds from the first storescu start to the last storescu exit
    sent: int  # files handed to storescu
    acknowledged: int  # C-STORE responses Success or Warning
    warnings: int
    bytes_sent: int  # sum of the file sizes


def send_concurrently(
    groups: Sequence[Sequence[Path]],
    *,
    port: int,
    aec: str,
    timeout: float,
    label: str,
) -> SendOutcome:
    """Send each group with its own ``storescu`` process (all at once); fail unless all acked.

    The wall time runs from the earliest storescu start to the latest exit. The helper measures
    each run from just before storescu starts (after reading the file metas), so the start of
    run ``i`` is ``end_i - elapsed_i`` with ``end_i`` taken when the helper returns.
    """

    def one(group: Sequence[Path]) -> tuple[StorescuResult, float]:
        result = storescu(list(group), port=port, aec=aec, timeout=timeout)
        return result, time.monotonic()

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        outcomes = list(pool.map(one, groups))
    start = min(end - result.elapsed for result, end in outcomes)
    wall = max(end for _, end in outcomes) - start
    sent = sum(len(group) for group in groups)
    problems: list[str] = []
    acknowledged = warnings = 0
    for (result, _), group in zip(outcomes, groups, strict=True):
        acknowledged += result.succeeded + result.warnings
        warnings += result.warnings
        if not result.ok or result.succeeded + result.warnings != len(group):
            sample = list(result.failed_files.items())[:5]
            problems.append(
                f"storescu exit {result.returncode}: {result.succeeded} succeeded, "
                f"{result.warnings} warnings, {result.failed} failed of {len(group)}; "
                f"e.g. {sample}; stderr tail: {result.stderr[-800:]!r}"
            )
    if problems:
        raise BenchError(f"{label}: not every object was acknowledged:\n" + "\n".join(problems))
    size = sum(path.stat().st_size for group in groups for path in group)
    return SendOutcome(wall, sent, acknowledged, warnings, size)


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """``files`` cut into ``parts`` contiguous, nearly equal slices (in order)."""
    size, extra = divmod(len(files), parts)
    out: list[list[Path]] = []
    start = 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        out.append(list(files[start:end]))
        start = end
    return [group for group in out if group]


def warm_page_cache(files: Sequence[Path]) -> int:
    """Read every file once so that all receivers are fed from the page cache; returns bytes."""
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            while chunk := fh.read(4 * MIB):
                total += len(chunk)
    return total


def settle() -> None:
    """Flush dirty pages of the previous run so its write-back does not slow the next one."""
    os.sync()


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median, minimum and maximum of a few runs."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one)."""
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (or the machine type)."""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    return platform.machine()


def cpu_has_aes_flag() -> bool:
    """Whether /proc/cpuinfo advertises AES instructions."""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return "aes" in value.split()
    return False


def mem_total_gib() -> float:
    """MemTotal in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def filesystem_of(path: Path) -> str:
    """``type (device)`` of the mount holding ``path``."""
    path = path.resolve()
    best = ("", "?", "?")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mountpoint, fstype, *_ = line.split()
        mp = Path(mountpoint)
        if (path == mp or mp in path.parents) and len(mountpoint) >= len(best[0]):
            best = (mountpoint, fstype, device)
    return f"{best[1]} ({best[2]})"


def load_average() -> str:
    """The 1/5/15 minute load averages as text."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _first_line(command: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(command), capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    for line in out.splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


def dcmtk_version() -> str:
    """``storescu --version`` condensed, e.g. ``3.6.7 (2022-04-22)``."""
    line = _first_line([shutil.which("storescu") or "storescu", "--version"])
    # "$dcmtk: storescu v3.6.7 2022-04-22 $"
    parts = line.strip("$ ").split()
    if len(parts) >= 4 and parts[2].startswith("v"):
        return f"{parts[2][1:]} ({parts[3]})"
    return line


def orthanc_version(binary: str) -> str:
    """``Orthanc --version``: the version number."""
    line = _first_line([binary, "--version"])
    return line.split()[-1] if line else "unknown"


def package_version(name: str) -> str:
    """An installed Python distribution's version."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def source_revision(repo: Path) -> str:
    """The commit checked out in ``repo`` and whether the router's code differs from it
    (read-only git commands)."""
    head = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    if not head or head.startswith("unknown") or " " in head:
        return "unknown (not a git checkout?)"
    try:
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "router", "tests/support"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return head
    changed = len([line for line in status.splitlines() if line.strip()])
    if changed:
        return f"{head} + uncommitted changes in {changed} files under router/ and tests/support/"
    return f"{head} (clean)"


def source_digest(root: Path) -> str:
    """SHA-256 over the Python files under ``root``: detects code edited during a run."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def utc_now() -> str:
    """The current time, UTC, to the minute."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def bench_main(
    *,
    name: str,
    title: str,
    section: str,
    argv: Sequence[str] | None,
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace, Sequence[str]], Any],
    render: Callable[[Any], str],
    raw: Callable[[Any], dict[str, Any]],
    log: Callable[[str], None],
    stopped: str,
) -> int:
    """The entry point every benchmark module shares: parse, run with clean stops on signals,
    then write its marked section of the output (or print it) and optional raw JSON."""
    from bench.report import write_section

    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every `with`/`finally`

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)
    started = time.monotonic()
    try:
        results = run(args, args_list)
    except BenchError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        log(f"interrupted; {stopped}")
        raise
    except BaseException as exc:
        # tests/support/peers.py calls pytest.skip() for a missing peer when pytest is
        # importable, even outside pytest: turn that into a plain error.
        if type(exc).__name__ == "Skipped":
            print(f"{name}: error: missing peer: {exc}", file=sys.stderr)
            return 1
        raise
    text = render(results)
    if args.out is not None:
        write_section(args.out, section, text)
        log(f"wrote the {title} section of {args.out}")
    else:
        sys.stdout.write(text)
    if args.json is not None:
        args.json.write_text(json.dumps(raw(results), indent=2))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0
