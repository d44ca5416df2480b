"""Destinations: each one's state, queue and reason, with pause, resume, retry and echo."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from router.control.schema import ActionResult, DestinationView, UnitStatus
from tui import wording
from tui.screens.base import ConsoleScreen
from tui.screens.dialogs import ConfirmScreen
from tui.text import ago, clock_time, destination_reason, destination_state

COLUMNS = (
    "Destination", "State", "Queue", "Studies", "STAT", "Refused", "Oldest", "Last sent",
    "Next try",
)  # fmt: skip


class DestinationsScreen(ConsoleScreen):
    """A table of destinations; the selected one's address and reason below it."""

    TITLE_TEXT = "Destinations"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause", "Pause", key_display="p"),
        Binding("r", "resume", "Resume", key_display="r"),
        Binding("t", "retry", "Try now", key_display="t"),
        Binding("f", "retry_failed", "Retry refused", key_display="f"),
        Binding("e", "echo", "Echo", key_display="e"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.views: list[DestinationView] = []

    def body(self) -> ComposeResult:
        table: DataTable[str] = DataTable(id="table", cursor_type="row", zebra_stripes=False)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="detail")

    def show(self, status: UnitStatus, data: object) -> None:
        self.views = list(status.destinations)
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        now, tz = status.now, self.console.tz
        for view in self.views:
            oldest = "-" if view.oldest_waiting_at is None else ago(now - view.oldest_waiting_at)
            nxt = "-" if view.next_retry_at is None else "in " + ago(view.next_retry_at - now)
            table.add_row(
                view.name,
                destination_state(view),
                str(view.queued_total),
                str(view.studies_waiting),
                str(view.queued.get("stat", 0)),
                str(view.failed),
                oldest,
                clock_time(view.last_success_at, now, tz),
                nxt,
                key=view.name,
            )
        if self.views:
            table.move_cursor(row=min(row, len(self.views) - 1))
        self._show_detail()

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def selected(self) -> DestinationView | None:
        """The destination under the cursor."""
        row = self.query_one(DataTable).cursor_row
        return self.views[row] if 0 <= row < len(self.views) else None

    def _show_detail(self) -> None:
        view = self.selected()
        if view is None:
            self.query_one("#detail", Static).update("No destinations are configured.")
            return
        lines = [f"{view.name}: {view.address or view.kind}   state {destination_state(view)}"]
        reason = destination_reason(view)
        if reason:
            lines.append(f"Why: {reason}")
        link = wording.hub_link(view)
        if link:
            lines.append(link)
        if view.last_error and view.last_error != reason:
            lines.append(f"Last error: {view.last_error}")
        if view.paused:
            lines.append(f"Paused by {view.paused_by or 'unknown'}: {view.paused_reason or '-'}")
        self.query_one("#detail", Static).update("\n".join(lines))

    def _confirm_then(
        self, question: Callable[[DestinationView], str], act: Callable[[str], ActionResult]
    ) -> None:
        view = self.selected()
        if view is None or not self.console.require_unlocked():
            return
        name = view.name

        def answered(yes: bool | None) -> None:
            if yes:
                self.console.perform(lambda: act(name))

        self.app.push_screen(ConfirmScreen(question(view)), answered)

    def action_pause(self) -> None:
        self._confirm_then(wording.pause_question, lambda n: self.console.source.pause(n))

    def action_resume(self) -> None:
        self._confirm_then(wording.resume_question, lambda n: self.console.source.resume(n))

    def action_retry(self) -> None:
        self._confirm_then(wording.retry_question, lambda n: self.console.source.retry(n))

    def action_retry_failed(self) -> None:
        view = self.selected()
        if view is not None and view.failed == 0:
            self.notify(f"{view.name} has refused nothing for good: nothing to retry.")
            return
        self._confirm_then(
            wording.retry_failed_question, lambda n: self.console.source.retry_failed(n)
        )

    def action_echo(self) -> None:
        # A C-ECHO changes nothing: allowed while locked.
        view = self.selected()
        if view is not None:
            name = view.name
            self.notify(f"Testing the connection to {name} ...")
            self.console.perform(lambda: self.console.source.echo(name))
