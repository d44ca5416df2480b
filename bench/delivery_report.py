"""Results of the delivery benchmark and their Markdown rendering (the "Delivery" section).

The section sits between ``<!-- bench:delivery:start -->`` and ``<!-- bench:delivery:end -->``
in docs/benchmarks.md and is written with :func:`bench.report.write_section`, which leaves
every other section alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.delivery_peers import RETRY_MAX_SECONDS
from bench.measure import MB, Spread
from bench.report import _num, _ratio, _spread, _table

SECTION = "delivery"
WAYSTATION = "waystation"
ORTHANC = "orthanc"
STORESCU = "storescu"
#: End to end: the routers compared; send rate: the senders compared.
ROUTERS = (WAYSTATION, ORTHANC)
SENDERS = (WAYSTATION, STORESCU)
NAMES = {WAYSTATION: "Waystation", ORTHANC: "Orthanc", STORESCU: "storescu"}
E2E_LABELS = {
    WAYSTATION: "Waystation (durable, encrypted spool, then C-STORE)",
    ORTHANC: "Orthanc (default durability, Lua OnStoredInstance → SendToModality)",
}
SEND_LABELS = {
    WAYSTATION: "Waystation draining its queue (decrypting from the spool)",
    STORESCU: "DCMTK storescu (files in the page cache)",
}
#: Targets from issue 3: end to end at least Orthanc's; send rate at least half storescu's.
E2E_TARGET = 1.0
SEND_TARGET = 0.5
#: The workload whose end-to-end figure the target is about.
E2E_TARGET_WORKLOAD = "ct"
#: An interval between two consecutive arrivals at least this long (s) counts as a pause.
PAUSE = 0.25


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryWorkload:
    """One set of files sent in every measurement of a workload."""

    key: str  # "ct" or "tiny"
    title: str
    files: tuple[Path, ...]
    unit: str  # "inst" or "obj": what the rate counts

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(path.stat().st_size for path in self.files)


@dataclass(frozen=True)
class EndToEnd:
    """One run: storescu -> router -> storescp, timed until the destination holds everything.

    Times are seconds from storescu's start."""

    router: str
    workload: str
    run: int
    objects: int
    bytes: int
    wall: float  # until the destination held every object
    acked: float  # until storescu exited, every object acknowledged by the router
    first: float  # until the destination held its first object
    cpu_s: float  # the router process's CPU time during ``wall``
    longest_gap: float  # longest interval between two consecutive arrivals
    pauses: int  # intervals between consecutive arrivals of at least PAUSE seconds
    paused: float  # their total

    @property
    def rate(self) -> float:
        """Objects per second, end to end."""
        return self.objects / self.wall

    @property
    def mbps(self) -> float:
        """MB (10^6 bytes) of files per second, end to end."""
        return self.bytes / self.wall / MB

    @property
    def lag(self) -> float:
        """Seconds between the router's last acknowledgement and the destination holding all."""
        return self.wall - self.acked

    @property
    def cpu_ms_per_object(self) -> float:
        """Router CPU milliseconds per object."""
        return self.cpu_s * 1000 / self.objects

    @property
    def cpu_share(self) -> float:
        """Router CPU time / wall time (cores kept busy on average)."""
        return self.cpu_s / self.wall


@dataclass(frozen=True)
class SendRate:
    """One run of a sender emptying ``objects`` into a fresh storescp.

    ``start`` is storescu's launch, or for Waystation (queue full, destination down until now)
    the launch of storescp. Times are seconds."""

    sender: str
    workload: str
    run: int
    objects: int
    bytes: int
    span: float  # first object held -> last object held
    from_start: float  # start -> last object held
    first: float  # start -> first object held
    cpu_s: float  # the sender's CPU time (storescu: the whole process; Waystation: the router)

    @property
    def rate(self) -> float:
        """Objects per second from the first arrival to the last ((n - 1) intervals)."""
        return (self.objects - 1) / self.span if self.span > 0 else float("nan")

    @property
    def mbps(self) -> float:
        """MB/s over the same interval (mean object size x (n - 1))."""
        moved = self.bytes * (self.objects - 1) / self.objects
        return moved / self.span / MB if self.span > 0 else float("nan")

    @property
    def rate_from_start(self) -> float:
        """Objects per second from the start (connection, backoff wait included)."""
        return self.objects / self.from_start

    @property
    def cpu_ms_per_object(self) -> float:
        """Sender CPU milliseconds per object."""
        return self.cpu_s * 1000 / self.objects


