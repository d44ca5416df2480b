"""Helpers shared by the security tests."""

from __future__ import annotations

import socket
import time


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the router closes; (closed in time, what it sent)."""
    sock.settimeout(seconds)
    received = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return True, received
            received += chunk
    except ConnectionResetError:
        return True, received
    except TimeoutError:
        return False, received
    return False, received
