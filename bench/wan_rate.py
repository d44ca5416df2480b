"""Rate scenarios of the WAN benchmark (bench/wan.py), hub sender on the emulated link:

* :func:`budget_overshoot` - a small daily byte budget on the hub destination; the bytes the
  hub read (every chunk body, re-sends included) once the router holds back, against the
  budget (target: overshoot <= 1 chunk);
* :func:`calendar_cap` - a weekly-calendar cap below the link's rate; the rate the objects
  arrive at, against the cap;
* :func:`polite_study` - polite mode on and off beside the clinic's own traffic
  (bench/wan_traffic.py): an interactive probe's p95 round trip against the idle link's
  (target: +<= 100 ms) and a competing bulk TCP flow's rate against its rate alone
  (target: keeps >= 70%).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.delivery_peers import ArrivalWatcher
from bench.measure import BenchError
from bench.wan_hub import HubRig
from tests.support.router_proc import REPO

if TYPE_CHECKING:
    from tests.support.wanlink import WanLink

ECHO_PORT = 7070
#: The rate table's default burst (router/config/rate.py): how far ahead of the cap it may get.
BURST_BYTES = 256 * 1024
BULK_PORT = 5202


def _wire_sizes(files: list[Path]) -> list[int]:
    from router.wan.envelope import wrap

    return [len(wrap(path.read_bytes(), verify=False)) for path in files]


def _wait_quiet(watch: ArrivalWatcher, quiet_s: float, limit_s: float) -> None:
    """Until at least one object arrived and none arrived for ``quiet_s`` seconds."""
    deadline = time.monotonic() + limit_s
    seen, since = watch.count, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if watch.count != seen:
            seen, since = watch.count, time.monotonic()
        elif seen and time.monotonic() - since >= quiet_s:
            return
    raise BenchError(f"the transfer did not settle within {limit_s:.0f} s ({seen} arrived)")


# --- budget --------------------------------------------------------------------------------


@dataclass
class BudgetResult:
    """A daily budget reached on the link."""

    budget: int  # bytes
    wire_sent: int  # chunk bytes the hub read in all (re-sends and cut-off chunks included)
    chunk: int  # one chunk: the largest object's envelope (each is below the minimum chunk)
    objects_sent: int
    objects_queued: int

    @property
    def overshoot(self) -> int:
        """Bytes beyond the budget (negative: it stopped short of it)."""
        return self.wire_sent - self.budget

    @property
    def met(self) -> bool:
        """Overshoot within one chunk."""
        return self.overshoot <= self.chunk


def budget_overshoot(link: WanLink, files: list[Path], workdir: Path, budget: int) -> BudgetResult:
    """Queue ``files`` (more than ``budget`` in wire bytes) for a hub destination with a
    daily budget of ``budget`` bytes; let it run until the router holds back."""
    sizes = _wire_sizes(files)
    if sum(sizes) <= budget:
        raise BenchError("the budget scenario needs more wire bytes than the budget")
    rig = HubRig(link, workdir, rate=f"daily_budget = {budget}\nstat_exempt = false")
    try:
        rig.start_router()
        rig.store(files)
        with ArrivalWatcher(rig.out, len(files)) as watch:
            rig.start_far_side()
            _wait_quiet(watch, quiet_s=20, limit_s=600)
            arrived = watch.count
    finally:
        counts = rig.stop()
    return BudgetResult(budget, counts.body_bytes, max(sizes), arrived, len(files))


# --- calendar cap --------------------------------------------------------------------------


@dataclass
class CapResult:
    """A calendar window's cap on the link."""

    link_bps: int
    cap_bps: int
    wire_bytes: int  # between the first and the last arrival
    seconds: float
    allowance: int  # the gate's documented slack: its burst plus one chunk

    @property
    def measured_bps(self) -> float:
        """Wire bits per second between the first and the last arrival."""
        return self.wire_bytes * 8 / self.seconds

    @property
    def excess(self) -> int:
        """Bytes beyond cap x time."""
        return int(self.wire_bytes - self.cap_bps / 8 * self.seconds)

    @property
    def met(self) -> bool:
        """At most cap x time plus the token bucket's burst and one chunk."""
        return self.excess <= self.allowance


def calendar_cap(link: WanLink, files: list[Path], workdir: Path, link_bps: int, cap_bps: int
                 ) -> CapResult:  # fmt: skip
    """A default cap above the link and a calendar window over the whole week at
    ``cap_bps``; every object sent; the rate between the first and the last arrival."""
    rate = (f'cap = "{10 * link_bps} bit/s"\n'
            f'[[destinations.rate.calendar]]\ndays = "every day"\nhours = "00:00-23:59"\n'
            f'cap = "{cap_bps} bit/s"')  # fmt: skip
    sizes = _wire_sizes(files)
    rig = HubRig(link, workdir, rate=rate)
    try:
        rig.start_router()
        rig.store(files)
        with ArrivalWatcher(rig.out, len(files)) as watch:
            rig.start_far_side()
            if not watch.wait(1800):
                raise BenchError(f"only {watch.count} of {len(files)} arrived under the cap")
            times = sorted(watch.arrivals().values())
    finally:
        rig.stop()
    rig.check_exact(files, "calendar cap")
    # The first object's bytes went before the clock (first arrival) started.
    mean = sum(sizes) / len(sizes)
    allowance = BURST_BYTES + max(sizes)
    return CapResult(link_bps, cap_bps, int(mean * (len(files) - 1)), times[-1] - times[0],
                     allowance)  # fmt: skip


