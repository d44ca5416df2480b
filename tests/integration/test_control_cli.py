"""The `waystation` control commands against a real router: text and --json, exit codes
0/1/69/78, the PIN from stdin or the environment, and no prompt without a terminal."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from tests.support import dicomgen
from tests.support.peers import Storescp
from tests.support.router_proc import (
    REPO,
    RouterProcess,
    destination_toml,
    fast_retry_toml,
    free_port,
    route_toml,
    waystation,
    write_config,
)
from tests.support.sender import send

PIN = "4711"


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return waystation(*args, env=env)
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_every_control_command_with_text_and_json(tmp_path: Path) -> None:
    files = dicomgen.make_tiny_objects(tmp_path / "objects", 4, studies=1)
    with Storescp(tmp_path / "scp") as scp:
        port = free_port()
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=destination_toml("pacs", "STORESCP", scp.port)
            + route_toml("everything", "pacs"),
            extra=fast_retry_toml(),
        )
        c = str(config)
        set_pin = cli("pin", "set", "--config", c, "--stdin", stdin=PIN + "\n")
        assert set_pin.returncode == 0, set_pin.stderr
        assert stat.S_IMODE((tmp_path / "unit" / "operator.pin").stat().st_mode) == 0o600
        assert cli("pin", "set", "--config", c, "--stdin", stdin="12\n").returncode == 1
        assert cli("pin", "set", "--config", c).returncode == 1  # no terminal: no prompt
        with RouterProcess(config):
            assert send(files, port).acknowledged == files
            scp.wait_for_files(4)

            status = cli("status", "--config", c)
            assert status.returncode == 0, status.stderr
            assert all(len(line) <= 80 for line in status.stdout.splitlines())
            assert "DESTINATION" in status.stdout and "pacs" in status.stdout
            as_json = json.loads(cli("status", "--config", c, "--json").stdout)
            assert as_json["unit_name"] == "test-unit"

            queue = cli("queue", "--config", c)
            assert queue.returncode == 0 and "pacs" in queue.stdout
            assert json.loads(cli("queue", "--config", c, "--json").stdout)[0]["name"] == "pacs"

            studies = json.loads(cli("studies", "--config", c, "--json").stdout)
            assert len(studies) == 1
            study_id = studies[0]["study_id"]
            table = cli("studies", "--config", c)
            assert study_id[:12] in table.stdout
            assert all(len(line) <= 80 for line in table.stdout.splitlines())
            unmasked = cli("studies", "--config", c, "--unmask", "--pin-stdin", stdin=PIN)
            assert unmasked.returncode == 0, unmasked.stderr
            # The PIN was given once; without it, names stay masked.
            assert "^" in unmasked.stdout or "WAYTEST" in unmasked.stdout

            study = cli("history", study_id[:12], "--config", c)
            assert study.returncode == 0, study.stderr
            assert "received" in study.stdout and "delivered" in study.stdout
            detail = json.loads(cli("history", study_id, "--config", c, "--json").stdout)
            object_id = detail["objects"][0]["object_id"]
            events = json.loads(cli("history", object_id, "--config", c, "--json").stdout)
            assert events[0]["event"] == "received"

            for args in (
                ["pause", "pacs", "--reason", "maintenance"],
                ["resume", "pacs"],
                ["retry", "pacs"],
                ["retry", "pacs", "--failed"],
                ["priority", study_id[:12], "stat"],
            ):
                done = cli(*args, "--config", c)
                assert done.returncode == 0, (args, done.stderr)
            echo = cli("echo", "pacs", "--config", c, "--json")
            assert echo.returncode == 0 and json.loads(echo.stdout)["ok"]

            no_pin = cli("resend", study_id, "pacs", "--config", c)
            assert no_pin.returncode == 1 and "--pin-stdin" in no_pin.stderr  # never prompts
            resend = cli("resend", study_id, "pacs", "--config", c, env={"WAYSTATION_PIN": PIN})
            assert resend.returncode == 0, resend.stderr
            scp.wait_for_files(8)
            wrong = cli(
                "discard", study_id, "--reason", "x", "--config", c, "--pin-stdin", stdin="9999\n"
            )
            assert wrong.returncode == 1 and "not the operator PIN" in wrong.stderr
            no_reason = cli("discard", study_id, "--reason", " ", "--config", c, stdin=PIN)
            assert no_reason.returncode == 1
            unknown = cli("pause", "nowhere", "--config", c)
            assert unknown.returncode == 1 and "no destination 'nowhere'" in unknown.stderr

    unreachable = cli("status", "--config", c)
    assert unreachable.returncode == 69 and "not running" in unreachable.stderr


def test_exit_codes_without_a_daemon_and_with_a_bad_config(tmp_path: Path) -> None:
    missing = cli("status", "--socket", str(tmp_path / "nothing.sock"))
    assert missing.returncode == 69
    assert cli("queue", "--json", "--socket", str(tmp_path / "nothing.sock")).returncode == 69
    bad = tmp_path / "bad.toml"
    bad.write_text("[control]\nsockett = 'x'\n")
    result = cli("status", "--config", str(bad))
    assert result.returncode == 78 and "socket" in result.stderr
