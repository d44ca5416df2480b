"""The three receivers under test, each as a context manager that starts it fresh.

Every receiver gets its own empty storage directory, listens on 127.0.0.1 only and is stopped
(and reaped) when the ``with`` block ends, whatever happened inside it.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench.measure import BenchError, process_name
from tests.support.crashfs import crashfs_unavailable_reason
from tests.support.peers import Orthanc, Storescp, free_port
from tests.support.router_proc import RouterProcess, write_config

WAYSTATION = "waystation"
ORTHANC = "orthanc"
STORESCP = "storescp"
WAYSTATION_TMPFS = "waystation-tmpfs"
RECEIVERS = (WAYSTATION, ORTHANC, STORESCP, WAYSTATION_TMPFS)
#: Short names for table headers.
NAMES = {
    WAYSTATION: "Waystation",
    ORTHANC: "Orthanc",
    STORESCP: "storescp",
    WAYSTATION_TMPFS: "Waystation on tmpfs",
}
#: Receivers that are diagnostics, not peers: measured only on these workloads.
DIAGNOSTIC_WORKLOADS = {WAYSTATION_TMPFS: ("ct", "tiny1")}
LABELS = {
    WAYSTATION: "Waystation (durable, encrypted)",
    WAYSTATION_TMPFS: "Waystation, spool on tmpfs (diagnostic: syncs nearly free, not durable)",
    ORTHANC: "Orthanc (default: fdatasync per file)",
    STORESCP: "DCMTK storescp (no fsync)",
}
#: The maximum PDU each receiver offers (what the sender then uses), for the report.
MAX_PDU = {
    WAYSTATION: "256 KiB (write_config's max_pdu = 262144)",
    WAYSTATION_TMPFS: "256 KiB",
    ORTHANC: "16 KiB (Orthanc default MaximumPduLength)",
    STORESCP: "16 KiB (storescp default)",
}
_CIPHER_IDS = {1: "AES-256-GCM", 2: "ChaCha20-Poly1305"}
REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


@dataclass
class Running:
    """A started receiver: where to send, which process to watch, how to count what it holds."""

    name: str
    port: int
    aec: str
    pid: int
    count_stored: Callable[[], int]
    storage: Path

    def wait_stored(self, expected: int, timeout: float = 30.0) -> int:
        """Wait until the receiver holds ``expected`` objects; raise if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            held = self.count_stored()
            if held >= expected:
                if held > expected:
                    raise BenchError(f"{self.name} holds {held} objects, expected {expected}")
                return held
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name} holds only {held} of {expected} acknowledged objects"
                )
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Preflight
# --------------------------------------------------------------------------------------------


def _which(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for directory in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        candidate = Path(directory) / binary
        if candidate.is_file():
            return str(candidate)
    return None


def orthanc_binary() -> str:
    """Path of Debian's Orthanc binary (raises :class:`BenchError` if missing)."""
    path = _which("Orthanc")
    if path is None:
        raise BenchError("Orthanc is not installed (Debian package orthanc; `make deps`)")
    return path


def preflight(receivers: tuple[str, ...], need_crashfs: bool) -> None:
    """Fail early, with the Debian package to install, if a peer or tool is missing.

    (tests/support/peers.py would otherwise call ``pytest.skip`` outside pytest, because pytest
    is importable in the venv.)
    """
    needed = {"storescu": "dcmtk", "setpriv": "util-linux"}
    if not any((REPO / "var" / "peers").glob("loopback-bind-*.so")):
        needed["cc"] = "gcc"  # peers.py compiles its loopback-only bind shim once
    if STORESCP in receivers:
        needed["storescp"] = "dcmtk"
    if ORTHANC in receivers:
        needed["Orthanc"] = "orthanc"
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in needed.items() if not _which(tool)]
    if missing:
        raise BenchError(
            "missing peers/tools: " + ", ".join(missing) + "; `make deps` installs them"
        )
    if WAYSTATION_TMPFS in receivers and not SHM.is_dir():
        raise BenchError(f"{SHM} is missing: pass --receivers without {WAYSTATION_TMPFS}")
    if need_crashfs and (reason := crashfs_unavailable_reason()) is not None:
        raise BenchError(
            f"CrashFS (for the fsync counts) cannot run: {reason}; "
            "install fuse3 (`make deps`) or pass --no-fsyncs"
        )


# --------------------------------------------------------------------------------------------
# Receivers
# --------------------------------------------------------------------------------------------


def _journal(spool: Path) -> sqlite3.Connection:
    """A read-only connection to a Waystation journal (safe while the router runs: WAL)."""
    return sqlite3.connect(f"file:{spool / 'journal.sqlite'}?mode=ro", uri=True, timeout=10)


