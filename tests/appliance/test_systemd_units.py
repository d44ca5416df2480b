"""The unit files: systemd itself verifies them, and their hardening stays as documented."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.peers import require

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "appliance" / "systemd"
INSTALLED = "/opt/waystation/venv/bin/waystation"
# docs/operations.md reports these; a change that raises them must update the docs.
MAX_EXPOSURE = {
    "waystation.service": 2.0,
    "waystation-console@tty1.service": 1.5,
    "waystation-hub.service": 1.5,
    "waystation-firstboot.service": 4.0,
    "waystation-setup.service": 2.2,
    "waystation-smart.service": 3.8,
}


def _analyze() -> str:
    return require("systemd-analyze")


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The unit files with ExecStart pointing at this checkout's waystation command."""
    here = shutil.which("waystation", path=str(Path(sys.executable).parent))
    assert here is not None, "the venv's waystation script is missing"
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.path"), *UNITS.glob("*.timer")]:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, here))
    template = tmp_path / "waystation-console@.service"
    template.rename(tmp_path / "waystation-console@tty1.service")
    return tmp_path


def test_systemd_analyze_verify_passes(units: Path) -> None:
    tool = _analyze()
    names = sorted(p.name for p in units.iterdir())
    result = subprocess.run(
        [tool, "verify", "--man=no", *names], cwd=units, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_exposure_stays_low(units: Path, name: str) -> None:
    tool = _analyze()
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", name],
        cwd=units,
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE[name], result.stdout


def _service(name: str) -> dict[str, list[str]]:
    text = (UNITS / name).read_text()
    values: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#") and section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_router_unit_promises() -> None:
    service = _service("waystation.service")
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["always"]
    assert "WatchdogSec" in service
    assert service["User"] == ["waystation"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    # router/cli.py's EXIT_UPS_STOP and EXIT_CONFIG: restarting would not help.
    assert service["RestartPreventExitStatus"] == ["75 78"]
    # The stop timeout covers the router's 30 s grace for objects in flight plus the flush.
    stop = int(service["TimeoutStopSec"][0].rstrip("s"))
    assert stop >= 60


def test_console_unit_is_unprivileged() -> None:
    service = _service("waystation-console@.service")
    assert service["User"] == ["waystation-console"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX"]
