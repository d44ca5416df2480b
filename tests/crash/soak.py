"""The whole-pipeline soak: random power cuts and kill -9s of the router and the hub while
modalities send and the router delivers to its PACS and (through a flapping link) to the hub,
then a final recovery and a check of RELIABILITY.md's six promises.

One cycle: senders run for a random moment, then one cut falls - a power cut of the router
(SIGKILL, then everything unsynced on its file system is discarded), a kill -9 of the router,
a power cut or a kill -9 of the hub - and the victim is restarted; the time until it accepts
work again is measured. Halfway through, a full disk and an fsync EIO hit the router's file
system while everything runs (promises 3 and 6).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.crash.pipeline import (
    TORN_STATE_ALARMS,
    Acked,
    Ledger,
    Pipeline,
    Senders,
    hub_commit_keys,
    journal_ok,
    send_one,
)

KINDS = {"router-power": 0.55, "router-kill9": 0.2, "hub-power": 0.15, "hub-kill9": 0.1}
_BATCH = 8  # router/delivery/worker.py: deliveries claimed at once per association
_OUT_OF_RESOURCES = 0xA700
_FAULT_ALARMS = {"enospc": "spool-full", "fsync-eio": "storage-fault", "full": "spool-full"}


@dataclass
class SoakFigures:
    """Everything a soak found; ``report`` prints it, ``failures`` says what broke."""

    cuts: list[str] = field(default_factory=list)  # kind of cut number i+1
    router_accept: list[float] = field(default_factory=list)
    hub_accept: list[float] = field(default_factory=list)
    acknowledged: int = 0
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    fault_failures: list[str] = field(default_factory=list)
    duplicates_local: int = 0
    duplicates_provider: int = 0
    journals_ok: bool = False
    hub_commits: tuple[int, int] = (0, 0)
    seconds: float = 0.0
    lost_at: Counter[str] = field(default_factory=Counter)  # by destination
    backlog: int = 0  # acknowledged objects not yet at both PACS when the cutting stopped
    drain_seconds: float = 0.0

    def count(self, *prefixes: str) -> int:
        return sum(1 for kind in self.cuts if kind.startswith(prefixes))

    @property
    def local_bound(self) -> int:
        """Duplicates allowed at the local PACS: one batch in flight per router crash or
        storage fault episode."""
        return _BATCH * (self.count("router") + len(self.faults))

    @property
    def provider_bound(self) -> int:
        """Duplicates allowed at the provider's PACS: one batch per hub crash (a router crash
        repeats an upload, which the hub answers "already committed")."""
        return _BATCH * self.count("hub")

    def failures(self) -> list[str]:
        problems = [*self.lost, *self.corrupt, *self.torn, *self.fault_failures]
        if self.duplicates_local > self.local_bound:
            problems.append(f"{self.duplicates_local} duplicates at the local PACS > "
                            f"{self.local_bound} in flight")  # fmt: skip
        if self.duplicates_provider > self.provider_bound:
            problems.append(f"{self.duplicates_provider} duplicates at the provider's PACS > "
                            f"{self.provider_bound} in flight")  # fmt: skip
        if not self.journals_ok:
            problems.append("a journal failed SQLite's integrity check at the end")
        rows, keys = self.hub_commits
        if rows != keys:
            problems.append(f"the hub committed {rows} rows for {keys} (SOP, SHA-256) keys")
        return problems

    def report(self) -> str:
        def spread(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"max {max(values):.2f} s, p50 {statistics.median(values):.2f} s"

        kinds = ", ".join(f"{Counter(self.cuts)[k]} {k}" for k in KINDS)
        refused = self.statuses.get(_OUT_OF_RESOURCES, 0)
        others = {hex(s): n for s, n in self.statuses.items() if s not in (0, _OUT_OF_RESOURCES)}
        lines = [
            f"whole-pipeline soak: {len(self.cuts)} cuts ({kinds}) in {self.seconds / 60:.1f} min",
            f"  sent {self.sent}, acknowledged {self.acknowledged}, refused 0xA700 {refused}, "
            f"other statuses {others}",
            f"  1 acknowledged = durable: lost {len(self.lost)} (not bit-exact at both PACS after "
            f"the final recovery: {self.lost_at['local PACS']} missing at the local PACS, "
            f"{self.lost_at['provider PACS']} at the provider's); backlog when the cutting "
            f"stopped {self.backlog}, drained in {self.drain_seconds:.0f} s",
            f"  2 no torn state: corrupt {len(self.corrupt)}, torn-state alarms "
            f"{len(self.torn)}, journals pass integrity_check: {self.journals_ok}",
            "  3+6 storage faults: " + ("; ".join(self.faults) or "not run"),
            f"  4 duplicates: local PACS {self.duplicates_local} (bound {self.local_bound}), "
            f"provider PACS {self.duplicates_provider} (bound {self.provider_bound}); hub "
            f"commits {self.hub_commits[0]} rows for {self.hub_commits[1]} keys",
            f"  5 accepting again: router {spread(self.router_accept)} "
            f"({len(self.router_accept)} restarts); hub {spread(self.hub_accept)} "
            f"({len(self.hub_accept)} restarts)",
        ]
        return "\n".join(lines)


def schedule(cuts: int, rng: random.Random, weights: dict[str, float]) -> list[str]:
    """``cuts`` kinds drawn by ``weights``; every kind at least once when there are enough."""
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=cuts)
    if cuts >= len(weights):
        kinds[: len(weights)] = rng.sample(list(weights), len(weights))
    return kinds


def run_soak(
    rig: Pipeline,
    templates: list[Path],
    *,
    cuts: int,
    minutes: float = 0.0,
    seed: int = 11,
    max_traffic: float = 1.0,
    drain_timeout: float = 120.0,
    weights: dict[str, float] = KINDS,
    storage_faults: bool = True,
) -> SoakFigures:
    """Up to ``cuts`` cuts (fewer if ``minutes`` > 0 runs out), the fault episodes, the final
    recovery and the checks."""
    rng = random.Random(seed)
    figures = SoakFigures()
    ledger = Ledger()
    senders = Senders(rig.port, templates, ledger, seed)
    started = time.monotonic()
    deadline = started + minutes * 60 if minutes > 0 else float("inf")
    rig.link.flap(3.0, 1.0, cycles=10**6)
    kinds = schedule(cuts, rng, weights)
    # With a time limit the storage faults come early, so they surely run.
    faults_at = 2 if minutes > 0 else max(2, len(kinds) // 2)
    for number, kind in enumerate(kinds, 1):
        if time.monotonic() > deadline:
            break
        if number == faults_at and storage_faults:
            for fault in ("enospc", "fsync-eio", "full"):
                storage_fault_episode(rig, senders, fault, figures)
        ledger.cycle = number
        senders.start()
        time.sleep(rng.uniform(0.05, max_traffic))
        victim = rig.router if kind.startswith("router") else rig.hub
        assert victim is not None
        victim.kill9()
        if kind.endswith("power"):
            (rig.router_fs if kind.startswith("router") else rig.hub_fs).cut_power()
        senders.halt()
        figures.cuts.append(kind)
        if kind.startswith("router"):
            figures.router_accept.append(rig.restart_router())
        else:
            figures.hub_accept.append(rig.restart_hub())
        torn(rig, figures, f"after cut {number} ({kind})")
        if number % 10 == 0:
            rig.local_tally.scan()
            rig.provider_tally.scan()
    ledger.cycle = len(figures.cuts) + 1
    rig.link.stop_flap()
    rig.link.normal()
    figures.backlog = sum(
        1 for a in ledger.acked.values()
        if not (rig.local_tally.has(a) and rig.provider_tally.has(a))
    )  # fmt: skip
    figures.drain_seconds = drain(rig, ledger, drain_timeout)
    rig.stop()
    torn(rig, figures, "at the final stop")
    figures.seconds = time.monotonic() - started
    check(rig, ledger, figures)
    return figures


def storage_fault_episode(
    rig: Pipeline, senders: Senders, fault: str, figures: SoakFigures, hold: float = 0.0
) -> None:
    """While the router delivers to both destinations: ``enospc`` (every write fails),
    ``fsync-eio`` (every sync fails) or ``full`` (free space below min_free) on its file
    system, for ``hold`` seconds more after three objects are sent. Each of the three must be
    refused with 0xA700 and the alarm raised; once the fault clears the router must
    acknowledge again within 60 s."""
    rig.new_alarms("router")
    if fault == "full":
        rig.router_fs.set_capacity(rig.router_fs.stats().used_bytes + 8 * 1024 * 1024)
    else:
        rig.router_fs.inject(fault)  # type: ignore[arg-type]
    try:
        codes = [send_one(rig.port, senders)[1] for _ in range(3)]
        # Active alarms as the console shows them (an alarm still active from an earlier
        # episode is not logged again).
        assert rig.router is not None
        active = {alarm.code for alarm in rig.router.client().alarms()}
        time.sleep(hold)  # the delivery workers meet the fault too
    finally:
        rig.router_fs.inject("none")
        rig.router_fs.set_capacity(64 * 1024**3)
    alarms = rig.new_alarms("router")
    expected = _FAULT_ALARMS[fault]
    started = time.monotonic()
    back = False
    while time.monotonic() - started < 60 and not back:
        back = send_one(rig.port, senders)[1] == 0
    took = time.monotonic() - started
    refused = sum(1 for c in codes if c == _OUT_OF_RESOURCES)
    raised = expected in active or any(a.startswith(expected) for a in alarms)
    figures.faults.append(
        f"{fault}: {refused}/3 refused 0xA700, ALARM {expected} {'raised' if raised else 'MISSING'}"
        f", acknowledging again after {took:.1f} s"
    )
    if refused != 3 or not raised or not back:
        figures.fault_failures.append(
            f"storage fault {fault}: statuses {[hex(c) for c in codes]}, alarms {alarms}, "
            f"service back: {back}"
        )
    for alarm in alarms:
        if alarm.startswith(TORN_STATE_ALARMS):
            figures.torn.append(f"during storage fault {fault}: router ALARM {alarm}")


def torn(rig: Pipeline, figures: SoakFigures, when: str) -> None:
    for which in ("router", "hub"):
        for alarm in rig.new_alarms(which):
            if alarm.startswith(TORN_STATE_ALARMS):
                figures.torn.append(f"{when}: {which} ALARM {alarm}")


def drain(rig: Pipeline, ledger: Ledger, timeout: float, limit: float = 7200.0) -> float:
    """Wait until every acknowledged object arrived at both PACS; give up after ``timeout``
    seconds without a new arrival (or ``limit`` in all). Returns the seconds it took: a long
    soak leaves a backlog on the slower hub path, and draining it is part of recovery."""
    started = last_progress = time.monotonic()
    arrived = -1
    while time.monotonic() - last_progress < timeout and time.monotonic() - started < limit:
        rig.local_tally.scan(settled=1.0)
        rig.provider_tally.scan(settled=1.0)
        acked = list(ledger.acked.values())
        missing = sum(
            1 for a in acked if not (rig.local_tally.has(a) and rig.provider_tally.has(a))
        )
        if missing == 0:
            time.sleep(3)  # late duplicates still count
            rig.local_tally.scan(settled=0.0)
            rig.provider_tally.scan(settled=0.0)
            break
        now_arrived = sum(rig.local_tally.copies.values()) + sum(rig.provider_tally.copies.values())
        if now_arrived != arrived:
            arrived, last_progress = now_arrived, time.monotonic()
        time.sleep(1.0)
    return time.monotonic() - started


def _where(a: Acked, figures: SoakFigures) -> str:
    if a.cycle == 0:
        return "acknowledged before any cut"
    if a.cycle <= len(figures.cuts):
        return f"acknowledged before cut {a.cycle} ({figures.cuts[a.cycle - 1]})"
    return "acknowledged after the last cut"


def check(rig: Pipeline, ledger: Ledger, figures: SoakFigures) -> None:
    figures.acknowledged = len(ledger.acked)
    figures.sent = ledger.sent
    figures.statuses = ledger.statuses
    for a in sorted(ledger.acked.values(), key=lambda a: a.index):
        for name, tally in (("local PACS", rig.local_tally), ("provider PACS", rig.provider_tally)):
            if not tally.has(a):
                figures.lost_at[name] += 1
                figures.lost.append(f"object #{a.index} ({_where(a, figures)}) never arrived "
                                    f"bit-exact at the {name}")  # fmt: skip
            if tally.digests.get(a.uid, set()) - {a.digest}:
                figures.corrupt.append(f"object #{a.index} ({_where(a, figures)}) arrived with "
                                       f"other bytes at the {name}")  # fmt: skip
    figures.duplicates_local = rig.local_tally.duplicates()
    figures.duplicates_provider = rig.provider_tally.duplicates()
    figures.journals_ok = journal_ok(rig.router_journal) and journal_ok(rig.hub_journal)
    figures.hub_commits = hub_commit_keys(rig.hub_journal)
