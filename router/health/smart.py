"""Storage wear of SATA and NVMe drives from smartmontools' ``smartctl --json``.

:func:`parse` and :func:`judge` are pure (JSON in, facts and a Check out); :func:`read` runs
smartctl when it is installed and answers None ("unknown") whenever it cannot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.health.checks import Check, State

# ATA attributes whose normalised value is the life left in percent (100 when new), by
# vendor: Samsung 177, Intel 233, Kingston/SandForce 231, Crucial/Micron 202, WD/SanDisk 169.
_LIFE_LEFT_ATTRIBUTES = {
    169: "Remaining_Lifetime_Perc",
    177: "Wear_Leveling_Count",
    202: "Percent_Lifetime_Remain",
    231: "SSD_Life_Left",
    233: "Media_Wearout_Indicator",
}
_REALLOCATED = 5
_PENDING = 197
WARN_USED = 70
FAULT_USED = 90
# Where waystation-smart.service (root, hourly) leaves each drive's answer: the router runs
# unprivileged and may not open block devices itself.
SNAPSHOTS = Path("/run/waystation-smart")
SNAPSHOT_MAX_AGE = 3 * 3600.0


@dataclass(frozen=True)
class SmartFacts:
    """The wear facts a drive reported (None: not reported)."""

    kind: str  # "nvme" or "ata"
    used_percent: int | None = None
    reallocated: int | None = None
    pending: int | None = None
    media_errors: int | None = None
    spare_low: bool = False
    critical_warning: int = 0
    passed: bool | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse(document: dict[str, Any]) -> SmartFacts | None:
    """The wear facts in one ``smartctl --json -a`` answer; None when it holds none."""
    status = document.get("smart_status")
    passed = status.get("passed") if isinstance(status, dict) else None
    passed = passed if isinstance(passed, bool) else None
    endurance = document.get("endurance_used")  # smartctl 7.4+, both kinds
    general_used = _int(endurance.get("current_percent")) if isinstance(endurance, dict) else None
    nvme = document.get("nvme_smart_health_information_log")
    if isinstance(nvme, dict):
        spare, threshold = (
            _int(nvme.get("available_spare")),
            _int(nvme.get("available_spare_threshold")),
        )
        used = _int(nvme.get("percentage_used"))
        return SmartFacts(
            kind="nvme",
            used_percent=used if used is not None else general_used,
            media_errors=_int(nvme.get("media_errors")),
            spare_low=spare is not None and threshold is not None and spare <= threshold,
            critical_warning=_int(nvme.get("critical_warning")) or 0,
            passed=passed,
        )
    attributes = document.get("ata_smart_attributes")
    table = attributes.get("table") if isinstance(attributes, dict) else None
    if not isinstance(table, list):
        return None if passed is None and general_used is None else SmartFacts("ata", passed=passed)
    by_id = {row.get("id"): row for row in table if isinstance(row, dict)}
    life_left = [
        value
        for number in _LIFE_LEFT_ATTRIBUTES
        if number in by_id
        and (value := _int(by_id[number].get("value"))) is not None
        and 0 <= value <= 100
    ]
    used = 100 - min(life_left) if life_left else general_used

    def raw(number: int) -> int | None:
        row = by_id.get(number)
        found = row.get("raw") if isinstance(row, dict) else None
        return _int(found.get("value")) if isinstance(found, dict) else None

    return SmartFacts(
        kind="ata",
        used_percent=used,
        reallocated=raw(_REALLOCATED),
        pending=raw(_PENDING),
        passed=passed,
    )


def judge(facts: SmartFacts | None, device: str) -> Check:
    """A storage Check in plain words from a drive's wear facts."""
    if facts is None:
        return Check("storage", "unknown", f"{device}: wear not reported")
    faults: list[str] = []
    warnings: list[str] = []
    parts = [device]
    if facts.used_percent is not None:
        parts.append(f"about {facts.used_percent}% of its rated life used")
        if facts.used_percent >= FAULT_USED:
            faults.append("worn out soon: plan to replace the drive")
        elif facts.used_percent >= WARN_USED:
            warnings.append("wearing: plan to replace the drive")
    if facts.passed is False:
        faults.append("the drive's own self-assessment FAILED: replace it")
    if facts.critical_warning:
        faults.append(f"the drive raises a critical warning (0x{facts.critical_warning:02X})")
    if facts.spare_low:
        faults.append("spare blocks below the drive's threshold: replace it")
    if facts.reallocated:
        warnings.append(f"{facts.reallocated} sectors reallocated")
    if facts.pending:
        warnings.append(f"{facts.pending} sectors waiting to be reallocated")
    if facts.media_errors:
        warnings.append(f"{facts.media_errors} media errors")
    state: State = "fault" if faults else "warn" if warnings else "ok"
    if state == "ok" and facts.used_percent is None and facts.passed is None:
        return Check("storage", "unknown", f"{device}: wear not reported")
    if state == "ok":
        parts.append("healthy")
    return Check("storage", state, ", ".join(parts + faults + warnings))


def snapshot(
    disk: str, directory: Path = SNAPSHOTS, max_age: float = SNAPSHOT_MAX_AGE
) -> dict[str, Any] | None:
    """The answer waystation-smart.service saved for ``disk`` (e.g. "sda"), when recent."""
    path = directory / f"{disk}.json"
    try:
        if time.time() - path.stat().st_mtime > max_age:
            return None
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def read(device: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """``smartctl --json -a DEVICE`` as a dict, or None (not installed, no permission, no
    answer). Bounded by ``timeout``: the health loop that feeds the watchdog (60 s) waits for
    it, once an hour. smartctl's exit status is a bit mask that is non-zero for many healthy
    answers, so the JSON decides, not the status."""
    program = shutil.which("smartctl")
    if program is None:
        return None
    try:
        done = subprocess.run(
            [program, "--json", "-a", device],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode & 0b11:  # bit 0: bad command line; bit 1: the device did not open
        return None
    try:
        document = json.loads(done.stdout)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
