"""Peers and probes of the delivery benchmark: the routers under test and an arrival clock.

* :class:`ArrivalWatcher` timestamps every file the destination (DCMTK ``storescp``) finishes
  writing, from inotify ``IN_CLOSE_WRITE`` events read by a thread as they happen: the exact
  moment the destination holds each object, without polling the folder.
* :func:`waystation_router` starts ``waystation run`` routing everything to one DIMSE
  destination; :func:`orthanc_forwarder` starts Debian's Orthanc with a Lua
  ``OnStoredInstance`` hook that forwards each stored instance to the same kind of destination.

Everything listens on 127.0.0.1 only and is stopped when its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import socket
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.measure import BenchError, process_name
from tests.support import dicomgen
from tests.support.peers import Orthanc, free_port
from tests.support.router_proc import RouterProcess, write_config

#: Name of the destination in both routers' configurations.
DESTINATION = "dest"
#: AE title the destination storescp answers to.
DESTINATION_AE = "STORESCP"
#: Waystation's retry settings here: the shortest the configuration allows, so that after an
#: outage the queue is tried again within a second (defaults: 5 s first, 300 s at most).
RETRY_FIRST = "0.1 s"
RETRY_MAX_SECONDS = 1.0
RETRY_MAX = f"{RETRY_MAX_SECONDS:g} s"
#: The Lua script Orthanc runs: forward every stored instance to the destination.
_LUA_LOADED = "bench forward script loaded"
FORWARD_LUA = f"""-- Store-and-forward: every instance Orthanc stores is sent on to '{DESTINATION}'.
print('{_LUA_LOADED}')
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, '{DESTINATION}')
end
"""

_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # struct inotify_event without its name


# --------------------------------------------------------------------------------------------
# The arrival clock
# --------------------------------------------------------------------------------------------


class ArrivalWatcher:
    """Records when each file in ``directory`` was completely written (inotify, Linux).

    Start it before anything can arrive; :meth:`wait` blocks until ``expected`` distinct files
    have been closed after writing. Times are ``time.monotonic()`` seconds taken by a thread
    that reads the events as they come (latency: microseconds).
    """

    def __init__(self, directory: Path, expected: int) -> None:
        self.directory = directory
        self.expected = expected
        self._arrivals: dict[str, float] = {}
        self._lock = threading.Lock()
        self._complete = threading.Event()
        self._stop = threading.Event()
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def start(self) -> ArrivalWatcher:
        """Open the inotify watch and start the reading thread."""
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            raise BenchError(f"inotify_init1 failed: {os.strerror(ctypes.get_errno())}")
        mask = _IN_CLOSE_WRITE | _IN_MOVED_TO
        if int(libc.inotify_add_watch(fd, os.fsencode(self.directory), mask)) < 0:
            reason = os.strerror(ctypes.get_errno())
            os.close(fd)
            raise BenchError(f"cannot watch {self.directory}: {reason}")
        self._fd = fd
        self._thread = threading.Thread(target=self._run, name="arrivals", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                continue
            now = time.monotonic()
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
                offset = start + length
                if mask & _IN_Q_OVERFLOW:
                    self._error = "inotify queue overflowed: arrival times are incomplete"
                    self._complete.set()
                    continue
                if name:
                    with self._lock:
                        self._arrivals.setdefault(name, now)
                        if len(self._arrivals) >= self.expected:
                            self._complete.set()

    def wait(self, timeout: float) -> bool:
        """Block until ``expected`` files arrived (True) or ``timeout`` seconds passed."""
        done = self._complete.wait(timeout)
        if self._error is not None:
            raise BenchError(self._error)
        return done

    @property
    def count(self) -> int:
        """Distinct files completely written so far."""
        with self._lock:
            return len(self._arrivals)

    def arrivals(self) -> dict[str, float]:
        """File name -> when it was completely written, so far."""
        with self._lock:
            return dict(self._arrivals)

    def times(self) -> list[float]:
        """Arrival times so far, earliest first."""
        with self._lock:
            return sorted(self._arrivals.values())

    @property
    def first(self) -> float:
        """When the first file arrived (raises if none did)."""
        times = self.times()
        if not times:
            raise BenchError(f"nothing arrived in {self.directory}")
        return times[0]

    @property
    def complete_at(self) -> float:
        """When the ``expected``-th distinct file arrived (raises if it did not)."""
        times = self.times()
        if len(times) < self.expected:
            raise BenchError(f"only {len(times)} of {self.expected} files in {self.directory}")
        return times[self.expected - 1]

    def stop(self) -> None:
        """Stop the thread and close the watch. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ArrivalWatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# A closed destination port
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def closed_port() -> Iterator[tuple[int, socket.socket]]:
    """A port on 127.0.0.1 that refuses connections and that nobody else can take.

    The socket is bound but never listens, so a connection attempt is refused (RST) - the
    destination is down - while no other program on this shared machine can grab the port
    meanwhile. Close the socket (``release``) right before starting the real destination.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1]), sock
    finally:
        sock.close()


# --------------------------------------------------------------------------------------------
# Checking what arrived
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrived:
    """What the destination holds compared with what was sent."""

    held: int  # files in the destination's folder
    missing: int  # sent data sets the destination does not hold
    extra: int  # files beyond one per sent data set (duplicates or strangers)

    @property
    def exact(self) -> bool:
        """Every sent data set, byte for byte, exactly once."""
        return self.missing == 0 and self.extra == 0


def digests(files: Sequence[Path]) -> Counter[str]:
    """SHA-256 of each file's data set (after the File Meta Information), as a multiset."""
    return Counter(dicomgen.dataset_sha256(path) for path in files)


