"""Run a full-screen program in a detached tmux session of a given size and read its screen."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Sequence
from types import TracebackType

from tests.support.peers import require


class TmuxScreen:
    """One program in its own tmux server (-L), ``width`` x ``height``; ``text()`` reads it."""

    def __init__(
        self, command: Sequence[str], *, width: int = 80, height: int = 25, env: dict[str, str]
    ) -> None:
        self.tmux = require("tmux")  # skips, or fails under WAYSTATION_REQUIRE_PEERS=1
        self.server = f"waystation-test-{uuid.uuid4().hex[:8]}"
        self.command = list(command)
        self.width, self.height = width, height
        self.env = env

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tmux, "-L", self.server, *args], capture_output=True, text=True, check=False
        )

    def start(self) -> TmuxScreen:
        env_args = [f"{k}={v}" for k, v in self.env.items()]
        result = self._tmux(
            "new-session", "-d", "-s", "console", "-x", str(self.width), "-y", str(self.height),
            "env", *env_args, *self.command,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        # Keep the pane after the program exits, so a crash can still be read.
        self._tmux("set-option", "-t", "console", "remain-on-exit", "on")
        return self

    def text(self) -> str:
        """The visible screen, one line per row."""
        return self._tmux("capture-pane", "-p", "-t", "console").stdout

    def send_keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "console", *keys)

    def wait_for(self, wanted: str, timeout: float = 60.0) -> str:
        """Wait until ``wanted`` is on the screen; returns the screen, or fails showing it."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.text()
            if wanted in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{wanted!r} not on the screen after {timeout} s:\n{screen}")

    def dead(self) -> bool:
        """Whether the program has exited."""
        return (
            self._tmux("display-message", "-p", "-t", "console", "#{pane_dead}").stdout.strip()
            == "1"
        )

    def stop(self) -> None:
        self._tmux("kill-server")

    def __enter__(self) -> TmuxScreen:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
