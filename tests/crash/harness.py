"""The crash-trial loop shared by the kill -9 and power-cut tests.

One trial: start the router (its recovery runs), check that every object acknowledged so far
is held and verifies, send new objects from two concurrent associations, SIGKILL the router at
a random moment, and (for power cuts) discard everything the file system was not made to
keep. Acknowledged means "the sender saw status 0x0000", recorded by the sender itself.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from router.config import load_config
from router.spool.spool import Spool
from router.spool.verify import check_object
from tests.support.crashfs import CrashFS
from tests.support.router_proc import RouterProcess


@dataclass
class CrashFigures:
    """What a run of trials found."""

    trials: int = 0
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    restart_seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the test log."""
        worst = max(self.restart_seconds, default=0.0)
        return (
            f"{self.trials} crashes, {self.acknowledged} acknowledged objects, "
            f"{len(self.lost)} lost, {len(self.corrupt)} corrupt, "
            f"slowest restart to ready {worst:.2f} s"
        )


class Traffic:
    """Modality traffic: new objects (fresh UIDs) from a few templates, acknowledged ones
    recorded. Runs until the router dies or ``stop`` is set."""

    def __init__(self, port: int, templates: list[Path], seed: int) -> None:
        self.port = port
        self.templates = [dcmread(p) for p in templates]
        self.random = random.Random(seed)
        self.acked: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _next(self) -> Dataset:
        with self.lock:
            template = self.random.choice(self.templates)
        # A deep copy: Dataset.copy() shares elements with the template across threads.
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def _sender(self) -> None:
        ae = AE(ae_title="CRASHSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 1.5
        for template in self.templates:
            ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
        while not self.stop.is_set():
            assoc = ae.associate("127.0.0.1", self.port, ae_title="WAYSTATION")
            if not assoc.is_established:
                return
            while assoc.is_established and not self.stop.is_set():
                ds = self._next()
                try:
                    status = assoc.send_c_store(ds)
                except RuntimeError:  # the router died between the check and the send
                    break
                if status and status.get("Status") == 0:
                    # Recorded only after the router answered success.
                    with self.lock:
                        self.acked.add(str(ds.SOPInstanceUID))
            if assoc.is_established:
                assoc.release()

    def run(self, seconds: float, kill: RouterProcess) -> None:
        """Send from two associations; SIGKILL the router after ``seconds``."""
        threads = [threading.Thread(target=self._sender) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        kill.kill9()
        self.stop.set()
        for t in threads:
            t.join(timeout=60)
        self.stop.clear()


def check_held(
    config_path: Path, expected: set[str], verified: set[str]
) -> tuple[list[str], list[str]]:
    """Return (lost, corrupt): acknowledged UIDs not held, and held objects that fail verify.

    Objects already verified in an earlier trial are only checked for presence."""
    spool = Spool(load_config(config_path).spool)
    try:
        held = {}
        for obj in spool.held_objects():
            held[spool.metadata(obj)["sop_instance_uid"]] = obj
        lost = sorted(expected - held.keys())
        corrupt = []
        for uid in sorted(expected & held.keys() - verified):
            if check_object(spool, held[uid]) is not None:
                corrupt.append(uid)
            else:
                verified.add(uid)
        return lost, corrupt
    finally:
        spool.close()


def run_trials(
    config: Path,
    port: int,
    templates: list[Path],
    *,
    trials: int,
    seed: int,
    crashfs: CrashFS | None,
    env: dict[str, str] | None = None,
    max_seconds: float = 1.5,
) -> CrashFigures:
    """Run ``trials`` crash trials; with ``crashfs`` each crash is also a power cut."""
    rng = random.Random(seed)
    figures = CrashFigures()
    traffic = Traffic(port, templates, seed)
    verified: set[str] = set()
    log = config.parent / "router.log"
    for trial in range(trials + 1):
        started = time.monotonic()
        router = RouterProcess(config, env=env, log=log).start()
        figures.restart_seconds.append(time.monotonic() - started)
        # Check what the restarted router holds after its recovery, with the router stopped
        # (a clean stop changes nothing held), then start it again for the next crash.
        router.stop()
        lost, corrupt = check_held(config, set(traffic.acked), verified)
        figures.lost.extend(u for u in lost if u not in figures.lost)
        figures.corrupt.extend(u for u in corrupt if u not in figures.corrupt)
        if trial == trials:
            break
        router = RouterProcess(config, env=env, log=log).start()
        traffic.run(rng.uniform(0.05, max_seconds), router)
        if crashfs is not None:
            crashfs.cut_power()
        figures.trials += 1
    figures.acknowledged = len(traffic.acked)
    return figures
