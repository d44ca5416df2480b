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


def _register_fuzz_profiles() -> None:
    """Hypothesis profiles: "ci" (default) is time-boxed; ``make fuzz`` runs "fuzz"."""
    import os

    from hypothesis import HealthCheck, settings

    quiet = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=quiet)
    settings.register_profile(
        "fuzz", max_examples=20_000, deadline=None, suppress_health_check=quiet
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_register_fuzz_profiles()
