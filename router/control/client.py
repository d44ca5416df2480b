"""PLACEHOLDER until the control-api branch lands its client: the exceptions and the class name
the console needs to import. On merging control-api, take that branch's file as it is."""

from __future__ import annotations

from router.control.schema import ApiError


class ControlUnreachable(Exception):
    """The daemon's control socket does not answer."""


class ControlError(Exception):
    """The daemon answered with an error."""

    def __init__(self, http_status: int, error: ApiError) -> None:
        super().__init__(error.message)
        self.http_status = http_status
        self.error = error


class ControlClient:
    """Placeholder: every call reports the daemon unreachable."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
