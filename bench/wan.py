"""WAN benchmark: delivery through an emulated satellite/rural link, beside the raw TCP ceiling.

Per profile: plain C-STORE and the hub sender (resumable chunked uploads, lossless envelope,
parallel streams) over the same emulated link in the same run, then raw TCP (BBR) carrying
the hub's wire bytes. Then, on profile B: a STAT study behind a bulk backlog, an outage with
a kill -9 of the router in the middle (``--outage`` seconds, 600 by default) and 30 s up /
30 s down flapping (bench/wan_hub.py).

Each profile builds a fresh link (tests/support/wanlink.py: two network namespaces joined by a
userspace TUN forwarder imposing rate, one-way delay and seeded random loss on real kernel
TCP). Per profile and per sender kind:

* the router runs in namespace ``a``; DCMTK ``storescu`` (also in ``a``) stores the workload
  into it over ``a``'s loopback while the destination port in ``b`` is still closed, so every
  object is queued in the spool;
* DCMTK ``storescp`` starts in namespace ``b`` (bit-preserving, ``+B``); the clock starts when
  it listens and stops when it holds every object (inotify close-after-write);
* goodput = bytes of the DICOM files x 8 / that time, as a share of the link's rate. The
  time includes up to one retry interval of the router (retry_max 1 s) and the connection
  set-up, so short transfers are slightly pessimistic;
* then the same number of bytes goes over one raw TCP connection (CUBIC, then BBR) through
  the same link: the ceiling any sender could reach.

The objects at the destination are checked byte for byte. Also measured: the lossless wire
envelope (router/wan/envelope.py) on a CT series - ratio and MB/s on one core.

Sender kinds are functions in :data:`SENDERS` (name -> function(link, workload, workdir) ->
seconds); the hub sender registers the same way once it exists.

    make bench-wan   # .venv/bin/python -m bench.wan --out docs/benchmarks.md
    .venv/bin/python -m bench.wan --profiles A --scenarios none --out /tmp/wan.md
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import measure
from bench.delivery_peers import ArrivalWatcher, check_arrived, digests
from bench.measure import BenchError
from bench.wan_hub import (
    STREAMS,
    OutageResult,
    SendResult,
    StatResult,
    flapping,
    outage_with_kill,
    stat_behind_backlog,
)
from tests.support import dicomgen
from tests.support.peers import require
from tests.support.router_proc import RouterProcess, write_config
from tests.support.wanlink import LinkProfile, WanLink, link_unavailable_reason

SECTION = "wan"
REPO = Path(__file__).resolve().parents[1]
DEST_PORT = 11113
ROUTER_PORT = 11112


@dataclass(frozen=True)
class Profile:
    """A named link and how many CT slices (about 526 kB each) go over it."""

    key: str
    rate_bps: int
    rtt_s: float
    loss: float
    slices: int

    def link(self) -> LinkProfile:
        """The emulator's settings: half the RTT each way, seeded loss."""
        return LinkProfile(rate_bps=self.rate_bps, delay_s=self.rtt_s / 2, loss=self.loss, seed=1)

    @property
    def title(self) -> str:
        """E.g. "A: 10 Mbit/s, 200 ms RTT, 0.5% loss"."""
        return (f"{self.key}: {self.rate_bps / 1e6:g} Mbit/s, {self.rtt_s * 1000:.0f} ms RTT, "
                f"{self.loss * 100:g}% loss")  # fmt: skip


PROFILES = {
    "A": Profile("A", 10_000_000, 0.2, 0.005, 64),
    "B": Profile("B", 2_000_000, 0.5, 0.01, 32),
    "C": Profile("C", 500_000, 0.8, 0.03, 12),
}
#: The CT series every workload is cut from (about 526 kB a slice).
SERIES_SLICES = 96
SCENARIOS = ("stat", "outage", "flapping")