def _count_held(spool: Path) -> int:
    """Objects recorded in a Waystation journal (held as blob files or inline alike)."""
    try:
        with contextlib.closing(_journal(spool)) as conn:
            return int(conn.execute("SELECT count(*) FROM objects").fetchone()[0])
    except sqlite3.Error:  # journal layout changed: fall back to counting blob files
        return sum(1 for _ in (spool / "blobs").rglob("*.blob"))


@contextlib.contextmanager
def waystation(directory: Path, *, log: Path | None = None) -> Iterator[Running]:
    """``waystation run`` with spool and key file under ``directory`` (empty or new).

    ``log``: where the router's stderr goes (default ``directory/router.log``); put it outside
    ``directory`` when that is a CrashFS mount so log writes do not load the FUSE server.
    """
    directory.mkdir(parents=True, exist_ok=True)
    router: RouterProcess | None = None
    error: Exception | None = None
    port = 0
    for _attempt in range(3):  # a port taken between free_port() and the bind: try another
        port = free_port()
        router = RouterProcess(write_config(directory, port=port), log=log)
        try:
            router.start()
            break
        except RuntimeError as exc:
            error, router = exc, None
    if router is None:
        raise BenchError(f"Waystation did not start: {error}")
    try:
        assert router.proc is not None
        pid = router.proc.pid
        spool = directory / "spool"
        yield Running(WAYSTATION, port, "WAYSTATION", pid, lambda: _count_held(spool), spool)
        if router.proc.poll() is not None:
            raise BenchError(f"Waystation died during the run:\n{router.read_log()[-2000:]}")
    finally:
        router.stop()


@contextlib.contextmanager
def waystation_tmpfs(directory: Path, *, log: Path | None = None) -> Iterator[Running]:
    """Waystation with spool and key file in /dev/shm: what it does when syncs cost nothing.

    A diagnostic, not a configuration anyone should run: nothing survives a power cut.
    The data goes to a fresh directory in /dev/shm (removed after); the log to ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="waystation-bench-", dir=SHM))
    try:
        with waystation(scratch / "ws", log=log or directory / "router.log") as running:
            running.name = WAYSTATION_TMPFS
            yield running
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cipher_of(header: bytes) -> str | None:
    if header[:4] != b"WSB1" or len(header) < 5:
        return None
    return _CIPHER_IDS.get(header[4], f"unknown cipher id {header[4]}")


def spool_cipher(spool: Path) -> str:
    """The cipher Waystation used, from the header (magic ``WSB1``, cipher id) of a stored
    object: a blob file, else a blob held inline in the journal."""
    for blob in (spool / "blobs").rglob("*.blob"):
        with open(blob, "rb") as fh:
            if found := _cipher_of(fh.read(5)):
                return found
    try:
        with contextlib.closing(_journal(spool)) as conn:
            row = conn.execute("SELECT substr(data, 1, 5) FROM inline_blobs LIMIT 1").fetchone()
    except sqlite3.Error:
        row = None
    if row is not None and (found := _cipher_of(bytes(row[0]))):
        return found
    return "unknown (no stored object header found)"


@contextlib.contextmanager
def orthanc(directory: Path, *, log: Path | None = None) -> Iterator[Running]:
    """Debian's Orthanc with its default durability (SyncStorageArea true), storage in
    ``directory``; ``log`` overrides where its log goes."""
    peer = Orthanc(directory)
    if log is not None:
        peer.log_path = log
    with peer:
        assert peer.proc is not None
        pid = peer.proc.pid
        if process_name(pid) != "Orthanc":  # setpriv execs Orthanc: same PID
            raise BenchError(f"PID {pid} is {process_name(pid)!r}, not Orthanc")
        yield Running(ORTHANC, peer.dicom_port, "ORTHANC", pid, peer.instance_count, directory)
        if not peer.running():
            raise BenchError(f"Orthanc died during the run:\n{peer.log_tail()}")


@contextlib.contextmanager
def storescp(directory: Path, *, log: Path | None = None) -> Iterator[Running]:
    """DCMTK storescp writing into ``directory/out`` (no fsync: the speed ceiling)."""
    peer = Storescp(directory / "out")
    if log is not None:
        peer.log_path = log
    with peer:
        assert peer.proc is not None
        pid = peer.proc.pid
        if process_name(pid) != "storescp":
            raise BenchError(f"PID {pid} is {process_name(pid)!r}, not storescp")
        yield Running(STORESCP, peer.port, "STORESCP", pid, lambda: len(peer.files()), directory)
        if not peer.running():
            raise BenchError(f"storescp died during the run:\n{peer.log_tail()}")


class Starter(Protocol):
    """Signature shared by the receiver context managers above."""

    def __call__(
        self, directory: Path, *, log: Path | None = None
    ) -> contextlib.AbstractContextManager[Running]: ...


STARTERS: dict[str, Starter] = {
    WAYSTATION: waystation,
    WAYSTATION_TMPFS: waystation_tmpfs,
    ORTHANC: orthanc,
    STORESCP: storescp,
}
