"""Start the console on a control socket: ``waystation console`` calls :func:`run`."""

from __future__ import annotations

from pathlib import Path

from router.control.client import ControlClient
from tui.app import ConsoleApp


def run(
    socket_path: str,
    *,
    relock_seconds: float = 120.0,
    setup_notice: Path | None = None,
    setup_inbox: Path | None = None,
) -> int:
    """Run the console until the technician quits; returns the exit code (0).
    ``setup_notice``: first boot's notice file, shown while the unit is not set up."""
    client = ControlClient(socket_path)
    ConsoleApp(
        client,
        socket_label=socket_path,
        relock_seconds=relock_seconds,
        setup_notice=setup_notice,
        setup_inbox=setup_inbox,
    ).run()
    return 0
