"""sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the router runs the same from a
terminal. Abstract sockets ("@name") are supported, as systemd may hand one out.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends state lines to the service manager, if there is one."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = not pid or pid == str(os.getpid())
        self.watchdog_seconds: float | None = (
            int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and watchdog_for_us else None
        )

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (e.g. READY="1"); False when nobody listens or it failed."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError:
            return False  # the manager went away: nothing to tell
        return True

    def ready(self, status: str) -> bool:
        """Startup finished: recovery done and ingest listening."""
        return self.send(READY="1", STATUS=_one_line(status))

    def status(self, status: str) -> bool:
        """A one-line summary ``systemctl status`` shows."""
        return self.send(STATUS=_one_line(status))

    def watchdog(self) -> bool:
        """Feed the service watchdog: only call while the router is really alive."""
        return self.send(WATCHDOG="1")

    def stopping(self, status: str = "stopping") -> bool:
        """A clean stop has begun."""
        return self.send(STOPPING="1", STATUS=_one_line(status))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
