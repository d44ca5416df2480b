"""Alarms: conditions somebody must see, newest first."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from router.control.schema import UnitStatus
from tui.screens.base import ConsoleScreen
from tui.text import ago, clock_time


class AlarmsScreen(ConsoleScreen):
    """The active alarms from the unit status."""

    TITLE_TEXT = "Alarms"

    def body(self) -> ComposeResult:
        yield Static("", id="summary")
        table: DataTable[str] = DataTable(id="table", cursor_type="row")
        table.add_columns("Since", "For", "Times", "What")
        yield table

    def show(self, status: UnitStatus, data: object) -> None:
        alarms = sorted(status.alarms, key=lambda a: a.raised_at, reverse=True)
        self.query_one("#summary", Static).update(
            f"!! {len(alarms)} active alarm(s). Each says what is wrong and what to do."
            if alarms
            else "OK No active alarms."
        )
        table = self.query_one(DataTable)
        table.clear()
        for alarm in alarms:
            table.add_row(
                clock_time(alarm.raised_at, status.now, self.console.tz),
                ago(status.now - alarm.raised_at),
                str(alarm.count),
                alarm.message,
            )
