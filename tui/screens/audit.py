"""The audit log: who did what, when and why (read from the daemon's append-only log)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable

from router.control.schema import AuditEntry, UnitStatus
from tui.screens.base import ConsoleScreen
from tui.source import ControlSource
from tui.text import clock_time


class AuditScreen(ConsoleScreen):
    """The latest 100 operator actions, newest first."""

    TITLE_TEXT = "Audit log"

    def body(self) -> ComposeResult:
        table: DataTable[str] = DataTable(id="table", cursor_type="row")
        table.add_columns("#", "When", "Who", "Action", "Target", "Outcome", "Reason")
        yield table

    def fetch(self, source: ControlSource, pin: str | None) -> object:
        return source.audit(limit=100)

    def show(self, status: UnitStatus, data: object) -> None:
        if not isinstance(data, list):
            return
        entries: list[AuditEntry] = sorted(data, key=lambda e: e.seq, reverse=True)
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for e in entries:
            table.add_row(
                str(e.seq),
                clock_time(e.at, status.now, self.console.tz),
                e.user,
                e.action,
                e.target,
                e.outcome,
                e.reason,
            )
        if entries:
            table.move_cursor(row=min(row, len(entries) - 1))