# --- polite mode ---------------------------------------------------------------------------


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _traffic(link: WanLink, side: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return link.popen(  # type: ignore[return-value]
        side, [sys.executable, "-m", "bench.wan_traffic", *args], stdout=subprocess.PIPE,
        text=True, cwd=REPO, **kwargs,
    )  # fmt: skip


def probe(link: WanLink, seconds: float, interval: float = 0.2) -> list[float]:
    """Round trips of a small request every ``interval`` from a to an echo server in b."""
    server = _traffic(link, "b", "echo", link.b_addr, str(ECHO_PORT))
    try:
        assert server.stdout is not None
        server.stdout.readline()
        done = link.run("a", [sys.executable, "-m", "bench.wan_traffic", "ping", link.b_addr,
                              str(ECHO_PORT), str(seconds), str(interval)],
                        timeout=seconds + 120, cwd=REPO)  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"the interactive probe failed: {done.stderr[-400:]}")
        rtts: list[float] = json.loads(done.stdout)
        return rtts
    finally:
        server.kill()
        server.wait(10)


def bulk_flow(link: WanLink, seconds: float, congestion: str = "cubic", skip: float = 8.0
              ) -> float:  # fmt: skip
    """Bits per second of one bulk TCP upload from a to b over ``seconds`` (the first
    ``skip`` seconds, slow start, left out)."""
    sink = _traffic(link, "b", "sink", link.b_addr, str(BULK_PORT), str(skip))
    try:
        assert sink.stdout is not None
        sink.stdout.readline()
        done = link.run("a", [sys.executable, "-m", "bench.wan_traffic", "source", link.b_addr,
                              str(BULK_PORT), str(seconds), congestion],
                        timeout=seconds + 120, cwd=REPO)  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"the competing flow failed: {done.stderr[-400:]}")
        out, _ = sink.communicate(timeout=120)
        got = json.loads(out.strip().splitlines()[-1])
        if not got["seconds"]:
            raise BenchError("the competing flow carried nothing after its slow start")
        return float(got["bytes"] * 8 / got["seconds"])
    finally:
        if sink.poll() is None:
            sink.kill()
        sink.wait(10)


@dataclass
class PoliteRow:
    """The hub sender beside the clinic's traffic, polite mode on or off."""

    polite: bool
    probe_p95: float
    bulk_bps: float
    hub_bps_probe: float  # the hub's wire rate while the probe ran
    hub_bps_bulk: float  # ... while the competing flow ran


@dataclass
class PoliteResult:
    """Polite mode on a clean link."""

    link_bps: int
    rtt_s: float
    idle_p95: float
    bulk_alone_bps: float
    rows: list[PoliteRow] = field(default_factory=list)

    def rise(self, row: PoliteRow) -> float:
        """The probe's p95 above the idle link's, seconds."""
        return row.probe_p95 - self.idle_p95

    def kept(self, row: PoliteRow) -> float:
        """The competing flow's share of its rate alone."""
        return row.bulk_bps / self.bulk_alone_bps

    def met(self, row: PoliteRow) -> bool:
        """+<= 100 ms on the probe's p95 and >= 70% kept by the competing flow."""
        return self.rise(row) <= 0.1 and self.kept(row) >= 0.7


#: Seconds the hub sender runs before the polite scenario measures beside it (see polite_study).
POLITE_SETTLE_S = 45.0


def polite_study(
    link: WanLink,
    files: list[Path],
    workdir: Path,
    link_bps: int,
    rtt_s: float,
    *,
    probe_s: float = 30.0,
    bulk_s: float = 40.0,
    settle_s: float = POLITE_SETTLE_S,
) -> PoliteResult:
    """The probe and the competing flow alone, then each beside the hub sender (``files``
    queued, enough to keep it busy) with polite mode on and off."""
    result = PoliteResult(link_bps, rtt_s, _p95(probe(link, probe_s)), bulk_flow(link, bulk_s))
    mean_wire = sum(_wire_sizes(files[:8])) / min(8, len(files))
    for polite in (True, False):
        rate = "polite = true" if polite else ""
        sub = workdir / ("polite-on" if polite else "polite-off")
        sub.mkdir()
        rig = HubRig(link, sub, rate=rate)
        try:
            rig.start_router()
            rig.store(files)
            with ArrivalWatcher(rig.out, len(files)) as watch:
                rig.start_far_side()
                deadline = time.monotonic() + 120
                while watch.count < 1 and time.monotonic() < deadline:
                    time.sleep(0.1)
                # The hub settles into its rate: polite mode starts at its minimum rate and
                # needs about half a minute on this link to reach the link's rate and find
                # where the queue overruns (measured); before that the probe would measure
                # the start, not the steady state.
                time.sleep(settle_s)
                before, t0 = watch.count, time.monotonic()
                rtts = probe(link, probe_s)
                middle, t1 = watch.count, time.monotonic()
                bulk = bulk_flow(link, bulk_s)
                after, t2 = watch.count, time.monotonic()
                if after >= len(files):
                    raise BenchError("the hub's backlog ran out during the polite scenario")
        finally:
            rig.stop()
        result.rows.append(
            PoliteRow(
                polite,
                _p95(rtts),
                bulk,
                (middle - before) * mean_wire * 8 / (t1 - t0),
                (after - middle) * mean_wire * 8 / (t2 - t1),
            )
        )
    return result
