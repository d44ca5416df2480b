"""Prometheus text exposition: counts, states and sizes only, never patient data."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from router.health.checks import Check

_STATE_VALUE = {"ok": 0, "unknown": 1, "warn": 2, "fault": 3}


def render(checks: Iterable[Check], gauges: dict[str, float], alarms: Iterable[str]) -> str:
    """The exposition text: one gauge per value, health states as 0 ok .. 3 fault."""
    lines = [
        "# HELP waystation_health Health state per aspect: 0 ok, 1 unknown, 2 warn, 3 fault.",
        "# TYPE waystation_health gauge",
    ]
    lines += [f'waystation_health{{aspect="{c.name}"}} {_STATE_VALUE[c.state]}' for c in checks]
    lines += [
        "# HELP waystation_alarm An active alarm, by its stable code.",
        "# TYPE waystation_alarm gauge",
    ]
    lines += [f'waystation_alarm{{code="{code}"}} 1' for code in sorted(alarms)]
    for name, value in sorted(gauges.items()):
        lines += [f"# TYPE waystation_{name} gauge", f"waystation_{name} {value:g}"]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` atomically (node_exporter must never read half a file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.chmod(temporary, 0o644)
    temporary.replace(path)


class MetricsServer:
    """An optional HTTP endpoint on loopback serving the latest metrics at /metrics."""

    def __init__(self, listen: str, text: Callable[[], str]) -> None:
        host, _, port = listen.rpartition(":")
        provider = text

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = provider().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every 15 s would flood the log

        self._server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
