"""The real `waystation console` in tmux (80x25, TERM=linux) against a running router: a study
sent with storescu shows up, and when the destination stops the banner and reason change."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.support import dicomgen
from tests.support.peers import Storescp, storescu
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    destination_toml,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)
from tests.support.tmux import TmuxScreen

pytestmark = pytest.mark.dcmtk

WAYSTATION = str(Path(sys.executable).with_name("waystation"))


def test_console_in_tmux_follows_a_study_and_a_destination_going_down(tmp_path: Path) -> None:
    first = dicomgen.make_tiny_objects(tmp_path / "first", 3, studies=1)
    second = dicomgen.make_tiny_objects(tmp_path / "second", 2, studies=1)
    with Storescp(tmp_path / "scp") as scp:
        port = free_port()
        config = write_config(
            tmp_path,
            port=port,
            destinations=destination_toml("pacs", "STORESCP", scp.port)
            + route_toml("everything", "pacs"),
            extra=fast_retry_toml(),
        )
        with RouterProcess(config):
            env = {"TERM": "linux", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            with TmuxScreen([WAYSTATION, "console", "--config", str(config)], env=env) as tmux:
                screen = tmux.wait_for("OK ALL STUDIES DELIVERED")
                assert "0 studies received" in screen
                assert len(screen.splitlines()[0]) <= 80

                assert storescu(first, port=port, aec="WAYSTATION").failed == 0
                assert wait_for(lambda: delivery_states(config).get("delivered") == 3)
                screen = tmux.wait_for("1 study received, 1 delivered")
                assert screen.startswith("OK ALL STUDIES DELIVERED")

                scp.stop()  # the destination goes away
                assert storescu(second, port=port, aec="WAYSTATION").failed == 0
                screen = tmux.wait_for("!! ATTENTION")
                row = next(line for line in screen.splitlines() if line.startswith("│ pacs"))
                assert "WAITING" in row or "DOWN" in row, screen
                reason = [line for line in screen.splitlines() if line.startswith("│   -> ")]
                assert reason, screen
                assert "updated" in screen and "s ago" in screen
                # Everything on the screen is in the Linux console font.
                assert screen.isascii() or set(screen) <= set(
                    "".join(chr(c) for c in range(32, 127)) + "\n─│┌┐└┘├┤┬┴┼═║╔╗╚╝█"
                ), set(screen)

                tmux.send_keys("q")
                deadline = time.monotonic() + 10
                while not tmux.dead() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert tmux.dead(), tmux.text()


def test_console_in_tmux_with_no_router_says_not_responding(tmp_path: Path) -> None:
    env = {"TERM": "linux", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    socket = tmp_path / "nobody-here.sock"
    with TmuxScreen([WAYSTATION, "console", "--socket", str(socket)], env=env) as tmux:
        screen = tmux.wait_for("ROUTER SERVICE NOT RESPONDING", timeout=30)
        assert "What to do" in screen
        assert str(socket) in "".join(screen.split()).replace("║", "")
