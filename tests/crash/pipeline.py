"""The whole pipeline as real processes, for the soak and the storage-fault runs.

Modality senders (pynetdicom, several associations) -> router (spool and keys on CrashFS A)
-> local PACS (DCMTK storescp), and -> flapping link (FaultProxy) -> hub (`waystation hub`,
spool on CrashFS B) -> provider's PACS (another storescp).

Every object a sender has acknowledged is recorded in a :class:`Ledger` under a test-side
index (never patient data), with the SHA-256 of the data set bytes it sent and the cycle it was
acknowledged in. :class:`PacsTally` reads what each PACS received (then deletes the files, so a
long soak does not fill the disk): SOP Instance UID and the SHA-256 of the data set bytes as they
came off the wire (storescp ``+B``), so "arrived" means "arrived bit-exact".
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import encode

from tests.support.crashfs import CrashFS, mounted
from tests.support.faultproxy import FaultProxy
from tests.support.hub import hub_destination_toml
from tests.support.peers import Storescp
from tests.support.router_proc import (
    RouterProcess,
    destination_toml,
    fast_retry_toml,
    free_port,
    route_toml,
    waystation,
    write_config,
)
from tests.support.sender import echo_ok

UNIT = "CLINIC1"
# Alarms that mean torn state after a crash (router/spool/recovery.py, router/assembly.py).
TORN_STATE_ALARMS = ("journal-damaged", "objects-quarantined", "blobs-set-aside")


@dataclass(frozen=True)
class Acked:
    """One acknowledged object: test-side index, the cycle (= the cut that ended it), digest."""

    index: int
    cycle: int
    uid: str  # for matching only; never printed
    digest: str


class Ledger:
    """What the senders were told: acknowledged objects by index, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, Acked] = {}  # by SOP Instance UID
        self.sent = 0
        self.cycle = 0
        self.statuses: Counter[int] = Counter()

    def next_index(self) -> int:
        with self.lock:
            self.sent += 1
            return self.sent

    def record(self, index: int, uid: str, digest: str, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 0:
                self.acked[uid] = Acked(index, self.cycle, uid, digest)


class Senders:
    """Modality traffic from ``associations`` concurrent pynetdicom associations: fresh UIDs
    from a few templates of mixed sizes, each acknowledgement recorded in the ledger. They
    keep trying to associate while the router is down, until ``stop``."""

    def __init__(
        self, port: int, templates: list[Path], ledger: Ledger, seed: int, associations: int = 3
    ) -> None:
        self.port = port
        self.templates = [dcmread(p) for p in templates]
        self.ledger = ledger
        self.random = random.Random(seed)
        self.associations = associations
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.stop.clear()
        self.threads = [threading.Thread(target=self._run) for _ in range(self.associations)]
        for thread in self.threads:
            thread.start()

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _next(self) -> tuple[Dataset, bytes]:
        with self.ledger.lock:
            template = self.random.choice(self.templates)
        ds = copy.deepcopy(template)  # Dataset.copy() would share elements across threads
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        # The bytes pynetdicom puts on the wire for this data set (send_c_store encodes so).
        data = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian)
        assert data is not None
        return ds, data

    def _run(self) -> None:
        ae = AE(ae_title="SOAKSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        for template in self.templates:
            ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
        while not self.stop.is_set():
            assoc = ae.associate("127.0.0.1", self.port, ae_title="WAYSTATION")
            if not assoc.is_established:
                self.stop.wait(0.05)  # the router is down: try again shortly
                continue
            while assoc.is_established and not self.stop.is_set():
                ds, data = self._next()
                index = self.ledger.next_index()
                try:
                    status = assoc.send_c_store(ds)
                except Exception:  # the router died under us
                    break
                if status and "Status" in status:
                    # Recorded only once the router answered.
                    self.ledger.record(
                        index, str(ds.SOPInstanceUID), hashlib.sha256(data).hexdigest(),
                        int(status.Status),
                    )  # fmt: skip
                self.stop.wait(0.01)
            if assoc.is_established:
                assoc.release()


def send_one(port: int, senders: Senders) -> tuple[int, int, str, str]:
    """One object over its own association: (index, status, uid, digest)."""
    ds, data = senders._next()
    index = senders.ledger.next_index()
    ae = AE(ae_title="SOAKONE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="WAYSTATION")
    assert assoc.is_established, "the router refused an association"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else -1
    uid, digest = str(ds.SOPInstanceUID), hashlib.sha256(data).hexdigest()
    senders.ledger.record(index, uid, digest, code)
    return index, code, uid, digest


class PacsTally:
    """Copies received at one PACS, by SOP Instance UID, with their data set digests."""

    def __init__(self, pacs: Storescp) -> None:
        self.pacs = pacs
        self.copies: Counter[str] = Counter()
        self.digests: defaultdict[str, set[str]] = defaultdict(set)

    def scan(self, settled: float = 2.0) -> None:
        """Tally and delete the files storescp finished (untouched for ``settled`` s)."""
        from tests.support.dicomgen import dataset_sha256

        now = time.time()
        for path in self.pacs.files():
            if now - path.stat().st_mtime < settled or path.name.endswith(".log"):
                continue
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            self.digests[uid].add(dataset_sha256(path))
            self.copies[uid] += 1
            path.unlink()

    def has(self, acked: Acked) -> bool:
        return acked.digest in self.digests.get(acked.uid, ())

    def duplicates(self) -> int:
        return sum(count - 1 for count in self.copies.values() if count > 1)


def hub_ok(port: int, token: str) -> bool:
    """Whether the hub answers an authenticated request now."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_until(check: Callable[[], bool], timeout: float) -> float:
    """Poll ``check()`` every 20 ms; the seconds it took (raises on timeout)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not ready within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


class Pipeline:
    """The running rig. ``restart_router``/``restart_hub`` return the seconds until the
    process accepts work again (an association with C-ECHO; an authenticated HTTP answer),
    counted from the moment the process is started."""

    def __init__(
        self,
        base: Path,
        router_fs: CrashFS,
        hub_fs: CrashFS,
        stack: ExitStack,
        router_env: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.router_env = router_env
        self.router_fs, self.hub_fs = router_fs, hub_fs
        self.local = stack.enter_context(Storescp(base / "local-pacs", aet="LOCALPACS"))
        self.provider = stack.enter_context(Storescp(base / "provider-pacs", aet="PROVIDER"))
        self.hub_port = free_port()
        self.hub_config = self._write_hub_config()
        enrolled = waystation("hub", "--config", str(self.hub_config), "enroll", UNIT)
        assert enrolled.returncode == 0, enrolled.stderr
        self.token = enrolled.stdout.strip()
        self.link = stack.enter_context(FaultProxy(self.hub_port))
        self.port = free_port()
        self.router_config = self._write_router_config()
        self.router: RouterProcess | None = None
        self.hub: RouterProcess | None = None
        self.local_tally = PacsTally(self.local)
        self.provider_tally = PacsTally(self.provider)
        self._log_offsets = {"router": 0, "hub": 0}

    def _write_hub_config(self) -> Path:
        directory = self.base / "hub"
        directory.mkdir()
        spool = self.hub_fs.mountpoint
        text = f"""
[spool]
path = "{spool / "spool"}"
min_free = "16 MiB"
key_file = "{spool / "keys" / "hub.keys"}"

[hub]
listen = "127.0.0.1:{self.hub_port}"
insecure_plain_http = true
request_timeout = "5 s"

[logging]
level = "info"
{destination_toml("provider", "PROVIDER", self.provider.port)}
{route_toml("all", "provider")}
{fast_retry_toml()}
"""
        path = directory / "hub.toml"
        path.write_text(text)
        return path

    def _write_router_config(self) -> Path:
        directory = self.base / "unit"
        directory.mkdir()
        token_file = directory / "unit.token"
        token_file.write_text(self.token + "\n")
        hub = hub_destination_toml(
            self.link.port, token_file, min_chunk='"16 KiB"', max_chunk='"256 KiB"',
            timeout='"5 s"',
        )  # fmt: skip
        destinations = destination_toml("local", "LOCALPACS", self.local.port) + hub
        config = write_config(
            directory,
            port=self.port,
            spool=self.router_fs.mountpoint / "spool",
            destinations=destinations,
            # The control socket off the crash file system (a cut would take its entry).
            extra=route_toml("all", "local", "hub")
            + fast_retry_toml()
            + f'\n[control]\nsocket = "{directory / "control.sock"}"\n',
        )
        text = config.read_text().replace(
            str(directory / "keys"), str(self.router_fs.mountpoint / "keys")
        )
        # Objects over 64 KiB take the blob-file path (fsync, rename, directory fsync).
        config.write_text(text.replace("[spool]\n", '[spool]\ninline_limit = "64 KiB"\n'))
        return config

    @property
    def router_journal(self) -> Path:
        return self.router_fs.mountpoint / "spool" / "journal.sqlite"

    @property
    def hub_journal(self) -> Path:
        return self.hub_fs.mountpoint / "spool" / "journal.sqlite"

    def restart_router(self) -> float:
        _retire(self.router)
        started = time.monotonic()
        self.router = RouterProcess(self.router_config, env=self.router_env).start()
        wait_until(lambda: echo_ok(self.port), 60)
        return time.monotonic() - started

    def restart_hub(self) -> float:
        _retire(self.hub)
        started = time.monotonic()
        self.hub = RouterProcess(
            self.hub_config, command=("hub",), ready=b"waystation hub ready",
            log=self.hub_config.parent / "hub.log",
        ).start()  # fmt: skip
        wait_until(lambda: hub_ok(self.hub_port, self.token), 60)
        return time.monotonic() - started

    def new_alarms(self, which: str) -> list[str]:
        """ALARM lines the router or hub logged since the last call."""
        process = self.router if which == "router" else self.hub
        if process is None:
            return []
        text = process.read_log()
        fresh, self._log_offsets[which] = text[self._log_offsets[which] :], len(text)
        return [line.split("ALARM ", 1)[1] for line in fresh.splitlines() if "ALARM " in line]

    def stop(self) -> None:
        for process in (self.router, self.hub):
            if process is not None:
                process.stop()


def _retire(process: RouterProcess | None) -> None:
    """Close the pipe of a process that is gone (a long soak starts thousands)."""
    if process is not None and process.proc is not None and process.proc.stdout is not None:
        process.kill9()
        process.proc.stdout.close()


@contextmanager
def pipeline(base: Path, router_env: dict[str, str] | None = None) -> Iterator[Pipeline]:
    """Mount both crash file systems, start both PACS, the link, the hub and the router
    (with ``router_env`` added to its environment)."""
    with ExitStack() as stack:
        router_fs = stack.enter_context(mounted(base / "router-fs"))
        hub_fs = stack.enter_context(mounted(base / "hub-fs"))
        rig = Pipeline(base, router_fs, hub_fs, stack, router_env)
        try:
            rig.restart_hub()
            rig.restart_router()
            yield rig
        finally:
            for process in (rig.router, rig.hub):
                if process is not None:
                    process.kill9()


def journal_ok(path: Path) -> bool:
    """SQLite's full integrity check of a journal (its process stopped)."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def hub_commit_keys(path: Path) -> tuple[int, int]:
    """(rows, distinct (sop, digest) keys) of the hub's commit table."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT count(*) FROM hub_commits").fetchone()[0]
        keys = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT sop_tag, digest FROM hub_commits)"
        ).fetchone()[0]
        return int(rows), int(keys)
