"""Real DICOM peers for tests and benchmarks: DCMTK storescp/storescu and Orthanc.

Each peer is a context manager that starts one process listening on 127.0.0.1 only, waits until
its sockets are listening, and on exit stops it (SIGTERM, then SIGKILL) and reaps it. Peers
still running when the interpreter exits are stopped by an ``atexit`` hook, and every child is
started through ``setpriv --pdeathsig KILL`` so it dies with the Python process even after
``kill -9``. (The death signal is tied to the *thread* that started the peer: start peers from
a thread that outlives them, normally the main thread.)

Loopback only: DCMTK 3.6.7's storescp and Orthanc 1.10 (Debian 12) have no option for the
listening address and bind 0.0.0.0. The peers are therefore started with a tiny ``LD_PRELOAD``
shim (compiled once with the system C compiler into ``var/peers/``) that rewrites a bind to
INADDR_ANY / in6addr_any into 127.0.0.1 / ::1; after start-up the peer checks from
``/proc/net/tcp*`` that every listening socket of the process is on loopback.

Debian's DCMTK is built with Nagle's algorithm enabled unless ``TCP_NODELAY=1`` is in the
environment, so every DCMTK and Orthanc process gets it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self

from pydicom.filereader import read_file_meta_info

__all__ = [
    "REQUIRE_PEERS_ENV",
    "Orthanc",
    "PeerError",
    "Storescp",
    "StorescuResult",
    "free_port",
    "listening_sockets",
    "loopback_only_env",
    "require",
    "storescu",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Set to 1 (CI does) to make missing peers a test failure instead of a skip.
REQUIRE_PEERS_ENV = "WAYSTATION_REQUIRE_PEERS"
LOOPBACK = "127.0.0.1"

_DEBIAN_PACKAGE = {
    "storescp": "dcmtk",
    "storescu": "dcmtk",
    "dcmdump": "dcmtk",
    "Orthanc": "orthanc",
    "gcc": "gcc",
    "cc": "gcc",
    "setpriv": "util-linux",
}
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# DCMTK refuses more than 128 presentation contexts (odd IDs 1..255) in one association.
_MAX_PRESENTATION_CONTEXTS = 128


class PeerError(RuntimeError):
    """A peer failed to start, stopped unexpectedly or answered with an error."""


# --------------------------------------------------------------------------------------------
# Binaries, ports, environment
# --------------------------------------------------------------------------------------------


def _which(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for directory in _SBIN_DIRS:  # Orthanc lives in /usr/sbin, not on a normal user's PATH
        candidate = Path(directory) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _missing(message: str) -> NoReturn:
    """Skip the current test, or fail it when WAYSTATION_REQUIRE_PEERS=1 (CI)."""
    try:
        import pytest
    except ImportError:  # used outside pytest (benchmarks): plain error
        raise PeerError(message) from None
    if os.environ.get(REQUIRE_PEERS_ENV, "") not in ("", "0"):
        pytest.fail(f"{message} ({REQUIRE_PEERS_ENV} is set, so this fails instead of skipping)")
    pytest.skip(message)


def require(binary: str) -> str:
    """Return the path of ``binary``, or skip the calling test with a clear message.

    With ``WAYSTATION_REQUIRE_PEERS=1`` in the environment (CI installs the peers) a missing
    binary fails the test instead. Also looks in the sbin directories (Debian's Orthanc is
    ``/usr/sbin/Orthanc``). Outside pytest a missing binary raises :class:`PeerError`.
    """
    path = _which(binary)
    if path is None:
        package = _DEBIAN_PACKAGE.get(binary)
        hint = f" (Debian package {package}; `make deps` installs it)" if package else ""
        _missing(f"{binary} is not installed{hint}")
    return path


_ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
_DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


def require_orthanc_plugin(name: str) -> str:
    """The path of an Orthanc plugin library, or skip (fail under WAYSTATION_REQUIRE_PEERS)."""
    for directory in _ORTHANC_PLUGIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    _missing(
        f"the Orthanc plugin {name} is not installed (Debian package orthanc-dicomweb; "
        "`make deps` installs it)"
    )


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


_SHIM_SOURCE = r"""
/* Rewrites bind() to the wildcard address into a bind to loopback (test peers only). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, addr, sizeof sin);
        if (sin.sin_addr.s_addr == htonl(INADDR_ANY)) {
            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&sin, sizeof sin);
        }
    } else if (addr && addr->sa_family == AF_INET6
               && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, addr, sizeof sin6);
        if (IN6_IS_ADDR_UNSPECIFIED(&sin6.sin6_addr)) {
            sin6.sin6_addr = in6addr_loopback;
            return real_bind(fd, (const struct sockaddr *)&sin6, sizeof sin6);
        }
    }
    return real_bind(fd, addr, len);
}
"""
_shim_lock = threading.Lock()


def _loopback_shim() -> Path:
    """Compile (once, cached in var/peers/) the LD_PRELOAD bind shim and return its path."""
    digest = hashlib.sha256(_SHIM_SOURCE.encode()).hexdigest()[:16]
    target = REPO_ROOT / "var" / "peers" / f"loopback-bind-{digest}.so"
    if target.is_file():
        return target
    compiler = _which("cc") or _which("gcc")
    if compiler is None:
        _missing(
            "a C compiler (gcc) is needed to confine DCMTK/Orthanc to 127.0.0.1 "
            "(they have no listen-address option)"
        )
    with _shim_lock:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".shim.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.is_file():
                return target
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                source = Path(tmp) / "shim.c"
                source.write_text(_SHIM_SOURCE)
                built = Path(tmp) / "shim.so"
                proc = subprocess.run(
                    [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(source), "-ldl"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    raise PeerError(f"compiling the loopback shim failed:\n{proc.stderr}")
                os.replace(built, target)
    return target


def loopback_only_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a peer: ``TCP_NODELAY=1`` and the loopback bind shim preloaded."""
    env = dict(os.environ if base is None else base)
    env["TCP_NODELAY"] = "1"
    shim = str(_loopback_shim())
    env["LD_PRELOAD"] = f"{shim} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else shim
    return env


def _dcmtk_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


# --------------------------------------------------------------------------------------------
# Process handling
# --------------------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _decode_addr(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc/net/tcp6 prints the address as four host-order (little-endian) 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by process ``pid``."""
    inodes = _socket_inodes(pid)
    found: set[tuple[str, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and parts[9] in inodes:
                    addr, port = parts[1].rsplit(":", 1)
                    found.add((_decode_addr(addr), int(port, 16)))
    return found


_live_peers: set[_Peer] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_leftover_peers() -> None:
    with _live_lock:
        leftovers = list(_live_peers)
    for peer in leftovers:
        peer.stop()


class _Peer:
    """A child process listening on loopback ports; base of the peers below."""

    name = "peer"
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None

    # -- to implement ------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ports(self) -> list[int]:
        raise NotImplementedError

    def _pick_ports(self) -> bool:
        """Choose new free ports for those the caller did not fix; False if all are fixed."""
        return False

    def _ready(self) -> bool:
        """Extra readiness check once the ports listen."""
        return True

    def _prepare(self) -> None:
        """Write configuration files before each start attempt."""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the process and wait until it listens (retries on a port clash)."""
        if self.proc is not None:
            raise PeerError(f"{self.name} already started")
        setpriv = require("setpriv")
        env = loopback_only_env()
        last_error: PeerError | None = None
        for _attempt in range(4):
            self._prepare()
            command = self._command()
            assert self.log_path is not None
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._log.write(f"\n=== {' '.join(command)}\n".encode())
            self._log.flush()
            self.proc = subprocess.Popen(
                [setpriv, "--pdeathsig", "KILL", "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            with _live_lock:
                _live_peers.add(self)
            try:
                self._wait_listening()
                return self
            except PeerError as exc:
                exited = self.proc.poll() is not None
                self.stop()
                last_error = exc
                # An early exit most likely means another process took the port between
                # free_port() and the bind: try other ports (if the caller did not fix them).
                if not exited or not self._pick_ports():
                    break
        raise last_error or PeerError(f"{self.name} did not start")

    def _wait_listening(self) -> None:
        assert self.proc is not None
        wanted = set(self._ports())
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise PeerError(
                    f"{self.name} exited with {self.proc.returncode} during start-up:\n"
                    f"{self.log_tail()}"
                )
            sockets = listening_sockets(self.proc.pid)
            exposed = {s for s in sockets if s[0] not in (LOOPBACK, "::1")}
            if exposed:
                raise PeerError(f"{self.name} listens on non-loopback addresses {exposed}")
            if wanted <= {port for _, port in sockets} and self._ready():
                return
            if time.monotonic() > deadline:
                raise PeerError(
                    f"{self.name} not listening on {sorted(wanted)} after "
                    f"{self.start_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process: SIGTERM, wait, SIGKILL; always reaps it. Idempotent."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        with _live_lock:
            _live_peers.discard(self)

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the peer's log (stdout and stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        if self._log is not None:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# DCMTK storescp
# --------------------------------------------------------------------------------------------


class Storescp(_Peer):
    """DCMTK ``storescp`` writing every received object into ``out_dir``.

    Command line (plus ``extra_args`` before the port)::

        storescp -v -aet AET +xa -pm +B +uf -od OUT_DIR PORT

    ``+xa`` accepts every transfer syntax DCMTK knows (uncompressed, deflated, all JPEG, JPEG-LS,
    JPEG 2000, RLE, MPEG/HEVC), ``-pm`` also accepts SOP classes unknown to DCMTK, ``+B``
    (bit-preserving) writes the received data set exactly as it came off the wire behind a new
    file meta, so :func:`~tests.support.dicomgen.dataset_bytes` of a received file is the byte
    stream the sender sent; ``+uf`` makes file names unique so a repeated SOP Instance UID shows
    up as a second file instead of overwriting the first. The log goes to
    ``<out_dir>.storescp.log`` next to ``out_dir``.
    """

    name = "storescp"

    def __init__(
        self,
        out_dir: Path,
        *,
        port: int | None = None,
        aet: str = "STORESCP",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.binary = require("storescp")
        self.out_dir = Path(out_dir)
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.aet = aet
        self.extra_args = list(extra_args)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir.with_name(self.out_dir.name + ".storescp.log")

    def _command(self) -> list[str]:
        return [
            self.binary,
            "-v",
            "-aet",
            self.aet,
            "+xa",
            "-pm",
            "+B",
            "+uf",
            "-od",
            str(self.out_dir),
            *self.extra_args,
            str(self.port),
        ]

    def _ports(self) -> list[int]:
        return [self.port]

    def _pick_ports(self) -> bool:
        if self._fixed_port:
            return False
        self.port = free_port()
        return True

    def files(self) -> list[Path]:
        """Received files (sorted by name)."""
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())

    def wait_for_files(self, count: int, timeout: float = 60.0) -> list[Path]:
        """Wait until at least ``count`` files arrived; return them (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.files()
            if len(found) >= count:
                return found
            if not self.running():
                raise PeerError(f"storescp died:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise PeerError(f"only {len(found)} of {count} files arrived in {timeout} s")
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# DCMTK storescu
# --------------------------------------------------------------------------------------------


@dataclass
class StorescuResult:
    """Outcome of :func:`storescu` (all batches together)."""

    returncode: int  # 0 only if every storescu run exited 0
    stdout: str
    stderr: str
    succeeded: int  # C-STORE responses with status Success
    warnings: int  # C-STORE responses with a Warning status (stored, but coerced/...)
    failed: int  # files not stored: error/refused status, send failure, never sent
    elapsed: float  # seconds, wall clock, all batches
    failed_files: dict[Path, str] = field(default_factory=dict)  # file -> reason
    commands: list[list[str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every file stored (Success or Warning) and storescu exited 0."""
        return self.returncode == 0 and self.failed == 0


_SENDING = re.compile(r"^[A-Z]: Sending file: (.*)$")
_RESPONSE = re.compile(r"^[A-Z]: Received Store Response \((.*)\)\s*$")
_STORE_FAILED = re.compile(r"^[A-Z]: Store Failed, file: (.*):\s*$")
_ERROR_FILE = re.compile(r"^E: (.*?):? (/.*?):?\s*$")


def _expand(files: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for item in files:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            out.append(path)
    return out


def _cfg_name(uid: str) -> str:
    return "TS_" + uid.replace(".", "_")


def _write_scu_config(path: Path, pairs: Sequence[tuple[str, str]]) -> None:
    """An association profile proposing each (SOP class, transfer syntax) in its own context."""
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for ts in syntaxes:
        lines += [f"[{_cfg_name(ts)}]", f"TransferSyntax1 = {ts}"]
    lines += ["", "[[PresentationContexts]]", "[Contexts]"]
    for n, (sop_class, ts) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{n} = {sop_class}\\{_cfg_name(ts)}")
    lines += ["", "[[Profiles]]", "[Default]", "PresentationContexts = Contexts", ""]
    path.write_text("\n".join(lines))


def _quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def storescu(
    files: Sequence[Path],
    *,
    port: int,
    host: str = LOOPBACK,
    aet: str = "STORESCU",
    aec: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
    timeout: float = 600,
) -> StorescuResult:
    """Send ``files`` (directories are expanded recursively) with DCMTK ``storescu``.

    Each file is sent in its own transfer syntax, never converted: the file metas are read and a
    generated association profile proposes one presentation context per (SOP class, transfer
    syntax) pair found (``-xf CONFIG Default``; the ``-x...`` options cannot express e.g. JPEG
    Extended or JPEG-LS near-lossless). Command line per batch::

        storescu -v -aet AET -aec AEC -nh -xf CONFIG Default [extra_args] HOST PORT @FILELIST

    ``-nh`` keeps going after a failed store so every file gets a status; ``@FILELIST`` (a DCMTK
    command file) avoids argv limits. Files are split into several associations only when more
    than 128 distinct (SOP class, transfer syntax) pairs are needed. ``TCP_NODELAY=1`` is set.
    Raises :class:`subprocess.TimeoutExpired` (after killing storescu) past ``timeout`` seconds.
    """
    binary = require("storescu")
    result = StorescuResult(
        returncode=0, stdout="", stderr="", succeeded=0, warnings=0, failed=0, elapsed=0.0
    )
    failed: dict[Path, str] = {}
    # One entry per file to send (a file listed twice is sent twice), in order.
    entries: list[tuple[Path, str, tuple[str, str]]] = []
    for path in _expand(files):
        try:
            meta = read_file_meta_info(path)
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except Exception as exc:
            failed[path] = f"unreadable file meta: {exc}"
            result.failed += 1
            continue
        entries.append((path, str(path.absolute()), pair))  # storescu logs the names we pass

    batches: list[tuple[list[int], list[tuple[str, str]]]] = []
    for index, (_, _, pair) in enumerate(entries):
        if not batches or (
            pair not in batches[-1][1] and len(batches[-1][1]) >= _MAX_PRESENTATION_CONTEXTS
        ):
            batches.append(([], []))
        batch_entries, batch_pairs = batches[-1]
        batch_entries.append(index)
        if pair not in batch_pairs:
            batch_pairs.append(pair)

    status: dict[int, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        for number, (batch_entries, batch_pairs) in enumerate(batches):
            config = Path(tmp) / f"batch{number}.cfg"
            _write_scu_config(config, batch_pairs)
            file_list = Path(tmp) / f"batch{number}.args"
            file_list.write_text("".join(_quote(entries[i][1]) + "\n" for i in batch_entries))
            command = [
                binary,
                "-v",
                "-aet",
                aet,
                "-aec",
                aec,
                "-nh",
                "-xf",
                str(config),
                "Default",
                *extra_args,
                host,
                str(port),
                f"@{file_list}",
            ]
            result.commands.append(command)
            remaining = timeout - (time.monotonic() - started)
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                errors="replace",
                env=_dcmtk_env(),
                timeout=max(remaining, 1.0),
                check=False,
            )
            result.stdout += proc.stdout
            result.stderr += proc.stderr
            if proc.returncode != 0 and result.returncode == 0:
                result.returncode = proc.returncode
            _parse_storescu_log(proc.stdout + "\n" + proc.stderr, entries, batch_entries, status)
    result.elapsed = time.monotonic() - started

    for index, (path, _, _) in enumerate(entries):
        state = status.get(index)
        if state == "Success":
            result.succeeded += 1
        elif state is not None and state.startswith("Warning"):
            result.warnings += 1
        else:
            failed[path] = state or "not sent"
            result.failed += 1
    result.failed_files = failed
    return result


def _parse_storescu_log(
    log: str,
    entries: Sequence[tuple[Path, str, tuple[str, str]]],
    batch_entries: Sequence[int],
    status: dict[int, str],
) -> None:
    """Record a status per entry from one storescu run's ``-v`` log (files go in order)."""
    pending: dict[str, list[int]] = {}
    for position in batch_entries:
        pending.setdefault(entries[position][1], []).append(position)

    def take(name: str) -> int | None:
        queue = pending.get(name)
        return queue.pop(0) if queue else None

    current: int | None = None
    for line in log.splitlines():
        if m := _SENDING.match(line):
            current = take(m.group(1))
        elif (m := _RESPONSE.match(line)) and current is not None:
            status[current] = m.group(1)
        elif (m := _STORE_FAILED.match(line)) or (
            line.startswith("E: ") and (m := _ERROR_FILE.match(line))
        ):
            # "E: Store Failed, file: PATH:" or e.g. "E: No SOP Class or Instance UID in
            # file: PATH" (storescu skips that file).
            name = m.group(m.lastindex or 1)
            reason = "send failed" if m.re is _STORE_FAILED else m.group(1)
            if current is not None and entries[current][1] == name:
                failed_entry: int | None = current
            else:
                failed_entry = take(name)
            if failed_entry is not None and failed_entry not in status:
                status[failed_entry] = reason


# --------------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------------


class Orthanc(_Peer):
    """Debian's Orthanc (``/usr/sbin/Orthanc``) with a generated configuration.

    Layout under ``storage_dir``: ``storage/`` (StorageDirectory), ``index/`` (IndexDirectory,
    SQLite), ``orthanc.json`` (the configuration) and ``orthanc.log``. Command line::

        Orthanc STORAGE_DIR/orthanc.json

    Configuration: HTTP and DICOM servers on the given (or free) ports, RemoteAccessAllowed
    false and AuthenticationEnabled false (so loopback REST needs no credentials), no plugins
    (with ``dicomweb=True``: Debian's DICOMweb plugin, serving STOW-RS at ``/dicom-web/``),
    no Lua, WebDAV off, StorageCompression off (``/instances/{id}/file`` returns what was
    stored), UnknownSopClassAccepted true, all transfer syntaxes accepted (the default), and
    the durability defaults left alone (SyncStorageArea true: fsync of every stored file).
    ``modalities`` maps a name to ``(aet, host, port)`` for DicomModalities; ``extra_config``
    overrides any key (e.g. ``{"OverwriteInstances": True}``).
    """

    name = "Orthanc"
    stop_timeout = 30.0
    start_timeout = 60.0

    def __init__(
        self,
        storage_dir: Path,
        *,
        dicom_port: int | None = None,
        http_port: int | None = None,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        extra_config: Mapping[str, object] | None = None,
        dicomweb: bool = False,
    ) -> None:
        super().__init__()
        self.binary = require("Orthanc")
        # Debian's orthanc-dicomweb plugin: STOW-RS at ``dicomweb_url``.
        self.plugins = [require_orthanc_plugin(_DICOMWEB_PLUGIN)] if dicomweb else []
        self.root = Path(storage_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_path = self.root / "storage"
        self.index_path = self.root / "index"
        self.config_path = self.root / "orthanc.json"
        self.log_path = self.root / "orthanc.log"
        self._fixed = (dicom_port is not None, http_port is not None)
        self.dicom_port = dicom_port if dicom_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def config(self) -> dict[str, object]:
        """The configuration written to ``orthanc.json``."""
        config: dict[str, object] = {
            "Name": f"waystation-test-{self.aet}",
            "StorageDirectory": str(self.storage_path),
            "IndexDirectory": str(self.index_path),
            "StorageCompression": False,
            "Plugins": list(self.plugins),
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "HttpDescribeErrors": True,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {
                name: [m_aet, m_host, m_port]
                for name, (m_aet, m_host, m_port) in self.modalities.items()
            },
            "SyncStorageArea": True,
        }
        if self.plugins:
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Servers": {}}
        config.update(self.extra_config)
        return config

    def _prepare(self) -> None:
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.index_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def _ports(self) -> list[int]:
        return [self.dicom_port, self.http_port]

    def _pick_ports(self) -> bool:
        if not self._fixed[0]:
            self.dicom_port = free_port()
        if not self._fixed[1]:
            self.http_port = free_port()
        return not all(self._fixed)

    def _ready(self) -> bool:
        try:
            self.rest("GET", "/system", timeout=5)
        except (OSError, PeerError):
            return False
        return True

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (with ``dicomweb=True``)."""
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, body: object = None, *, timeout: float = 60.0) -> object:
        """Call the REST API; JSON responses are decoded, others returned as bytes.

        ``body`` may be bytes (sent as application/dicom, e.g. ``POST /instances``), a str
        (text/plain) or anything JSON-serialisable. HTTP errors raise :class:`PeerError`.
        """
        data: bytes | None
        headers: dict[str, str] = {}
        if body is None:
            data = None
        elif isinstance(body, bytes | bytearray):
            data, headers["Content-Type"] = bytes(body), "application/dicom"
        elif isinstance(body, str):
            data, headers["Content-Type"] = body.encode(), "text/plain"
        else:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method=method.upper()
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                payload: bytes = response.read()
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise PeerError(f"Orthanc {method} {path}: HTTP {exc.code}: {detail}") from None
        if "json" in content_type:
            return json.loads(payload) if payload else None
        return payload

    def instances(self) -> list[str]:
        """Orthanc IDs of all stored instances."""
        found = self.rest("GET", "/instances")
        assert isinstance(found, list)
        return [str(i) for i in found]

    def instance_count(self) -> int:
        """Number of stored instances (from /statistics, cheap for large stores)."""
        stats = self.rest("GET", "/statistics")
        assert isinstance(stats, dict)
        return int(stats["CountInstances"])

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of instance ``orthanc_id`` (GET /instances/{id}/file)."""
        data = self.rest("GET", f"/instances/{orthanc_id}/file")
        assert isinstance(data, bytes)
        return data

    def instance_tags(self, orthanc_id: str) -> dict[str, object]:
        """Simplified main tags of an instance (GET /instances/{id}/simplified-tags)."""
        tags = self.rest("GET", f"/instances/{orthanc_id}/simplified-tags")
        assert isinstance(tags, dict)
        return tags

    def lookup(self, uid: str) -> list[dict[str, object]]:
        """Resources with this DICOM UID (POST /tools/lookup)."""
        found = self.rest("POST", "/tools/lookup", uid)
        assert isinstance(found, list)
        return found

    def wait_for_instances(self, count: int, timeout: float = 60.0) -> int:
        """Wait until at least ``count`` instances are stored; return the count."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.instance_count()
            if n >= count:
                return n
            if not self.running():
                raise PeerError(f"Orthanc died:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise PeerError(f"only {n} of {count} instances in Orthanc after {timeout} s")
            time.sleep(0.2)
