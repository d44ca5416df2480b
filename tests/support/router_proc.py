"""Run a real Waystation router as a subprocess on loopback, for integration and crash tests."""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from router.control.client import ControlClient

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    directory: Path,
    *,
    port: int,
    spool: Path | None = None,
    min_free: str = "16 MiB",
    allowed_callers: tuple[str, ...] = (),
    extra: str = "",
    destinations: str = "",
) -> Path:
    """Write a configuration file for a test router; returns its path."""
    spool = spool or directory / "spool"
    callers = ", ".join(f'"{c}"' for c in allowed_callers)
    text = f"""
[unit]
name = "test-unit"
ae_title = "WAYSTATION"

[ingest]
listen = "127.0.0.1:{port}"
allowed_callers = [{callers}]
max_pdu = 262144

[spool]
path = "{spool}"
min_free = "{min_free}"
key_file = "{directory / "keys" / "unit.keys"}"

[logging]
level = "info"
{destinations}
{extra}
"""
    path = directory / "waystation.toml"
    path.write_text(text)
    return path


class RouterProcess:
    """``waystation run`` in a subprocess; ``start`` returns once it is listening."""

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        prefix: Sequence[str] = (),
        command: Sequence[str] = ("run",),
        ready: bytes = b"waystation ready",
    ) -> None:
        # ``prefix`` wraps the command, e.g. ["ip", "netns", "exec", NS] (tests/support/wanlink).
        # ``command`` and ``ready`` run something else, e.g. ``("hub",)`` and
        # ``b"waystation hub ready"`` for a hub (`waystation hub --config FILE`).
        self.prefix = list(prefix)
        self.command = list(command)
        self.ready = ready
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.log_path = log or config.parent / "router.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """The control API's Unix socket, as the router finds it in its configuration."""
        from router.config import load_config

        return load_config(self.config).control_socket

    def client(self, timeout: float = 10.0) -> ControlClient:
        """A control API client for this router."""
        return ControlClient(self.socket_path, timeout=timeout)

    def start(self, timeout: float = 60.0) -> RouterProcess:
        """Start and wait for the ready line; raises with the log if it does not come."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "router.cli",
                *self.command,
                "--config",
                str(self.config),
            ],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(self.ready):
                    return self
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        self.kill9()
        raise RuntimeError(
            f"router did not start (exit {self.proc.returncode}):\n{self.read_log()}"
        )

    def read_log(self) -> str:
        """The router's stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_shows(self, text: str, timeout: float = 15.0) -> bool:
        """Whether `text` appears in the router's log within `timeout` seconds.

        The router logs an event on its own thread, often just after the peer
        has already seen the outcome, so a test polls instead of reading once.
        """
        return wait_for(lambda: text in self.read_log(), timeout)

    def kill9(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return int(self.proc.returncode or 0)

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def waystation(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the waystation CLI; returns the completed process (never raises on exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def destination_toml(name: str, ae_title: str, port: int, **extra: object) -> str:
    """A ``[[destinations]]`` table for ``write_config(destinations=...)``."""
    lines = [
        f'name = "{name}"',
        'type = "dimse"',
        f'ae_title = "{ae_title}"',
        'host = "127.0.0.1"',
        f"port = {port}",
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    return "\n[[destinations]]\n" + "\n".join(lines) + "\n"


def route_toml(name: str, *to: str) -> str:
    """A ``[[routes]]`` table sending everything to ``to``."""
    targets = ", ".join(f'"{t}"' for t in to)
    return f'\n[[routes]]\nname = "{name}"\nto = [{targets}]\n'


def fast_retry_toml(response_timeout: str = "") -> str:
    """A ``[delivery]`` table with short retries, so tests see recovery quickly."""
    text = '\n[delivery]\nretry_first = "0.5 s"\nretry_max = "2 s"\n'
    return text + (f'response_timeout = "{response_timeout}"\n' if response_timeout else "")


def delivery_states(config: Path, destination: str | None = None) -> dict[str, int]:
    """Deliveries by state, read from the router's journal (read-only)."""
    journal = config.parent / "spool" / "journal.sqlite"
    where, args = ("WHERE destination = ?", (destination,)) if destination else ("", ())
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        rows = conn.execute(f"SELECT state, count(*) FROM deliveries {where} GROUP BY state", args)
        return {str(state): int(count) for state, count in rows}


def wait_for(condition: Callable[[], bool], timeout: float = 90.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()