@dataclass(frozen=True)
class Workload:
    """The files one profile sends."""

    files: tuple[Path, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the DICOM files."""
        return sum(path.stat().st_size for path in self.files)


@dataclass
class Row:
    """One measurement: a sender kind (or raw TCP) over one profile."""

    profile: str
    sender: str
    nbytes: int  # original bytes delivered (the DICOM files)
    seconds: float
    capacity_bps: int
    wire_bytes: int = 0  # bytes on the wire, once (the envelope's for the hub)
    resent_bytes: int | None = None
    duplicates: int | None = None

    @property
    def share(self) -> float:
        """Goodput: wire bytes per second as a share of the link's rate."""
        return (self.wire_bytes or self.nbytes) * 8 / self.seconds / self.capacity_bps

    @property
    def original_multiple(self) -> float:
        """Original bytes delivered per second, as a multiple of the link's rate."""
        return self.nbytes * 8 / self.seconds / self.capacity_bps


@dataclass
class WanResults:
    """Everything one run measured."""

    command: str
    started: str
    environment: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    envelope: dict[str, float] = field(default_factory=dict)
    stat: StatResult | None = None
    outages: list[OutageResult] = field(default_factory=list)
    scenario_profile: str = "B"


def _log(message: str) -> None:
    print(f"[bench.wan {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ct_files(count: int, seed: int = 1) -> list[Path]:
    """The first ``count`` slices of a CT series cached in var/testdata."""
    name = f"ct-{SERIES_SLICES}-seed{seed}"
    root = dicomgen.cached_dataset(
        name, lambda d: dicomgen.make_ct_series(d, SERIES_SLICES, seed=seed)
    )
    return sorted(root.glob("*.dcm"))[:count]


# --- sender kinds --------------------------------------------------------------------------


def _start_storescp(link: WanLink, out: Path) -> subprocess.Popen[bytes]:
    """storescp inside namespace b on DEST_PORT (its own namespace: the wildcard bind is
    reachable only through the emulated link)."""
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.with_suffix(".log"), "ab")  # noqa: SIM115 - owned by the process
    proc = link.popen(
        "b",
        [require("storescp"), "-aet", "STORESCP", "+xa", "-pm", "+B", "+uf", "-od", str(out),
         str(DEST_PORT)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not _listening(proc.pid, DEST_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()  # never leave it behind: it would outlive the namespace's deletion
            proc.wait(10)
            raise BenchError(f"storescp did not start in the link's namespace (see {log.name})")
        time.sleep(0.02)
    return proc


def _listening(pid: int, port: int) -> bool:
    """Whether the network namespace of ``pid`` has a TCP socket listening on ``port``."""
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in table:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
            return True
    return False


def cstore_sender(link: WanLink, workload: Workload, workdir: Path) -> SendResult:
    """Plain C-STORE: the router (namespace a) delivers its queue to storescp (namespace b).
    Returns seconds from storescp listening until it holds every object."""
    destinations = f"""
[[destinations]]
name = "far"
type = "dimse"
ae_title = "STORESCP"
host = "{link.b_addr}"
port = {DEST_PORT}

[[routes]]
name = "everything"
to = ["far"]

[delivery]
retry_first = "0.1 s"
retry_max = "1 s"
response_timeout = "600 s"
"""
    config = write_config(workdir, port=ROUTER_PORT, destinations=destinations)
    router = RouterProcess(config, prefix=link.command("a", []))
    router.start()
    try:
        store = [require("storescu"), "-aec", "WAYSTATION", "-nh", "127.0.0.1", str(ROUTER_PORT)]
        sent = link.run("a", [*store, *map(str, workload.files)], timeout=300)
        if sent.returncode != 0:
            raise BenchError(f"storescu into the router failed: {sent.stderr[-800:]}")
        out = workdir / "received"
        out.mkdir()
        with ArrivalWatcher(out, len(workload.files)) as watch:
            storescp = _start_storescp(link, out)
            started = time.monotonic()
            try:
                if not watch.wait(1800):
                    raise BenchError(f"only {watch.count} of {len(workload.files)} arrived")
                seconds = watch.complete_at - started
            finally:
                storescp.terminate()
                storescp.wait(30)
        arrived = check_arrived(out, digests(workload.files))
        if not arrived.exact:
            raise BenchError(f"C-STORE over the link: {arrived} - not byte-exact")
        return SendResult(seconds, workload.nbytes, None, arrived.extra)
    finally:
        router.stop()


#: Sender kinds measured per profile: name -> function(link, workload, workdir) -> result.
#: The hub sender adds itself here ("hub": resumable chunked HTTPS to the hub in namespace b).
SENDERS: dict[str, Callable[[WanLink, Workload, Path], SendResult]] = {"C-STORE": cstore_sender}

from bench.wan_hub import hub_sender  # noqa: E402 - registers after the C-STORE sender

SENDERS[f"hub ({STREAMS} streams)"] = hub_sender


# --- the run -------------------------------------------------------------------------------


def measure_envelope(files: Sequence[Path]) -> dict[str, float]:
    """Ratio and one-core MB/s of the wire envelope on ``files`` (checked bit-exact)."""
    from router.wan.envelope import unwrap, wrap

    originals = [path.read_bytes() for path in files]
    total = sum(map(len, originals))
    t0 = time.perf_counter()
    envelopes = [wrap(data, verify=False) for data in originals]
    t1 = time.perf_counter()
    restored = [unwrap(envelope) for envelope in envelopes]
    t2 = time.perf_counter()
    if restored != originals:
        raise BenchError("the envelope did not restore the CT series exactly")
    return {
        "files": len(files),
        "mb": total / 1e6,
        "ratio": total / sum(map(len, envelopes)),
        "encode_mb_s": total / 1e6 / (t1 - t0),
        "decode_mb_s": total / 1e6 / (t2 - t1),
    }


def run(args: argparse.Namespace, argv: Sequence[str]) -> WanResults:
    """Measure every selected profile; raises BenchError if the link cannot be built."""
    reason = link_unavailable_reason()
    if reason:
        raise BenchError(reason)
    results = WanResults(
        command=shlex.join([".venv/bin/python", "-m", "bench.wan", *argv]),
        started=measure.utc_now(),
    )
    results.environment = {
        "machine": f"{measure.cpu_model()}, load {measure.load_average()}",
        "source": measure.source_revision(REPO),
        "peers": f"DCMTK {measure.dcmtk_version()} (storescu, storescp)",
    }
    with WanLink(PROFILES["A"].link()) as link:
        read = link.run("a", ["cat", "/proc/sys/net/ipv4/tcp_congestion_control"])
    results.environment["congestion control"] = (
        f"{read.stdout.strip() or 'unknown'} (the namespaces' default, so the router's C-STORE "
        "uses it); raw TCP sets CUBIC or BBR per socket"
    )
    _log("measuring the envelope on 16 CT slices")
    results.envelope = measure_envelope(ct_files(16))
    for key in args.profiles:
        profile = PROFILES[key]
        workload = Workload(tuple(ct_files(args.slices.get(key, profile.slices))))
        wire = workload.nbytes
        for name, sender in SENDERS.items():
            with tempfile.TemporaryDirectory(prefix="wan-", dir=_workroot()) as tmp, \
                    WanLink(profile.link()) as link:  # fmt: skip
                _log(f"{profile.title}: {name}, {workload.nbytes / 1e6:.1f} MB")
                sent = sender(link, workload, Path(tmp))
            row = Row(key, name, workload.nbytes, sent.seconds, profile.rate_bps,
                      sent.wire_bytes, sent.resent_bytes, sent.duplicates)  # fmt: skip
            results.rows.append(row)
            if name.startswith("hub"):
                wire = sent.wire_bytes
            _log(f"  {sent.seconds:.1f} s, goodput {row.share:.0%} of the link, "
                 f"original {row.original_multiple:.2f} x")  # fmt: skip
        with WanLink(profile.link()) as link:
            tcp = link.raw_tcp(wire, "bbr")
        row = Row(key, "raw TCP (BBR), the hub's wire bytes", wire, tcp.seconds, profile.rate_bps,
                  wire)  # fmt: skip
        results.rows.append(row)
        _log(f"  raw TCP: {tcp.seconds:.1f} s, {row.share:.0%}")
    scenario = PROFILES[results.scenario_profile]
    if "stat" in args.scenarios:
        backlog, stat = ct_files(args.backlog), ct_files(4, seed=2)
        with tempfile.TemporaryDirectory(prefix="wan-", dir=_workroot()) as tmp, \
                WanLink(scenario.link()) as link:  # fmt: skip
            _log(f"{scenario.title}: STAT study behind a backlog of {len(backlog)} slices")
            results.stat = stat_behind_backlog(link, backlog, stat, Path(tmp), scenario.rate_bps)
        _log(f"  STAT in {results.stat.seconds:.1f} s (bound {results.stat.bound:.1f} s)")
    if "outage" in args.scenarios:
        with tempfile.TemporaryDirectory(prefix="wan-", dir=_workroot()) as tmp, \
                WanLink(scenario.link()) as link:  # fmt: skip
            _log(f"{scenario.title}: {args.outage:.0f} s outage with a kill -9")
            done = outage_with_kill(link, ct_files(scenario.slices), Path(tmp), args.outage)
        results.outages.append(done)
        _log(f"  resumed after {done.resumed_after} s, lost {done.lost}, dup {done.duplicates}")
    if "flapping" in args.scenarios:
        with tempfile.TemporaryDirectory(prefix="wan-", dir=_workroot()) as tmp, \
                WanLink(scenario.link()) as link:  # fmt: skip
            _log(f"{scenario.title}: flapping 30 s up / 30 s down")
            done = flapping(link, ct_files(2 * scenario.slices), Path(tmp))
        results.outages.append(done)
        _log(f"  {done.seconds:.0f} s, lost {done.lost}, dup {done.duplicates}")
    results.environment["load at the end"] = measure.load_average()
    return results


def _workroot() -> Path:
    root = REPO / "var" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _opt(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(results: WanResults) -> str:
    """The Markdown section."""
    env = results.envelope
    lines = [
        f"<!-- bench:{SECTION}:start -->",
        "## WAN",
        "",
        f"Produced by `make bench-wan`, which ran `{results.command}` on {results.started}. "
        "One run per figure on a machine shared with other work (the load average at the "
        "start and the end is below; the emulating forwarder, both TCP ends, the router, the "
        "hub and storescp all share its 2 cores): a sketch, not a precise ranking.",
        "",
        "### Method",
        "",
        "- Link: tests/support/wanlink.py - two network namespaces joined by a userspace TUN "
        "forwarder (this kernel has no netem): rate-limited bottleneck with a drop-tail queue "
        "of one bandwidth-delay product, half the RTT of delay each way, seeded random loss "
        "each way. Real kernel TCP on both ends.",
        "- Workload: slices of a synthetic CT series (tests/support/dicomgen.py, 512x512 "
        "16-bit, ~526 kB each; lossless ratio in the envelope below, near the published 4.0 "
        "for CT). No synthetic MR series exists in the generator yet, so CT only.",
        "- C-STORE: the router (namespace a) holds the workload in its spool, then delivers "
        "it to DCMTK storescp (namespace b, `+B`) on one association; timed from storescp "
        "listening until it holds every object; checked byte for byte.",
        f"- hub: the router delivers the same spool to a Waystation hub in namespace b "
        f"(plain HTTP), {STREAMS} upload streams (the default), BBR, lossless envelope, first "
        "chunk on the create and commit on the last chunk; the hub forwards to storescp on "
        "its loopback. Timed from the hub listening until storescp holds every object; "
        "checked byte for byte. Re-sent = bytes the hub read but did not keep; duplicates = "
        "commits beyond one per object (both from the counts the hub logs at stop).",
        "- Goodput = wire bytes (the envelope's, each once) x 8 / seconds, as a share of the "
        "link's rate; for C-STORE the wire bytes are the files'. Original = the DICOM files' "
        "bytes x 8 / seconds, as a multiple of the link's rate (targets: goodput >= 90% at "
        "0% loss, >= 80% at 1-2%, >= 60% on C; original >= 2.5 x).",
        "- Raw TCP: the hub's wire bytes over one BBR connection, timed from connect to the "
        "receiver's acknowledgement of the last byte: what one bare stream reaches on this "
        "link and forwarder (its packet headers take ~3.5% of the link).",
        "",
        "### Environment",
        "",
        "|  |  |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in results.environment.items()),
        "",
        "### Goodput",
        "",
        "| profile | sender | original MB | wire MB | seconds | goodput (share of the link) "
        "| original bytes/s (x the link) | re-sent bytes | duplicates |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results.rows:
        profile = PROFILES[row.profile]
        lines.append(
            f"| {profile.title} | {row.sender} | {row.nbytes / 1e6:.1f} "
            f"| {(row.wire_bytes or row.nbytes) / 1e6:.1f} | {row.seconds:.1f} "
            f"| {row.share:.0%} | {row.original_multiple:.2f} x | {_opt(row.resent_bytes)} "
            f"| {_opt(row.duplicates)} |"
        )
    scenario = PROFILES[results.scenario_profile]
    if results.stat is not None or results.outages:
        lines += ["", f"### Interruptions and priority ({scenario.title}, hub sender)", ""]
    stat = results.stat
    if stat is not None:
        lines += [
            f"STAT study ({stat.stat_files} CT slices, {stat.stat_wire_bytes / 1e6:.2f} MB in "
            f"the envelope) stored into the router while a bulk backlog of "
            f"{stat.backlog_files} slices ({stat.backlog_bytes / 1e6:.0f} MB; the brief asks "
            "for 2 GB - not built here in reasonable time; the STAT latency depends on the "
            "chunks in flight, not on the backlog's length) was flowing; timed from its first "
            "C-STORE into the router until storescp behind the hub held all of it:",
            "",
            "| STAT latency | target: 1.2 x compressed bytes / capacity + 15 s | met |",
            "|---|---|---|",
            f"| {stat.seconds:.1f} s | {stat.bound:.1f} s "
            f"| {'yes' if stat.seconds <= stat.bound else 'no'} |",
            "",
        ]
    if results.outages:
        lines += [
            "Outage: the link goes down 8 s into the transfer; half-way through the outage the "
            "router is killed (-9) and started again; resumed = seconds from the link's "
            "return to the next upload progress the router records (retry_max 5 s).",
            "",
            "| scenario | objects | MB | streams | seconds in all | resumed after "
            "| lost | duplicate commits | re-sent bytes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for done in results.outages:
            resumed = "-" if done.resumed_after is None else f"{done.resumed_after:.1f} s"
            lines.append(
                f"| {done.kind} | {done.files} | {done.nbytes / 1e6:.1f} | {done.streams} "
                f"| {done.seconds:.0f} | {resumed} | {done.lost} | {done.duplicates} "
                f"| {done.resent_bytes:,} |"
            )
    lines += [
        "",
        "### Lossless wire envelope (router/wan/envelope.py)",
        "",
        f"{env['files']:.0f} CT slices 512x512 16-bit ({env['mb']:.1f} MB), one core, "
        "JPEG-LS planes + deflated rest, every object restored and compared byte for byte:",
        "",
        "| ratio | encode MB/s | decode MB/s |",
        "|---|---|---|",
        f"| {env['ratio']:.2f} | {env['encode_mb_s']:.0f} | {env['decode_mb_s']:.0f} |",
        "",
        f"<!-- bench:{SECTION}:end -->",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.wan",
        description="WAN benchmark: C-STORE and the hub sender through an emulated link.",
    )
    parser.add_argument("--out", type=Path, help="Markdown file whose WAN section is replaced")
    parser.add_argument(
        "--profiles",
        type=lambda text: [p.strip().upper() for p in text.split(",") if p.strip()],
        default=list(PROFILES),
        help="comma-separated subset of A,B,C (default all)",
    )
    parser.add_argument(
        "--slices",
        type=lambda text: {k.upper(): int(v) for k, v in (p.split("=") for p in text.split(","))},
        default={},
        help="override CT slices per profile, e.g. A=16,B=8",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [] if text == "none" else [p.strip() for p in text.split(",")],
        default=list(SCENARIOS),
        help="comma-separated subset of stat,outage,flapping, or none (default all)",
    )
    parser.add_argument("--outage", type=float, default=600.0, help="outage seconds (600)")
    parser.add_argument("--backlog", type=int, default=SERIES_SLICES,
                        help="CT slices in the STAT scenario's bulk backlog")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, then write the section (or print it)."""
    return measure.bench_main(
        name="bench.wan",
        title="WAN",
        section=SECTION,
        argv=argv,
        build_parser=build_parser,
        run=run,
        render=render,
        raw=lambda results: {
            "command": results.command,
            "environment": results.environment,
            "envelope": results.envelope,
            "rows": [row.__dict__ for row in results.rows],
            "stat": None if results.stat is None else results.stat.__dict__,
            "outages": [done.__dict__ for done in results.outages],
        },
        log=_log,
        stopped="the link, the router and storescp were stopped",
    )


if __name__ == "__main__":
    sys.exit(main())
