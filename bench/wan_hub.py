"""The hub sender in the WAN benchmark (bench/wan.py): resumable chunked HTTP uploads to a
Waystation hub in namespace ``b``, which forwards to storescp beside it.

Like the C-STORE sender: the router (namespace ``a``) queues the workload while the far
side is down; the clock starts when the router's first connection to the listening hub
leaves it and stops when storescp (behind the hub, on ``b``'s loopback) holds every
object, checked byte for byte. Reported: the wire bytes the hub accepted (the envelope's)
and the original bytes, each per second as a share of the link's rate; bytes re-sent (the
hub's body bytes minus what it accepted) and commits beyond one per object (duplicates),
from the counts the hub logs when it stops.

Also here, the scenarios on one profile: a STAT study behind a backlog, an outage with a
kill -9 of the router in the middle of it, and a flapping link. Plain HTTP on the emulated
link: TLS costs one more round trip per connection and a few percent of CPU, not goodput;
the hub's TLS is exercised by tests/integration.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.delivery_peers import ArrivalWatcher, check_arrived, digests, routing_toml
from bench.measure import BenchError
from tests.support.peers import require
from tests.support.router_proc import REPO, RouterProcess, delivery_states, write_config

if TYPE_CHECKING:
    from bench.wan import Workload
    from tests.support.wanlink import WanLink

HUB_PORT = 18443
PACS_PORT = 11114
ROUTER_PORT = 11112
#: Upload streams per hub destination in the benchmark (the destination's default).
STREAMS = 8


@dataclass
class SendResult:
    """One transfer: seconds, bytes on the wire (accepted by the far side), re-sent bytes and
    duplicate commits (None where the sender kind cannot tell)."""

    seconds: float
    wire_bytes: int
    resent_bytes: int | None = None
    duplicates: int | None = None


@dataclass
class HubCounts:
    """What the hub logged at stop (router/hub/server.py, "hub stats: ...")."""

    body_bytes: int = 0
    accepted_bytes: int = 0
    commits: int = 0
    already_committed: int = 0

    @property
    def resent(self) -> int:
        """Bytes that crossed the link to the hub but were not kept (re-sent or cut off)."""
        return self.body_bytes - self.accepted_bytes


def hub_config_text(directory: Path, listen: str, pacs_port: int) -> str:
    """A benchmark hub's configuration: spool and keys in ``directory``, plain HTTP on
    ``listen``, everything forwarded to a storescp on the loopback at ``pacs_port``."""
    return f"""
[unit]
ae_title = "HUB"
[spool]
path = "{directory / "spool"}"
key_file = "{directory / "hub.keys"}"
min_free = "16 MiB"
[hub]
listen = "{listen}"
insecure_plain_http = true
[logging]
level = "info"
""" + routing_toml(pacs_port)


#: TCP states as /proc/net/tcp writes them (include/net/tcp_states.h).
SYN_RECV, LISTEN = "03", "0A"


def tcp_sockets(pid: int) -> Iterator[tuple[int, str]]:
    """(local port, state) of every TCP socket in the network namespace of ``pid`` (its
    own /proc/PID/net); nothing once the process is gone."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3:
                yield int(parts[1].rsplit(":", 1)[1], 16), parts[3]


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN in the network namespace of ``pid``."""
    return {port for port, state in tcp_sockets(pid) if state == LISTEN}


class FirstConnection:
    """When the sender's first TCP connection to ``port`` left it, seen from the far side.

    A thread reads the far side's socket table (``/proc/PID/net/tcp`` of a process in its
    namespace) every few milliseconds until a socket on ``port`` is in any state but LISTEN.
    A connection in SYN_RECV has just had its SYN arrive: it left the sender ``one_way_s``
    earlier, which is when raw TCP's clock (timed from ``connect()``) would have started.
    SYN_RECV lasts a round trip, and the watch starts within milliseconds of the far side
    listening (before that a SYN is refused), so it sees that state unless the link has no
    delay to speak of; a connection first seen established is timed from the watch's start.
    """

    def __init__(self, pid: int, port: int, one_way_s: float) -> None:
        self.pid, self.port, self.one_way_s = pid, port, one_way_s
        self.watching_since = time.monotonic()
        self._left_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="first-connection", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            state = next((st for port, st in tcp_sockets(self.pid)
                          if port == self.port and st != LISTEN), None)  # fmt: skip
            if state is not None:
                syn_just_arrived = state == SYN_RECV
                self._left_at = now - self.one_way_s if syn_just_arrived else self.watching_since
                return
            self._stop.wait(0.003)

    def left_at(self) -> float:
        """Monotonic time the first connection left the sender (the watch's start if none
        was seen)."""
        self._stop.set()
        self._thread.join(5)
        return self.watching_since if self._left_at is None else self._left_at


def _wait_listening(proc: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while port not in listening_ports(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{what} did not start in the link's namespace (see {log})")
        time.sleep(0.02)


@dataclass
class HubRig:
    """A router in ``a`` with a hub destination; the hub and storescp behind it in ``b``."""

    link: WanLink
    workdir: Path
    streams: int = STREAMS
    routes: str = '[[routes]]\nname = "everything"\nto = ["hub"]\n'
    retry_max: str = "1 s"
    #: Lines of the hub destination's ``[destinations.rate]`` table (cap, budgets, polite).
    rate: str = ""
    router: RouterProcess | None = None
    hub: subprocess.Popen[bytes] | None = None
    scp: subprocess.Popen[bytes] | None = None
    out: Path = field(init=False)
    hub_log: Path = field(init=False)
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        hub_dir = self.workdir / "hub"
        hub_dir.mkdir()
        self.hub_log = hub_dir / "hub.log"
        self.hub_config = hub_dir / "hub.toml"
        self.hub_config.write_text(
            hub_config_text(hub_dir, f"{self.link.b_addr}:{HUB_PORT}", PACS_PORT)
        )
        enrolled = subprocess.run(
            [*self._hub_cli(), "enroll", "BENCH"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if enrolled.returncode != 0:
            raise BenchError(f"hub enroll failed: {enrolled.stderr[-400:]}")
        token = self.workdir / "hub.token"
        token.write_text(enrolled.stdout)
        destinations = f"""
