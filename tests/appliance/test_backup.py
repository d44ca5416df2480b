"""Backup -> factory reset -> restore, through the CLI, PIN-protected and audited."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.audit import entries
from appliance.backup import BackupError, read_backup
from appliance.firstboot import firstboot
from router.config import load_config
from router.control.auth import PinStore
from router.spool import keys
from router.spool.spool import Spool
from tests.appliance.test_firstboot import GOOD
from tests.support.router_proc import waystation

PIN, PASS = "4862", "correct horse battery"


def _unit(tmp_path: Path) -> tuple[Path, Path]:
    boot, state = tmp_path / "boot", tmp_path / "state"
    boot.mkdir(parents=True)
    (boot / "waystation.toml").write_text(GOOD.replace('"0.0.0.0:11112"', '"127.0.0.1:11112"'))
    (boot / "waystation.pin").write_text(PIN)
    assert firstboot(boot, state).ok
    config_path = state / "waystation.toml"
    spool = Spool(load_config(config_path).spool)  # creates the key file and the journal
    spool.close()
    return state, config_path


def _fingerprint(config_path: Path) -> str:
    config = load_config(config_path)
    return keys.fingerprint(keys.load(config.spool.resolved_key_file, "aes-256-gcm"))


def test_backup_reset_restore_round_trip(tmp_path: Path) -> None:
    state, config_path = _unit(tmp_path)
    config = load_config(config_path)
    before = _fingerprint(config_path)
    out = tmp_path / "usb" / "unit.wsbackup"
    out.parent.mkdir()
    env = {"WAYSTATION_PIN": PIN, "WAYSTATION_BACKUP_PASSPHRASE": PASS}

    wrong = waystation(
        "backup",
        "--config",
        str(config_path),
        "--out",
        str(out),
        env={**env, "WAYSTATION_PIN": "9731"},
    )
    assert wrong.returncode == 1 and "wrong operator PIN" in wrong.stderr
    assert not out.exists()

    made = waystation("backup", "--config", str(config_path), "--out", str(out), env=env)
    assert made.returncode == 0, made.stderr
    raw = out.read_bytes()
    assert b"clinic-a" not in raw and b"index_secret" not in raw  # encrypted
    with pytest.raises(BackupError, match="wrong passphrase"):
        read_backup(out, "not the passphrase")

    refused = waystation("factory-reset", "--config", str(config_path), env=env)
    assert refused.returncode == 1 and "--confirm clinic-a" in refused.stderr
    reset = waystation(
        "factory-reset", "--config", str(config_path), "--confirm", "clinic-a", env=env
    )
    assert reset.returncode == 0, reset.stderr
    assert not config.spool.resolved_key_file.exists()
    assert not config.spool.path.exists()
    assert not config_path.exists() and not config.pin_file.exists()

    restored = waystation("restore", str(out), "--state", str(state), env=env)
    assert restored.returncode == 0, restored.stderr
    assert _fingerprint(config_path) == before  # the very same keys
    assert PinStore(load_config(config_path).pin_file).verify(PIN)
    assert config_path.read_text() == (tmp_path / "state" / "waystation.toml").read_text()

    actions = [(e["action"], str(e["outcome"]).split(":")[0]) for e in entries(state)]
    assert actions == [
        ("backup", "ok"),
        ("factory-reset", "started"),
        ("factory-reset", "ok"),
        ("restore", "ok"),
    ]


def test_backup_is_in_the_journal_audit(tmp_path: Path) -> None:
    _, config_path = _unit(tmp_path)
    out = tmp_path / "b.wsbackup"
    env = {"WAYSTATION_PIN": PIN, "WAYSTATION_BACKUP_PASSPHRASE": PASS}
    assert (
        waystation("backup", "--config", str(config_path), "--out", str(out), env=env).returncode
        == 0
    )
    journal = load_config(config_path).spool.path / "journal.sqlite"
    with sqlite3.connect(journal) as conn:
        rows = conn.execute("SELECT action, target, outcome FROM audit").fetchall()
    assert rows and rows[-1][0] == "backup" and rows[-1][1] == str(out)


def test_restore_refuses_to_replace_other_keys(tmp_path: Path) -> None:
    _, config_path = _unit(tmp_path)
    out = tmp_path / "b.wsbackup"
    env = {"WAYSTATION_PIN": PIN, "WAYSTATION_BACKUP_PASSPHRASE": PASS}
    assert (
        waystation("backup", "--config", str(config_path), "--out", str(out), env=env).returncode
        == 0
    )
    other_state, _ = _unit(tmp_path / "other")
    result = waystation("restore", str(out), "--state", str(other_state), env=env)
    assert result.returncode == 1 and "other keys" in result.stderr
