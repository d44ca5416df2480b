"""What every console screen shares: the top bar, the not-responding panel, the footer, and
the two halves of a refresh: ``fetch`` (in a thread worker) and ``show`` (on the UI thread)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer

from router.control.schema import UnitStatus
from tui.source import ControlSource
from tui.widgets.topbar import TopBar
from tui.widgets.unreachable import UnreachablePanel

if TYPE_CHECKING:
    from tui.app import ConsoleApp


class ConsoleScreen(Screen[None]):
    """A screen of the console. Subclasses fill ``body`` and may override fetch/show."""

    TITLE_TEXT = ""
    last_error = ""

    @property
    def console(self) -> ConsoleApp:
        """The app, typed."""
        return cast("ConsoleApp", self.app)

    def compose(self) -> ComposeResult:
        yield TopBar(self.TITLE_TEXT)
        with Vertical(classes="body"):
            yield from self.body()
        yield UnreachablePanel(id="unreachable")
        yield Footer(compact=True)

    def body(self) -> ComposeResult:
        """The screen's own widgets."""
        yield from ()

    def on_screen_resume(self) -> None:
        # Coming back to a screen: show what is known now and ask for fresh data at once.
        self.console.redraw_chrome()
        if self.console.status is not None:
            self.show(self.console.status, None)
        self.console.refresh_data()

    def fetch(self, source: ControlSource, pin: str | None) -> object:
        """Read what this screen needs beyond the unit status. Runs in a thread worker."""
        return None

    def show(self, status: UnitStatus, data: object) -> None:
        """Draw the latest data (``data`` is what ``fetch`` returned, or None)."""

    def show_error(self, message: str) -> None:
        """The screen's own data could not be read; the unit status could. Said once, not at
        every refresh while it lasts."""
        if message != self.last_error:
            self.last_error = message
            self.notify(message, title="Could not read", severity="error")

    def clear_error(self) -> None:
        """The screen's data was read again."""
        self.last_error = ""
