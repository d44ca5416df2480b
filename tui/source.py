"""What the console needs from the daemon: the control client's methods, as a Protocol.

The real :class:`router.control.client.ControlClient` satisfies it; tests feed canned data
through a fake with the same methods. Every method may raise ``ControlUnreachable`` (the
daemon does not answer) or ``ControlError`` (it answered with an error, in plain words).
Calls block, so the console makes them only from thread workers, never the UI thread.
"""

from __future__ import annotations

from typing import Protocol

from router.control.client import ControlError, ControlUnreachable
from router.control.schema import (
    ActionResult,
    AlarmView,
    AuditEntry,
    DestinationView,
    EchoResult,
    HistoryEvent,
    Priority,
    StudyDetail,
    StudySummary,
    UnitStatus,
)

__all__ = ["ControlError", "ControlSource", "ControlUnreachable"]


class ControlSource(Protocol):
    """The control API as the console uses it."""

    def status(self) -> UnitStatus: ...

    def destinations(self) -> list[DestinationView]: ...

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
    ) -> list[StudySummary]: ...

    def study(self, study_id: str, *, pin: str | None = None) -> StudyDetail: ...

    def history(self, object_id: str) -> list[HistoryEvent]: ...

    def alarms(self) -> list[AlarmView]: ...

    def audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]: ...

    def pause(self, destination: str, reason: str = "") -> ActionResult: ...

    def resume(self, destination: str, reason: str = "") -> ActionResult: ...

    def retry(self, destination: str, reason: str = "") -> ActionResult: ...

    def retry_failed(self, destination: str, reason: str = "") -> ActionResult: ...

    def echo(self, destination: str) -> EchoResult: ...

    def set_priority(self, study_id: str, priority: Priority, reason: str = "") -> ActionResult: ...

    def resend(
        self, study_id: str, destination: str, *, pin: str, reason: str = ""
    ) -> ActionResult: ...

    def discard(self, study_id: str, *, pin: str, reason: str) -> ActionResult: ...

    def check_pin(self, pin: str) -> bool: ...
