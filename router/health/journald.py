"""Log records to journald with stable MESSAGE_IDs (the native journal protocol: one
datagram of KEY=value fields to /run/systemd/journal/socket); plain stderr elsewhere.

Only the router's own records carrying a ``message_id`` get one; the text is the same that
goes to stderr, so nothing more (and never patient data) reaches the journal."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")

# Stable ids (uuid4, fixed forever) for the events people search for.
MESSAGE_IDS = {
    "ready": "0d3c8f57d1a04b4c9a4a6f0e2b8c1a01",
    "alarm": "5f2e7a7b6c3d4e1f8a9b0c1d2e3f4a02",
    "alarm-cleared": "7a1b2c3d4e5f40718293a4b5c6d7e803",
    "wedged": "9c8b7a6d5e4f40312a1b0c9d8e7f6a04",
    "ups-shutdown": "b1c2d3e4f5a64b7c8d9e0f1a2b3c4d05",
    "stopping": "c3d4e5f6a7b84c9d0e1f2a3b4c5d6e06",
}
_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class JournaldHandler(logging.Handler):
    """Sends each record as journal fields: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, MESSAGE_ID."""

    def __init__(self, path: Path = JOURNAL_SOCKET) -> None:
        super().__init__()
        self._path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        """One datagram per record; newlines in values use the protocol's length form."""
        try:
            fields = {
                "MESSAGE": self.format(record),
                "PRIORITY": str(_PRIORITY.get(record.levelname, 6)),
                "SYSLOG_IDENTIFIER": "waystation",
                "LOGGER": record.name,
            }
            kind = getattr(record, "message_id", None)
            if isinstance(kind, str) and kind in MESSAGE_IDS:
                fields["MESSAGE_ID"] = MESSAGE_IDS[kind]
            self._sock.sendto(_encode(fields), self._path)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
        super().close()


def _encode(fields: dict[str, str]) -> bytes:
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def use_journald() -> bool:
    """Whether to log to journald: under systemd (JOURNAL_STREAM set) with its socket present."""
    return bool(os.environ.get("JOURNAL_STREAM")) and JOURNAL_SOCKET.exists()