[[destinations]]
name = "hub"
type = "hub"
url = "http://{self.link.b_addr}:{HUB_PORT}"
insecure_plain_http = true
token_file = "{token}"
streams = {self.streams}
{"[destinations.rate]" if self.rate else ""}
{self.rate}

{self.routes}

[delivery]
retry_first = "0.1 s"
retry_max = "{self.retry_max}"
"""
        unit_dir = self.workdir / "unit"
        unit_dir.mkdir()
        self.config = write_config(unit_dir, port=ROUTER_PORT, destinations=destinations)
        self.out = self.workdir / "received"
        self.out.mkdir()

    def _hub_cli(self) -> list[str]:
        return [sys.executable, "-m", "router.cli", "hub", "--config", str(self.hub_config)]

    def start_router(self) -> None:
        """Start (or restart) the router in namespace a."""
        self.router = RouterProcess(self.config, prefix=self.link.command("a", []))
        self.router.start()

    def kill_router(self) -> None:
        """kill -9 the router."""
        assert self.router is not None
        self.router.kill9()

    def store(self, files: list[Path], calling_ae: str = "STORESCU") -> None:
        """C-STORE ``files`` into the router over a's loopback."""
        store = [require("storescu"), "-aet", calling_ae, "-aec", "WAYSTATION", "-nh",
                 "127.0.0.1", str(ROUTER_PORT)]  # fmt: skip
        sent = self.link.run("a", [*store, *map(str, files)], timeout=900)
        if sent.returncode != 0:
            raise BenchError(f"storescu into the router failed: {sent.stderr[-800:]}")

    def start_far_side(self) -> float:
        """Start storescp, then the hub; returns when the hub listens (monotonic)."""
        scp_log = self.out.with_suffix(".log")
        with open(scp_log, "ab") as log:
            self.scp = self.link.popen(
                "b",
                [require("storescp"), "-aet", "STORESCP", "+xa", "-pm", "+B", "+uf",
                 "-od", str(self.out), str(PACS_PORT)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_listening(self.scp, PACS_PORT, "storescp", scp_log)
        with open(self.hub_log, "ab") as log:
            self.hub = self.link.popen(
                "b", self._hub_cli(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        _wait_listening(self.hub, HUB_PORT, "the hub", self.hub_log)
        return time.monotonic()

    def hub_uploads_changed_after(self, moment: float) -> bool:
        """Whether the router recorded upload progress after wall-clock ``moment``."""
        import sqlite3

        journal = self.config.parent / "spool" / "journal.sqlite"
        try:
            with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute("SELECT max(updated_at) FROM hub_uploads").fetchone()
        except sqlite3.Error:
            return False
        return bool(row and row[0] and row[0] > moment)

    def stop(self) -> HubCounts:
        """Stop everything; the hub's counts from its log."""
        if self.router is not None:
            self.router.stop()
        for proc in (self.hub, self.scp):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        # A hub that never started logged nothing: leave the error that stopped it to show.
        return hub_counts(self.hub_log) if self.hub is not None else HubCounts()

    def check_exact(self, files: list[Path], what: str) -> None:
        """Every file arrived at storescp byte for byte, nothing extra."""
        arrived = check_arrived(self.out, digests(files))
        if not arrived.exact:
            raise BenchError(f"{what}: {arrived} - not byte-exact")


def hub_counts(log: Path) -> HubCounts:
    """The last "hub stats" line of the hub's log."""
    found = re.findall(
        r"hub stats: body_bytes=(\d+) accepted_bytes=(\d+) commits=(\d+) already_committed=(\d+)",
        log.read_text(errors="replace") if log.exists() else "",
    )
    if not found:
        raise BenchError(f"the hub logged no stats at stop (see {log})")
    return HubCounts(*map(int, found[-1]))


def hub_sender(
    link: WanLink, workload: Workload, workdir: Path, streams: int = STREAMS
) -> SendResult:
    """Seconds from the router's first connection to the hub (see :class:`FirstConnection`)
    until storescp behind the hub holds every object."""
    rig = HubRig(link, workdir, streams=streams)
    files = list(workload.files)
    try:
        rig.start_router()
        rig.store(files)
        with ArrivalWatcher(rig.out, len(files)) as watch:
            rig.start_far_side()
            assert rig.hub is not None
            first = FirstConnection(rig.hub.pid, HUB_PORT, link.profile.delay_s)
            if not watch.wait(3600):
                raise BenchError(f"only {watch.count} of {len(files)} arrived")
            seconds = watch.complete_at - first.left_at()
    finally:
        counts = rig.stop()
    rig.check_exact(files, "hub over the link")
    return SendResult(seconds, counts.accepted_bytes, counts.resent, counts.commits - len(files))


# --- scenarios -----------------------------------------------------------------------------


@dataclass
class StatResult:
    """A STAT study sent while a bulk backlog is being delivered."""

    backlog_files: int
    backlog_bytes: int
    stat_files: int
    stat_wire_bytes: int  # the STAT study's enveloped size
    seconds: float
    bound: float  # 1.2 x stat_wire_bytes / capacity + 15 s


def stat_behind_backlog(
    link: WanLink,
    backlog: list[Path],
    stat: list[Path],
    workdir: Path,
    capacity_bps: int,
    *,
    drain: bool = True,
) -> StatResult:
    """Queue ``backlog`` as bulk, let it flow, then store ``stat`` as STAT; seconds from the
    STAT study's first C-STORE into the router until storescp holds all of it. With
    ``drain`` the backlog is then delivered too and everything checked byte for byte;
    without (a backlog far larger than the link carries in a run), only the STAT study is
    checked and the rest stays queued."""
    from router.wan.envelope import wrap

    routes = (
        '[[routes]]\nname = "stat"\nto = ["hub"]\npriority = "stat"\n'
        '[routes.when]\ncalling_ae = ["STATSCU"]\n\n'
        '[[routes]]\nname = "bulk"\nto = ["hub"]\npriority = "bulk"\n'
        '[routes.when]\ncalling_ae = ["BULKSCU"]\n'
    )
    rig = HubRig(link, workdir, routes=routes)
    stat_wire = sum(len(wrap(path.read_bytes(), verify=False)) for path in stat)
    try:
        rig.start_router()
        store_parallel(rig, backlog, "BULKSCU")
        # Every backlog object is in the router's journal, queued for the hub (storescu's exit
        # status alone does not prove each C-STORE was accepted).
        queued = sum(delivery_states(rig.config, "hub").values())
        if queued != len(backlog):
            raise BenchError(f"the router holds {queued} of {len(backlog)} backlog objects")
        with ArrivalWatcher(rig.out, len(backlog) + len(stat)) as watch:
            rig.start_far_side()
            # The backlog flows on every stream before the STAT study comes in.
            deadline = time.monotonic() + 300
            while watch.count < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            uids = {_sop_uid(path) for path in stat}
            started = time.monotonic()
            rig.store(stat, "STATSCU")
            # storescp names files by its own UIDs: read each arrival's SOP Instance UID.
            seen: dict[str, str] = {}
            while not uids <= set(seen.values()):
                if time.monotonic() - started > 1800:
                    raise BenchError("the STAT study did not arrive")
                for name in watch.arrivals().keys() - seen.keys():
                    seen[name] = _sop_uid(rig.out / name)
                time.sleep(0.05)
            arrived = watch.arrivals()
            done = max(arrived[name] for name, uid in seen.items() if uid in uids)
            seconds = done - started
            if drain and not watch.wait(3600):
                raise BenchError(f"only {watch.count} of {len(backlog) + len(stat)} arrived")
    finally:
        rig.stop()
    if drain:
        rig.check_exact([*backlog, *stat], "STAT behind a backlog")
    elif check_arrived(rig.out, digests(stat)).missing:
        raise BenchError("STAT behind a backlog: the STAT study did not arrive byte for byte")
    return StatResult(
        len(backlog),
        sum(p.stat().st_size for p in backlog),
        len(stat),
        stat_wire,
        seconds,
        1.2 * stat_wire * 8 / capacity_bps + 15,
    )


def store_parallel(rig: HubRig, files: list[Path], calling_ae: str, workers: int = 2) -> None:
    """C-STORE ``files`` into the router on ``workers`` associations at once (a big
    backlog goes in faster; the router ingests each association on its own thread)."""
    if len(files) < 100:
        rig.store(files, calling_ae)
        return
    errors: list[BaseException] = []

    def one(part: list[Path]) -> None:
        try:
            rig.store(part, calling_ae)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(files[i::workers],)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@dataclass
class OutageResult:
    """An outage (with or without a kill -9 of the router in the middle) or flapping."""

    kind: str
    files: int
    nbytes: int
    seconds: float  # from the far side listening until every object arrived
    resumed_after: float | None  # seconds from the link's return to the next progress
    lost: int
    duplicates: int
    resent_bytes: int
    streams: int


def outage_with_kill(
    link: WanLink, files: list[Path], workdir: Path, outage_s: float, *, after_s: float = 8.0
) -> OutageResult:
    """The transfer runs ``after_s`` seconds, the link goes down for ``outage_s``, the router
    is killed (-9) half-way through and started again; then the link comes back."""
    rig = HubRig(link, workdir, retry_max="5 s")
    resumed: float | None = None
    try:
        rig.start_router()
        rig.store(files)
        with ArrivalWatcher(rig.out, len(files)) as watch:
            started = rig.start_far_side()
            time.sleep(after_s)
            link.down()
            time.sleep(outage_s / 2)
            rig.kill_router()
            rig.start_router()
            time.sleep(outage_s / 2)
            came_back = time.time()
            back_mono = time.monotonic()
            link.up()
            while resumed is None and time.monotonic() - back_mono < 300:
                if rig.hub_uploads_changed_after(came_back) or watch.count >= len(files):
                    resumed = time.monotonic() - back_mono
                time.sleep(0.1)
            complete = watch.wait(3600)
            seconds = (watch.complete_at if complete else time.monotonic()) - started
    finally:
        counts = rig.stop()
    lost = check_arrived(rig.out, digests(files)).missing
    return OutageResult(
        f"{outage_s:.0f} s outage, kill -9 mid-outage",
        len(files),
        sum(p.stat().st_size for p in files),
        seconds,
        resumed,
        max(0, lost),
        counts.commits - len(files) + max(0, lost),
        counts.resent,
        rig.streams,
    )


def flapping(
    link: WanLink, files: list[Path], workdir: Path, up_s: float = 30.0, down_s: float = 30.0
) -> OutageResult:
    """The link alternates ``up_s`` up and ``down_s`` down until every object arrived."""
    rig = HubRig(link, workdir, retry_max="5 s")
    stop = threading.Event()

    def flap() -> None:
        while not stop.wait(up_s):
            link.down()
            if stop.wait(down_s):
                break
            link.up()
        link.up()

    flapper = threading.Thread(target=flap, daemon=True)
    try:
        rig.start_router()
        rig.store(files)
        with ArrivalWatcher(rig.out, len(files)) as watch:
            started = rig.start_far_side()
            flapper.start()
            complete = watch.wait(3600)
            seconds = (watch.complete_at if complete else time.monotonic()) - started
    finally:
        stop.set()
        flapper.join(120)
        counts = rig.stop()
    lost = check_arrived(rig.out, digests(files)).missing
    return OutageResult(
        f"flapping {up_s:.0f} s up / {down_s:.0f} s down",
        len(files),
        sum(p.stat().st_size for p in files),
        seconds,
        None,
        max(0, lost),
        counts.commits - len(files) + max(0, lost),
        counts.resent,
        rig.streams,
    )
