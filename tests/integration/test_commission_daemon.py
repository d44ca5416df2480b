"""Commissioning against a real router and a real DCMTK storescp: C-ECHO and the synthetic
test object end to end, then the printed report."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from appliance.commission import load
from tests.support.peers import Storescp, free_port
from tests.support.router_proc import (
    RouterProcess,
    destination_toml,
    fast_retry_toml,
    route_toml,
    waystation,
    write_config,
)

pytestmark = pytest.mark.dcmtk


def test_commission_with_a_test_object_end_to_end(tmp_path: Path) -> None:
    with Storescp(tmp_path / "pacs") as scp:
        config = write_config(
            tmp_path,
            port=free_port(),
            destinations=destination_toml("pacs", scp.aet, scp.port) + route_toml("all", "pacs"),
            extra=fast_retry_toml(),
        )
        with RouterProcess(config):
            result = waystation("commission", "--config", str(config), "--test-object")
            assert result.returncode == 0, result.stdout + result.stderr
            assert "[PASS] C-ECHO pacs" in result.stdout
            assert "[PASS] test object end to end: stored and delivered" in result.stdout
            assert "ALL TESTS PASSED" in result.stdout
        received = scp.files()
        assert len(received) == 1
        ds = dcmread(received[0])
        assert str(ds.PatientName) == "WAYSTATION^TEST"
        assert ds.StudyDescription == "Waystation commissioning test"
    report = load(tmp_path / "commissioning")
    assert report.passed and [t.name.split(" (")[0] for t in report.tests] == [
        "C-ECHO pacs",
        "test object end to end",
    ]


def test_test_object_without_a_running_router_fails_plainly(tmp_path: Path) -> None:
    config = write_config(tmp_path, port=free_port())
    result = waystation("commission", "--config", str(config), "--test-object")
    assert result.returncode == 1
    assert "[FAIL] test object end to end: the unit's own receiver refused" in result.stdout
