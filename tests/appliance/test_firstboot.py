"""First boot from a fake boot partition: a good file, a bad file, no file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from appliance.firstboot import firstboot
from router.config import load_config
from router.control.auth import PinStore
from tests.support.router_proc import waystation

GOOD = """\
[unit]
name = "clinic-a"
ae_title = "CLINIC_A_WS"

[ingest]
listen = "0.0.0.0:11112"

[spool]
path = "spool"

[[destinations]]
name = "pacs"
type = "dimse"
ae_title = "PACS"
host = "192.0.2.10"
port = 104

[[routes]]
name = "all"
to = ["pacs"]
"""

# A misspelt key (so a required one is missing too).
BAD = GOOD.replace('ae_title = "PACS"', 'ae_titel = "PACS"')


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    boot, state = tmp_path / "boot", tmp_path / "state"
    boot.mkdir()
    return boot, state


def _notice(state: Path) -> dict[str, object]:
    return dict(json.loads((state / "firstboot" / "notice.json").read_text()))


def test_good_file_is_installed_and_removed_from_the_boot_partition(tmp_path: Path) -> None:
    boot, state = _dirs(tmp_path)
    (boot / "waystation.toml").write_text(GOOD)
    (boot / "waystation.pin").write_text("4862\n")
    result = firstboot(boot, state)
    assert result.outcome == "installed" and result.ok
    installed = state / "waystation.toml"
    assert installed.read_text() == GOOD
    assert stat.S_IMODE(installed.stat().st_mode) == 0o640
    # Secrets are never left on the FAT partition.
    assert sorted(p.name for p in boot.iterdir()) == []
    config = load_config(installed)
    assert config.spool.path == (state / "spool").resolve()
    assert PinStore(config.pin_file).verify("4862")
    assert _notice(state)["outcome"] == "installed"
    # Booting again without a new file changes nothing.
    again = firstboot(boot, state)
    assert again.outcome == "already-configured"
    assert installed.read_text() == GOOD


def test_bad_file_installs_nothing_and_says_where_the_problems_are(tmp_path: Path) -> None:
    boot, state = _dirs(tmp_path)
    (boot / "waystation.toml").write_text(BAD)
    result = firstboot(boot, state)
    assert result.outcome == "invalid" and not result.ok
    text = "\n".join(result.problems)
    assert "waystation.toml (boot partition):14: destinations[0].ae_titel: unknown key" in text
    assert "did you mean 'ae_title'" in text
    assert not (state / "waystation.toml").exists()  # nothing half-applied
    # The file (which may hold secrets) left the boot partition; only the problems went back.
    assert not (boot / "waystation.toml").exists()
    problems = (boot / "waystation-problems.txt").read_text()
    assert "NOT installed" in problems and "ae_titel" in problems
    kept = state / "firstboot" / "rejected.toml"
    assert kept.read_text() == BAD and stat.S_IMODE(kept.stat().st_mode) == 0o600
    notice = _notice(state)
    assert notice["outcome"] == "invalid" and notice["problems"] == result.problems


def test_bad_file_keeps_the_previous_configuration(tmp_path: Path) -> None:
    boot, state = _dirs(tmp_path)
    (boot / "waystation.toml").write_text(GOOD)
    assert firstboot(boot, state).ok
    (boot / "waystation.toml").write_text(BAD)
    assert firstboot(boot, state).outcome == "invalid"
    assert (state / "waystation.toml").read_text() == GOOD
    # Fixed and dropped again: installed, and the old problem report is gone.
    (boot / "waystation.toml").write_text(GOOD.replace("clinic-a", "clinic-b"))
    assert firstboot(boot, state).outcome == "installed"
    assert "clinic-b" in (state / "waystation.toml").read_text()
    assert not (boot / "waystation-problems.txt").exists()


def test_trivial_pin_rejects_the_whole_drop(tmp_path: Path) -> None:
    boot, state = _dirs(tmp_path)
    (boot / "waystation.toml").write_text(GOOD)
    (boot / "waystation.pin").write_text("1234")
    result = firstboot(boot, state)
    assert result.outcome == "invalid"
    assert "waystation.pin" in result.problems[0]
    assert not (state / "waystation.toml").exists()
    assert not (boot / "waystation.pin").exists()


def test_no_file_says_how_to_commission(tmp_path: Path) -> None:
    boot, state = _dirs(tmp_path)
    result = firstboot(boot, state)
    assert result.outcome == "no-file"
    assert "waystation.toml on the boot partition" in result.problems[0]
    assert not (state / "waystation.toml").exists()
    assert _notice(state)["outcome"] == "no-file"


def test_cli_exit_codes(tmp_path: Path) -> None:
    boot, state = _dirs(tmp_path)
    (boot / "waystation.toml").write_text(BAD)
    bad = waystation("firstboot", "--boot", str(boot), "--state", str(state))
    assert bad.returncode == 78 and "ae_titel" in bad.stderr
    (boot / "waystation.toml").write_text(GOOD)
    good = waystation("firstboot", "--boot", str(boot), "--state", str(state))
    assert good.returncode == 0 and "installed" in good.stdout
