"""The image's firewall and SSH follow the installed configuration (appliance/access.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.access import apply_access, nft_ruleset, plan_access
from appliance.cli import cmd_access
from router.config.load import parse_config
from router.errors import ConfigError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuMBpFWt0A8xuYg5yrx3tRVIjOCWnG3T6pBMxfxz5Q1 me@laptop"


def _router(state: Path, body: str) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "waystation.toml").write_text(body)


def test_opens_the_dicom_port_and_nothing_else(tmp_path: Path) -> None:
    _router(tmp_path / "state", '[ingest]\nlisten = "0.0.0.0:104"\n')
    plan = plan_access(tmp_path / "state", tmp_path / "hub.toml")
    assert plan.tcp_ports() == [(104, "DICOM")]
    assert not plan.ssh
    rules = nft_ruleset(plan)
    assert 'tcp dport 104 accept comment "DICOM"' in rules
    assert "dport 22" not in rules
    assert "policy drop" in rules


def test_ssh_only_with_a_key_and_the_hub_port_where_a_hub_runs(tmp_path: Path) -> None:
    _router(
        tmp_path / "state",
        f'[ingest]\nlisten = "0.0.0.0:11112"\n[appliance]\nssh_authorized_keys = ["{KEY}"]\n',
    )
    (tmp_path / "hub.toml").write_text(
        '[hub]\nlisten = "0.0.0.0:8443"\ninsecure_plain_http = true\n'
    )
    plan = plan_access(tmp_path / "state", tmp_path / "hub.toml")
    assert plan.tcp_ports() == [(11112, "DICOM"), (8443, "hub"), (22, "SSH")]
    ssh_dir = tmp_path / "ssh"
    apply_access(plan, ssh_dir, tmp_path / "fw.nft")
    assert (ssh_dir / "authorized_keys").read_text() == KEY + "\n"
    assert (ssh_dir / "authorized_keys").stat().st_mode & 0o777 == 0o600


def test_removing_the_key_turns_ssh_off(tmp_path: Path) -> None:
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    (ssh_dir / "authorized_keys").write_text(KEY + "\n")
    _router(tmp_path / "state", '[ingest]\nlisten = "0.0.0.0:104"\n')
    apply_access(plan_access(tmp_path / "state", None), ssh_dir, tmp_path / "fw.nft")
    assert not (ssh_dir / "authorized_keys").exists()


def test_loopback_listener_and_no_configuration_open_nothing(tmp_path: Path) -> None:
    assert plan_access(tmp_path / "empty", None).tcp_ports() == []
    _router(tmp_path / "state", '[ingest]\nlisten = "127.0.0.1:11112"\n')
    assert plan_access(tmp_path / "state", None).tcp_ports() == []


def test_a_broken_configuration_opens_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _router(tmp_path / "state", '[ingest]\nlisten = "0.0.0.0:104"\nbogus = 1\n')
    plan = plan_access(tmp_path / "state", None)
    assert plan.tcp_ports() == []
    assert any("bogus" in problem for problem in plan.problems)

    import argparse

    args = argparse.Namespace(
        state=str(tmp_path / "state"),
        hub_config=None,
        ssh_dir=str(tmp_path / "ssh"),
        nft=str(tmp_path / "fw.nft"),
    )
    assert cmd_access(args) == 0
    out = capsys.readouterr()
    assert "firewall open for nothing; SSH off" in out.out
    assert "configuration not loaded" in out.err


@pytest.mark.parametrize(
    "bad",
    [
        "ssh-ed25519",  # no key data
        'command="rm -rf /" ssh-ed25519 AAAAC3Nza',  # options smuggle commands
        "ssh-dss AAAAB3NzaC1kc3M",  # obsolete type
        "ssh-ed25519 AAAA\nssh-rsa BBBB",  # a second line
        "ssh-ed25519 not*base64",
    ],
)
def test_ssh_keys_are_checked(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            f"[appliance]\nssh_authorized_keys = [{json.dumps(bad)}]\n",
            source="t.toml",
            base=Path("/tmp"),
        )
    assert "ssh_authorized_keys" in str(caught.value.problems)


def test_the_ruleset_parses(tmp_path: Path) -> None:
    _router(
        tmp_path / "state",
        f'[ingest]\nlisten = "0.0.0.0:104"\n[appliance]\nssh_authorized_keys = ["{KEY}"]\n',
    )
    apply_access(plan_access(tmp_path / "state", None), tmp_path / "ssh", tmp_path / "fw.nft")
    # --check parses and validates without loading anything.
    run = subprocess.run(
        ["/usr/sbin/nft", "--check", "-f", str(tmp_path / "fw.nft")], capture_output=True
    )
    assert run.returncode == 0, run.stderr