def check_arrived(directory: Path, sent: Counter[str]) -> Arrived:
    """Compare the data sets in ``directory`` with ``sent`` (byte-exact, duplicates counted)."""
    received = digests(sorted(p for p in directory.rglob("*") if p.is_file()))
    missing = sum((sent - received).values())
    extra = sum((received - sent).values())
    return Arrived(sum(received.values()), missing, extra)


# --------------------------------------------------------------------------------------------
# Waystation routing everything to one destination
# --------------------------------------------------------------------------------------------


def routing_toml(dest_port: int) -> str:
    """The destinations/routes/delivery part of the Waystation configuration."""
    return f"""
[[destinations]]
name = "{DESTINATION}"
type = "dimse"
ae_title = "{DESTINATION_AE}"
host = "127.0.0.1"
port = {dest_port}

[[routes]]
name = "everything"
to = ["{DESTINATION}"]

[delivery]
retry_first = "{RETRY_FIRST}"
retry_max = "{RETRY_MAX}"
"""


@dataclass
class RunningRouter:
    """A started router: where to send, which process to watch, where its journal is."""

    name: str
    port: int
    aec: str
    pid: int
    journal: Path | None = None

    def delivery_states(self) -> dict[str, int]:
        """Waystation: deliveries per state (pending, inflight, delivered, failed)."""
        if self.journal is None:
            return {}
        uri = f"file:{self.journal}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
            rows = conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state")
            return {str(state): int(count) for state, count in rows}

    def failed_attempts(self) -> int:
        """Waystation: finished, unsuccessful delivery attempts so far, or -1 while one is in
        flight (an object is counted as attempted when it is claimed, before the outcome)."""
        if self.journal is None:
            return 0
        uri = f"file:{self.journal}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
            attempts, inflight = conn.execute(
                "SELECT coalesce(sum(attempts), 0),"
                " coalesce(sum(state = 'inflight'), 0) FROM deliveries"
            ).fetchone()
            return -1 if inflight else int(attempts)

    def wait_backed_off(self, attempts: int, timeout: float = 60.0) -> int:
        """Waystation: wait until ``attempts`` attempts to reach the destination have failed
        and none is in flight: the router is backing off as after a long outage."""
        deadline = time.monotonic() + timeout
        while (failed := self.failed_attempts()) < attempts:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name} made {max(failed, 0)} of {attempts} attempts to reach its "
                    f"destination in {timeout:.0f} s"
                )
            time.sleep(0.02)
        return failed

    def wait_delivered(self, expected: int, timeout: float = 60.0) -> dict[str, int]:
        """Waystation: wait until ``expected`` deliveries are recorded delivered."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.delivery_states()
            if self.journal is None or states.get("delivered", 0) >= expected:
                return states
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {states} after {timeout:.0f} s")
            time.sleep(0.1)


@contextlib.contextmanager
def waystation_router(
    directory: Path, dest_port: int, *, log: Path | None = None
) -> Iterator[RunningRouter]:
    """``waystation run`` with spool and key file under ``directory`` (fresh), routing every
    object to the DIMSE destination on 127.0.0.1:``dest_port`` (which may be closed)."""
    directory.mkdir(parents=True, exist_ok=True)
    router: RouterProcess | None = None
    error: Exception | None = None
    port = 0
    for _attempt in range(3):  # a port taken between free_port() and the bind: try another
        port = free_port()
        config = write_config(directory, port=port, destinations=routing_toml(dest_port))
        router = RouterProcess(config, log=log)
        try:
            router.start()
            break
        except RuntimeError as exc:
            error, router = exc, None
    if router is None:
        raise BenchError(f"Waystation did not start: {error}")
    try:
        assert router.proc is not None
        journal = directory / "spool" / "journal.sqlite"
        yield RunningRouter("Waystation", port, "WAYSTATION", router.proc.pid, journal)
        if router.proc.poll() is not None:
            raise BenchError(f"Waystation died during the run:\n{router.read_log()[-2000:]}")
    finally:
        router.stop()


# --------------------------------------------------------------------------------------------
# Orthanc forwarding every stored instance
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def orthanc_forwarder(
    directory: Path, dest_port: int, *, log: Path | None = None
) -> Iterator[RunningRouter]:
    """Debian's Orthanc (default durability) with storage in ``directory``, the destination in
    DicomModalities and :data:`FORWARD_LUA` in LuaScripts."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "forward.lua"
    script.write_text(FORWARD_LUA)
    peer = Orthanc(
        directory,
        modalities={DESTINATION: (DESTINATION_AE, "127.0.0.1", dest_port)},
        extra_config={"LuaScripts": [str(script)]},
    )
    if log is not None:
        peer.log_path = log
    with peer:
        assert peer.proc is not None
        pid = peer.proc.pid
        if process_name(pid) != "Orthanc":  # setpriv execs Orthanc: same PID
            raise BenchError(f"PID {pid} is {process_name(pid)!r}, not Orthanc")
        if _LUA_LOADED not in peer.log_tail(200):
            raise BenchError(f"Orthanc did not load its Lua script:\n{peer.log_tail()}")
        yield RunningRouter("Orthanc", peer.dicom_port, "ORTHANC", pid)
        if not peer.running():
            raise BenchError(f"Orthanc died during the run:\n{peer.log_tail()}")


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
