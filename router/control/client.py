"""The control API's client: synchronous, over the daemon's Unix socket.

The console, the CLI and the tests use it. It imports nothing from the router except the
schema, so the console never reaches router internals (tests/unit/test_control_imports.py).

Exceptions::

    Exception
    ├── ControlUnreachable   no socket, connection refused, timed out, or a broken answer
    └── ControlError         the daemon answered with an error: .http_status, .error (ApiError)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from pydantic import BaseModel, TypeAdapter, ValidationError

from router.control.schema import (
    API_PREFIX,
    ActionRequest,
    ActionResult,
    AlarmView,
    ApiError,
    AuditEntry,
    DestinationView,
    EchoResult,
    HistoryEvent,
    Priority,
    StudyDetail,
    StudySummary,
    UnitStatus,
)

__all__ = ["ControlClient", "ControlError", "ControlUnreachable"]

T = TypeVar("T")
_SUN_PATH_MAX = 100
PIN_HEADER = "X-Waystation-PIN"
_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


class ControlUnreachable(Exception):
    """The router's control API cannot be reached (not running, no socket, no answer)."""


class ControlError(Exception):
    """The router refused or failed a request; ``error`` says why in plain words."""

    def __init__(self, http_status: int, error: ApiError) -> None:
        text = error.message + (f" ({error.hint})" if error.hint else "")
        super().__init__(text)
        self.http_status = http_status
        self.error = error


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with unix_address(self._path) as address:
                sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits in sun_path (the server binds through it too)."""
    # sun_path holds 108 bytes; a longer path is reached through its directory's descriptor.
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlClient:
    """One router's control API. Each call opens a short connection (no state to go stale)."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    # -- transport -------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: BaseModel | dict[str, Any] | None = None,
        pin: str | None = None,
    ) -> bytes:
        url = API_PREFIX + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urlencode(params)
        headers = {"Accept": "application/json"}
        payload = b""
        if body is not None:
            payload = (
                body.model_dump_json(exclude_defaults=True).encode()
                if isinstance(body, BaseModel)
                else json.dumps(body).encode()
            )
            headers["Content-Type"] = "application/json"
        if pin:
            headers[PIN_HEADER] = pin
        connection = _UnixConnection(self.socket_path, self.timeout)
        try:
            connection.request(method, url, body=payload or None, headers=headers)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlUnreachable(
                f"the router is not answering on {self.socket_path}: {exc}"
            ) from exc
        finally:
            connection.close()
        if status >= 400:
            try:
                error = ApiError.model_validate_json(raw)
            except ValidationError:
                error = ApiError(error="unknown", message=f"HTTP {status}")
            raise ControlError(status, error)
        return raw

    @staticmethod
    def _as(kind: type[T], raw: bytes) -> T:
        adapter = _ADAPTERS.get(kind)
        if adapter is None:
            adapter = _ADAPTERS[kind] = TypeAdapter(kind)
        try:
            result: T = adapter.validate_json(raw)
        except ValidationError as exc:
            raise ControlUnreachable(f"the router's answer does not fit the schema: {exc}") from exc
        return result

    # -- reads -----------------------------------------------------------------------------

    def status(self) -> UnitStatus:
        """The unit's status: banner, destinations, spool, alarms."""
        return self._as(UnitStatus, self._call("GET", "/status"))

    def destinations(self) -> list[DestinationView]:
        """Every configured destination."""
        return self._as(list[DestinationView], self._call("GET", "/destinations"))

    def studies(
        self,
        *,
        state: str | None = None,
        query: str | None = None,
        since: float | None = None,
        limit: int = 200,
        offset: int = 0,
        sort: str = "-last_received",
        pin: str | None = None,
    ) -> list[StudySummary]:
        """Studies held, newest first by default; names and IDs unmasked only with ``pin``."""
        params = {
            "state": state,
            "q": query,
            "since": since,
            "limit": limit,
            "offset": offset,
            "sort": sort,
        }
        data = self._call("GET", "/studies", query=params, pin=pin)
        return self._as(list[StudySummary], data)

    def study(self, study_id: str, *, pin: str | None = None) -> StudyDetail:
        """One study with every object, its deliveries and history."""
        return self._as(StudyDetail, self._call("GET", f"/studies/{quote(study_id)}", pin=pin))

    def history(self, object_id: str) -> list[HistoryEvent]:
        """One object's history, oldest first."""
        data = self._call("GET", f"/objects/{quote(object_id)}/history")
        return self._as(list[HistoryEvent], data)

    def alarms(self) -> list[AlarmView]:
        """The active alarms."""
        return self._as(list[AlarmView], self._call("GET", "/alarms"))

    def audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        """The audit log, newest first."""
        data = self._call("GET", "/audit", query={"limit": limit, "before": before})
        return self._as(list[AuditEntry], data)

    # -- actions ---------------------------------------------------------------------------

    def _destination_action(self, destination: str, verb: str, reason: str) -> ActionResult:
        data = self._call(
            "POST",
            f"/destinations/{quote(destination)}/{verb}",
            body=ActionRequest(reason=reason),
        )
        return self._as(ActionResult, data)

    def pause(self, destination: str, reason: str = "") -> ActionResult:
        """Stop sending to ``destination`` (survives restarts)."""
        return self._destination_action(destination, "pause", reason)

    def resume(self, destination: str, reason: str = "") -> ActionResult:
        """Send to ``destination`` again."""
        return self._destination_action(destination, "resume", reason)

    def retry(self, destination: str, reason: str = "") -> ActionResult:
        """Try ``destination`` now, cutting its backoff short."""
        return self._destination_action(destination, "retry", reason)

    def retry_failed(self, destination: str, reason: str = "") -> ActionResult:
        """Queue again what ``destination`` refused for good."""
        return self._destination_action(destination, "retry-failed", reason)

    def echo(self, destination: str) -> EchoResult:
        """C-ECHO ``destination`` from this unit."""
        data = self._call("POST", f"/destinations/{quote(destination)}/echo", body=ActionRequest())
        return self._as(EchoResult, data)

    def set_priority(self, study_id: str, priority: Priority, reason: str = "") -> ActionResult:
        """Change the priority of a study's copies not yet delivered."""
        # A plain dict: an unknown priority goes to the daemon, which explains the choices.
        body = {"reason": reason, "priority": priority}
        data = self._call("POST", f"/studies/{quote(study_id)}/priority", body=body)
        return self._as(ActionResult, data)

    def resend(
        self, study_id: str, destination: str, *, pin: str, reason: str = ""
    ) -> ActionResult:
        """Send a study again to ``destination`` (needs the operator PIN)."""
        body = ActionRequest(reason=reason, pin=pin, destination=destination)
        data = self._call("POST", f"/studies/{quote(study_id)}/resend", body=body)
        return self._as(ActionResult, data)

    def discard(self, study_id: str, *, pin: str, reason: str) -> ActionResult:
        """Give up a study's undelivered copies (needs the PIN and a reason)."""
        body = ActionRequest(reason=reason, pin=pin)
        data = self._call("POST", f"/studies/{quote(study_id)}/discard", body=body)
        return self._as(ActionResult, data)

    def check_pin(self, pin: str) -> bool:
        """Whether ``pin`` is the operator PIN (wrong PINs are rate-limited and audited)."""
        data = json.loads(self._call("POST", "/pin/check", body=ActionRequest(pin=pin)))
        return bool(isinstance(data, dict) and data.get("ok"))
