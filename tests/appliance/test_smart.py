"""SATA and NVMe wear from ``smartctl --json -a`` answers captured from real drives (no
smartctl needed here): facts parsed, then judged ok / warn / fault / unknown in plain words."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from router.health import smart

SAMPLES = Path(__file__).parent / "smart"


def _sample(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return document


@pytest.fixture
def nvme() -> dict[str, Any]:
    return _sample("nvme_samsung_970_evo_plus.json")


@pytest.fixture
def sata() -> dict[str, Any]:
    return _sample("sata_crucial_mx500.json")


def test_a_healthy_nvme_drive(nvme: dict[str, Any]) -> None:
    facts = smart.parse(nvme)
    assert facts == smart.SmartFacts(
        kind="nvme", used_percent=3, media_errors=0, spare_low=False, passed=True
    )
    check = smart.judge(facts, "nvme0n1")
    assert check.state == "ok"
    assert check.detail == "nvme0n1, about 3% of its rated life used, healthy"


def test_a_worn_nvme_drive_and_its_warnings(nvme: dict[str, Any]) -> None:
    log = nvme["nvme_smart_health_information_log"]
    log["percentage_used"] = 75
    assert smart.judge(smart.parse(nvme), "nvme0n1").state == "warn"
    log["percentage_used"] = 96
    worn = smart.judge(smart.parse(nvme), "nvme0n1")
    assert worn.state == "fault" and "plan to replace the drive" in worn.detail
    log["percentage_used"] = 3
    log["media_errors"] = 2
    assert smart.judge(smart.parse(nvme), "nvme0n1").detail.endswith("2 media errors")
    log["available_spare"] = 9
    low = smart.judge(smart.parse(nvme), "nvme0n1")
    assert low.state == "fault" and "spare blocks below" in low.detail
    log["available_spare"] = 100
    log["critical_warning"] = 4
    assert smart.judge(smart.parse(nvme), "nvme0n1").state == "fault"


def test_a_sata_ssd_with_reallocated_sectors_and_much_wear(sata: dict[str, Any]) -> None:
    facts = smart.parse(sata)
    # Percent_Lifetime_Remain (202) normalised 27: 73% used; 8 sectors reallocated.
    assert facts == smart.SmartFacts(
        kind="ata", used_percent=73, reallocated=8, pending=0, passed=True
    )
    check = smart.judge(facts, "sda")
    assert check.state == "warn"
    assert "about 73% of its rated life used" in check.detail
    assert "8 sectors reallocated" in check.detail


def test_a_fresh_sata_ssd_and_a_failing_one(sata: dict[str, Any]) -> None:
    fresh = copy.deepcopy(sata)
    for row in fresh["ata_smart_attributes"]["table"]:
        if row["id"] == 202:
            row["value"] = 98
        if row["id"] == 5:
            row["raw"]["value"] = 0
    assert smart.judge(smart.parse(fresh), "sda").state == "ok"
    sata["smart_status"]["passed"] = False
    failing = smart.judge(smart.parse(sata), "sda")
    assert failing.state == "fault" and "self-assessment FAILED" in failing.detail


def test_samsung_wear_levelling_and_the_worst_of_several(sata: dict[str, Any]) -> None:
    table = sata["ata_smart_attributes"]["table"]
    table.append({"id": 177, "name": "Wear_Leveling_Count", "value": 8, "raw": {"value": 2900}})
    facts = smart.parse(sata)
    assert facts is not None and facts.used_percent == 92  # the lower life left wins
    assert smart.judge(facts, "sda").state == "fault"


def test_nothing_reported_is_unknown(sata: dict[str, Any]) -> None:
    assert smart.judge(None, "sda").state == "unknown"
    # A USB bridge that passes no SMART through: smartctl answers with device info only.
    bare = {k: v for k, v in sata.items() if k not in ("ata_smart_attributes", "smart_status")}
    assert smart.parse(bare) is None
    assert smart.judge(smart.parse(bare), "sda").detail == "sda: wear not reported"
    # A hard disk's table without any wear attribute still says what it has.
    sata["ata_smart_attributes"]["table"] = [
        row for row in sata["ata_smart_attributes"]["table"] if row["id"] not in (5, 202)
    ]
    assert smart.judge(smart.parse(sata), "sda").state == "ok"


def test_read_without_smartctl_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no smartctl there
    assert smart.read("/dev/sda") is None


@pytest.mark.parametrize(("exit_status", "readable"), [(0, True), (4, True), (2, False)])
def test_read_runs_smartctl_and_trusts_the_json_not_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_status: int, readable: bool
) -> None:
    # A stand-in smartctl on PATH: bit 2 (some SMART command failed) still answers; bit 1
    # (the device did not open, e.g. no permission) does not.
    fake = tmp_path / "smartctl"
    fake.write_text(
        f"#!/bin/sh\n/bin/cat '{SAMPLES / 'nvme_samsung_970_evo_plus.json'}'\nexit {exit_status}\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    document = smart.read("/dev/nvme0n1")
    assert (document is not None) == readable
    if document is not None:
        assert smart.judge(smart.parse(document), "nvme0n1").state == "ok"


def test_the_root_helpers_snapshot_is_read_while_recent(tmp_path: Path) -> None:
    import os
    import time

    saved = tmp_path / "sda.json"
    saved.write_text((SAMPLES / "sata_crucial_mx500.json").read_text())
    document = smart.snapshot("sda", tmp_path)
    assert document is not None and smart.judge(smart.parse(document), "sda").state == "warn"
    assert smart.snapshot("sdb", tmp_path) is None
    old = time.time() - smart.SNAPSHOT_MAX_AGE - 60
    os.utime(saved, (old, old))
    assert smart.snapshot("sda", tmp_path) is None  # a stale answer is no answer
    (tmp_path / "nvme0n1.json").write_text("{truncated")
    assert smart.snapshot("nvme0n1", tmp_path) is None