@dataclass
class DeliveryResults:
    """Everything one run of the delivery benchmark measured, with its context."""

    command: str
    date: str
    runs: int
    quick: bool
    environment: list[tuple[str, str]]
    workloads: list[DeliveryWorkload]
    parts: tuple[str, ...]
    e2e: list[EndToEnd] = field(default_factory=list)
    send: list[SendRate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def e2e_of(self, router: str, workload: str) -> list[EndToEnd]:
        """End-to-end samples of one router on one workload, in run order."""
        return [s for s in self.e2e if s.router == router and s.workload == workload]

    def send_of(self, sender: str, workload: str) -> list[SendRate]:
        """Send-rate samples of one sender on one workload, in run order."""
        return [s for s in self.send if s.sender == sender and s.workload == workload]

    def e2e_spread(self, router: str, workload: str, metric: str) -> Spread | None:
        """Median/min/max of an :class:`EndToEnd` attribute, None if not measured."""
        values = [float(getattr(s, metric)) for s in self.e2e_of(router, workload)]
        return Spread.of(values) if values else None

    def send_spread(self, sender: str, workload: str, metric: str) -> Spread | None:
        """Median/min/max of a :class:`SendRate` attribute, None if not measured."""
        values = [float(getattr(s, metric)) for s in self.send_of(sender, workload)]
        return Spread.of(values) if values else None

    def e2e_ratio(self, workload: str, metric: str) -> float | None:
        """Waystation's median over Orthanc's, end to end."""
        return _divide(
            self.e2e_spread(WAYSTATION, workload, metric),
            self.e2e_spread(ORTHANC, workload, metric),
        )

    def send_ratio(self, workload: str, metric: str) -> float | None:
        """Waystation's median over storescu's, send rate."""
        return _divide(
            self.send_spread(WAYSTATION, workload, metric),
            self.send_spread(STORESCU, workload, metric),
        )


def _divide(mine: Spread | None, theirs: Spread | None) -> float | None:
    if mine is None or theirs is None or theirs.median == 0:
        return None
    return mine.median / theirs.median


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _median(spread: Spread | None) -> str:
    return "-" if spread is None else _num(spread.median)


def _signed(spread: Spread | None) -> str:
    """A median that may be negative, without printing "-0.00" for a hair below zero."""
    if spread is None:
        return "-"
    return _num(0.0 if abs(spread.median) < 0.005 else spread.median)


def _verdict(ratio: float | None, target: float) -> str:
    if ratio is None:
        return f"≥ {target:.1f}x: not measured"
    return f"≥ {target:.1f}x: " + ("met" if ratio >= target else "**missed**")


def _summary_table(results: DeliveryResults) -> list[str]:
    header = ["figure", "workload", "unit", "Waystation", "peer", "Waystation ÷ peer", "target"]
    rows: list[list[str]] = []
    for workload in results.workloads:
        if not results.e2e_of(WAYSTATION, workload.key) and not results.e2e_of(
            ORTHANC, workload.key
        ):
            continue
        for metric, unit in (("rate", f"{workload.unit}/s"), ("mbps", "MB/s")):
            ratio = results.e2e_ratio(workload.key, metric)
            target = (
                _verdict(ratio, E2E_TARGET)
                if workload.key == E2E_TARGET_WORKLOAD
                else "none (informative)"
            )
            rows.append(
                [
                    "end to end, peer: Orthanc store-and-forward",
                    workload.title,
                    unit,
                    _median(results.e2e_spread(WAYSTATION, workload.key, metric)),
                    _median(results.e2e_spread(ORTHANC, workload.key, metric)),
                    _ratio(ratio),
                    target,
                ]
            )
    for workload in results.workloads:
        if not results.send_of(WAYSTATION, workload.key) and not results.send_of(
            STORESCU, workload.key
        ):
            continue
        for metric, unit in (("rate", f"{workload.unit}/s"), ("mbps", "MB/s")):
            ratio = results.send_ratio(workload.key, metric)
            rows.append(
                [
                    "send rate, peer: DCMTK storescu",
                    workload.title,
                    unit,
                    _median(results.send_spread(WAYSTATION, workload.key, metric)),
                    _median(results.send_spread(STORESCU, workload.key, metric)),
                    _ratio(ratio),
                    _verdict(ratio, SEND_TARGET),
                ]
            )
    return _table(header, rows)


def _e2e_table(results: DeliveryResults, workload: DeliveryWorkload) -> list[str]:
    header = [
        "router",
        "s until the destination held all",
        f"{workload.unit}/s",
        "MB/s",
        "s per run",
        "last ack at s",
        "first held at s",
        "all held s after last ack",
        f"pauses ≥ {PAUSE} s between arrivals: count / total s / longest s",
        "router CPU ms/object",
        "router CPU / wall",
        "Waystation ÷ this",
    ]
    rows = []
    for router in ROUTERS:
        samples = results.e2e_of(router, workload.key)
        if not samples:
            continue

        def spread(metric: str, router: str = router) -> Spread | None:
            return results.e2e_spread(router, workload.key, metric)

        ratio = None if router == WAYSTATION else results.e2e_ratio(workload.key, "rate")
        count = spread("pauses")
        pauses = (
            f"{'-' if count is None else f'{count.median:g}'} / {_median(spread('paused'))} / "
            f"{_median(spread('longest_gap'))}"
        )
        rows.append(
            [
                E2E_LABELS[router],
                _spread(spread("wall")),
                _spread(spread("rate")),
                _spread(spread("mbps")),
                ", ".join(f"{s.wall:.2f}" for s in samples),
                _median(spread("acked")),
                _median(spread("first")),
                _signed(spread("lag")),
                pauses,
                _median(spread("cpu_ms_per_object")),
                _median(spread("cpu_share")),
                _ratio(ratio),
            ]
        )
    return _table(header, rows)


def _send_table(results: DeliveryResults, workload: DeliveryWorkload) -> list[str]:
    header = [
        "sender",
        f"{workload.unit}/s (first → last held)",
        "MB/s",
        "s first → last per run",
        "s from start to first held",
        "s from start to all held",
        f"{workload.unit}/s from start",
        "sender CPU ms/object",
        "Waystation ÷ this",
    ]
    rows = []
    for sender in SENDERS:
        samples = results.send_of(sender, workload.key)
        if not samples:
            continue

        def spread(metric: str, sender: str = sender) -> Spread | None:
            return results.send_spread(sender, workload.key, metric)

        ratio = None if sender == WAYSTATION else results.send_ratio(workload.key, "rate")
        rows.append(
            [
                SEND_LABELS[sender],
                _spread(spread("rate")),
                _spread(spread("mbps")),
                ", ".join(f"{s.span:.2f}" for s in samples),
                _median(spread("first")),
                _median(spread("from_start")),
                _spread(spread("rate_from_start")),
                _median(spread("cpu_ms_per_object")),
                _ratio(ratio),
            ]
        )
    return _table(header, rows)


# --------------------------------------------------------------------------------------------
# Where it falls short (generated from the numbers)
# --------------------------------------------------------------------------------------------


def _idle_poll_seconds() -> float | None:
    """The delivery worker's idle poll interval, if the router still has one by that name."""
    try:
        from router.delivery import worker
    except ImportError:
        return None
    value = getattr(worker, "_IDLE_POLL_SECONDS", None)
    return float(value) if isinstance(value, int | float) else None


def _e2e_points(results: DeliveryResults, workload: DeliveryWorkload) -> list[str]:
    """Judgement and decomposition of one workload's end-to-end figures."""
    points: list[str] = []
    key = workload.key
    name = workload.title
    mine = results.e2e_spread(WAYSTATION, key, "rate")
    theirs = results.e2e_spread(ORTHANC, key, "rate")
    ratio = results.e2e_ratio(key, "rate")
    if mine is not None and theirs is not None and ratio is not None:
        head = (
            f"End to end, {name}: Waystation {_num(mine.median)} {workload.unit}/s vs "
            f"Orthanc's {_num(theirs.median)} ({ratio:.2f}x)"
        )
        if key == E2E_TARGET_WORKLOAD:
            verdict = "met" if ratio >= E2E_TARGET else "**missed**"
            head += f": target (at least Orthanc's) {verdict}."
        else:
            head += " (no target)."
        points.append(head)

    def median(router: str, metric: str) -> float | None:
        spread = results.e2e_spread(router, key, metric)
        return None if spread is None else spread.median

    wall, acked = median(WAYSTATION, "wall"), median(WAYSTATION, "acked")
    first, paused = median(WAYSTATION, "first"), median(WAYSTATION, "paused")
    if wall is None or acked is None or first is None or paused is None:
        return points
    lag = wall - acked
    text = (
        f"Where Waystation's {_num(wall)} s go ({name}): {_num(acked)} s until the last "
        f"object was acknowledged, then {_num(max(lag, 0.0))} s until the destination held "
        "everything"
    )
    their_wall, their_acked = median(ORTHANC, "wall"), median(ORTHANC, "acked")
    if their_wall is not None and their_acked is not None:
        text += (
            f" (Orthanc: {_num(their_acked)} s, then {_num(max(their_wall - their_acked, 0.0))} s)"
        )
        if their_acked > 0 and acked > 1.1 * their_acked:
            text += (
                f". Receiving alone (while delivering) took {acked / their_acked:.1f}x "
                "Orthanc's time"
            )
    text += (
        ". The larger share is receiving."
        if acked >= lag
        else ". The larger share is delivery trailing behind receiving."
    )
    points.append(text)
    idle = first + paused
    their_first = median(ORTHANC, "first")
    if wall > 0 and idle >= 0.2 * wall:
        pauses = median(WAYSTATION, "pauses") or 0
        text = (
            f"The destination sat idle for {_num(idle)} s of Waystation's {_num(wall)} s "
            f"({name}): the first object arrived {_num(first)} s after storescu started"
        )
        if their_first is not None:
            text += f" (Orthanc: {_num(their_first)} s)"
        if pauses:
            text += (
                f", and arrivals then paused {pauses:.0f} times for at least {PAUSE} s "
                f"({_num(paused)} s in all): delivery runs in bursts instead of following "
                "ingest"
            )
        else:
            text += ": delivery starts late, then keeps up"
        poll = _idle_poll_seconds()
        if poll is not None:
            text += (
                f", consistent with the delivery worker polling an empty queue every "
                f"{_num(poll)} s rather than being woken by ingest"
            )
        points.append(text + ".")
    drain = results.send_spread(WAYSTATION, key, "span")
    share = median(WAYSTATION, "cpu_share")
    if drain is not None:
        serial = acked + drain.median
        if serial > 0 and wall >= 0.8 * serial:
            busy = f"; the router process kept {share:.2f} cores busy" if share else ""
            points.append(
                f"Ingest and delivery barely overlap ({name}): receiving ({_num(acked)} s) "
                f"plus draining the same objects alone ({_num(drain.median)} s) is "
                f"{_num(serial)} s against {_num(wall)} s end to end{busy}."
            )
    return points


def _send_points(results: DeliveryResults, workload: DeliveryWorkload) -> list[str]:
    """Judgement of one workload's send rate, with the CPU per object behind it."""
    points: list[str] = []
    key = workload.key
    mine = results.send_spread(WAYSTATION, key, "rate")
    theirs = results.send_spread(STORESCU, key, "rate")
    ratio = results.send_ratio(key, "rate")
    if mine is None or theirs is None or ratio is None:
        return points
    verdict = "met" if ratio >= SEND_TARGET else "**missed**"
    text = (
        f"Send rate, {workload.title}: Waystation {_num(mine.median)} {workload.unit}/s vs "
        f"storescu's {_num(theirs.median)} ({ratio:.2f}x): target (at least "
        f"{SEND_TARGET:.1f}x) {verdict}."
    )
    mine_cpu = results.send_spread(WAYSTATION, key, "cpu_ms_per_object")
    their_cpu = results.send_spread(STORESCU, key, "cpu_ms_per_object")
    if mine_cpu is not None and their_cpu is not None and their_cpu.median > 0:
        per_object = 1000 / mine.median if mine.median > 0 else float("nan")
        busy = mine_cpu.median / per_object
        text += (
            f" Waystation's process used {_num(mine_cpu.median)} ms of CPU per object "
            f"(storescu: {_num(their_cpu.median)} ms, {mine_cpu.median / their_cpu.median:.1f}x)"
            f" of the {_num(per_object)} ms each object took ({100 * busy:.0f}%)"
        )
        if busy >= 0.7:
            text += (
                ": the sender is CPU-bound, so CPU per object (pynetdicom's encoding, "
                "decryption, journal updates) is what to cut."
            )
        else:
            text += (
                ": it also waits, for round trips (one C-STORE at a time on one association) "
                "or for its own threads."
            )
    points.append(text)
    first = results.send_spread(WAYSTATION, key, "first")
    if first is not None:
        points.append(
            f"After the destination came back, Waystation's first object arrived "
            f"{_num(first.median)} s after storescp was launched ({workload.title}): the wait "
            f"for the next retry of a down destination, here at most {RETRY_MAX_SECONDS:.0f} s "
            "(retry_max); with the default retry_max of 300 s a destination that comes back "
            "can wait up to 5 minutes before its queue moves."
        )
    return points


def shortfalls(results: DeliveryResults) -> list[str]:
    """Bullet points judging the numbers against the issue's targets (generated, not edited)."""
    points: list[str] = []
    for workload in results.workloads:
        points += _e2e_points(results, workload)
    retry_noted = False
    for workload in results.workloads:
        for point in _send_points(results, workload):
            if point.startswith("After the destination came back"):
                if retry_noted:
                    continue
                retry_noted = True
            points.append(point)
    if not points:
        points.append("Not enough was measured to judge the targets.")
    return points


# --------------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------------


def render(results: DeliveryResults) -> str:
    """The whole "Delivery" section (between its markers) as Markdown."""
    per = f"median of {results.runs} runs (min-max)" if results.runs > 1 else "1 run"
    lines = [
        f"<!-- bench:{SECTION}:start -->",
        "## Delivery",
        "",
        f"Produced by {results.command} on {results.date}. Figures: {per}. "
        "Absolute numbers drift a lot between runs on a shared 2-core machine: compare "
        "within this run, not with other runs.",
    ]
    if results.quick:
        lines += ["", "**Quick development run (`--quick`): small workloads, not for decisions.**"]
    lines += ["", "### Environment", ""]
    lines += _table(["", ""], [[k, v] for k, v in results.environment])
    lines += ["", "### Method", ""]
    lines += [f"- {note}" for note in results.notes]
    lines += ["", "### Summary (medians)", ""]
    lines += _summary_table(results)
    for workload in results.workloads:
        if results.e2e_of(WAYSTATION, workload.key) or results.e2e_of(ORTHANC, workload.key):
            lines += ["", f"### End to end, storescu → router → storescp: {workload.title}", ""]
            lines += _e2e_table(results, workload)
    for workload in results.workloads:
        if results.send_of(WAYSTATION, workload.key) or results.send_of(STORESCU, workload.key):
            lines += ["", f"### Send rate into storescp: {workload.title}", ""]
            lines += _send_table(results, workload)
    lines += ["", "### Where it falls short", ""]
    lines += [f"- {point}" for point in shortfalls(results)]
    lines += ["", f"<!-- bench:{SECTION}:end -->"]
    return "\n".join(lines) + "\n"


def sample_rows(samples: Sequence[EndToEnd | SendRate]) -> list[dict[str, object]]:
    """Samples with their derived figures, for the JSON dump."""
    rows: list[dict[str, object]] = []
    for sample in samples:
        row: dict[str, object] = asdict(sample)
        row["rate"] = sample.rate
        row["mbps"] = sample.mbps
        rows.append(row)
    return rows
