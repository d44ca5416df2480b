"""The Waystation console: a Textual app that reads the daemon's control API and nothing else.

It refreshes about every ``refresh_seconds`` in a thread worker (the UI never waits on the
socket, and the router never waits on the console: it is a separate process). It starts
locked - read only, patient names masked - and locks again after ``relock_seconds`` without a
key press.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any, ClassVar

from textual import events, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.scrollbar import ScrollBar
from textual.worker import get_current_worker

from router.control.schema import ActionResult, EchoResult, UnitStatus
from tui.glyphs import ConsoleScrollBarRender
from tui.screens.alarms import AlarmsScreen
from tui.screens.audit import AuditScreen
from tui.screens.base import ConsoleScreen
from tui.screens.commissioning import CommissioningScreen
from tui.screens.destinations import DestinationsScreen
from tui.screens.dialogs import PinAnswer, PinScreen
from tui.screens.help import HelpScreen
from tui.screens.overview import OverviewScreen
from tui.screens.studies import StudiesScreen
from tui.setup_notice import read_notice
from tui.source import ControlError, ControlSource, ControlUnreachable
from tui.widgets.topbar import TopBar
from tui.widgets.unreachable import UnreachablePanel

# The console font has no eighth-blocks: scrollbars use whole cells.
ScrollBar.renderer = ConsoleScrollBarRender


def describe(exc: Exception) -> str:
    """An error from the control client in one line of plain words."""
    if isinstance(exc, ControlError):
        hint = f" {exc.error.hint}" if exc.error.hint else ""
        return f"{exc.error.message}{hint}"
    return str(exc) or type(exc).__name__


def is_refusal(exc: Exception) -> bool:
    """The daemon answers but will not serve this user (not an operator): not an outage."""
    return isinstance(exc, ControlError) and exc.http_status == 403


class ConsoleApp(App[None]):
    """The console. ``source`` is the control client (or a fake with the same methods)."""

    CSS_PATH = "console.tcss"
    ENABLE_COMMAND_PALETTE = False
    TITLE = "Waystation"
    MODES: ClassVar[dict[str, Any]] = {
        "overview": OverviewScreen,
        "destinations": DestinationsScreen,
        "studies": StudiesScreen,
        "alarms": AlarmsScreen,
        "audit": AuditScreen,
    }
    DEFAULT_MODE = "overview"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "goto('overview')", "Overview", show=False),
        Binding("2", "goto('destinations')", "Destinations", show=False),
        Binding("3", "goto('studies')", "Studies", show=False),
        Binding("4", "goto('alarms')", "Alarms", show=False),
        Binding("5", "goto('audit')", "Audit log", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("u", "unlock", "Unlock", key_display="u"),
        Binding("u", "lock", "Lock", key_display="u"),
        Binding("q", "quit", "Quit", key_display="q"),
        Binding("c", "commission", "Set up", show=False),
    ]

    def __init__(
        self,
        source: ControlSource,
        *,
        socket_label: str = "",
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
        refresh_seconds: float = 2.0,
        relock_seconds: float = 120.0,
        setup_notice: Path | None = None,
        setup_inbox: Path | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.setup_notice = setup_notice
        self.setup_inbox = setup_inbox
        self.socket_label = socket_label
        self.clock = clock
        self.tz = tz
        self.refresh_seconds = refresh_seconds
        self.relock_seconds = relock_seconds
        self.status: UnitStatus | None = None
        self.fetched_at: float | None = None
        self.lost_reason: str | None = None
        self.lost_refused = False
        self.pin: str | None = None
        self.last_input_at = clock()
        self._fetching = False

    # -- refresh -------------------------------------------------------------------------------

    def on_mount(self) -> None:
        # The terminal's own 16 colours: what the Linux text console has, used as it is.
        self.theme = "ansi-dark"
        self.set_interval(self.refresh_seconds, self.refresh_data)
        self.set_interval(1.0, self.tick)

    def data_screen(self) -> ConsoleScreen | None:
        """The screen whose data is refreshed: the top console screen under any dialog."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ConsoleScreen):
                return screen
        return None

    def refresh_data(self) -> None:
        """Start reading status (and the current screen's data) unless a read is under way."""
        screen = self.data_screen()
        if screen is None or self._fetching:
            return
        self._fetching = True
        self._fetch(screen, self.pin)

    @work(thread=True, group="refresh", exit_on_error=False)
    def _fetch(self, screen: ConsoleScreen, pin: str | None) -> None:
        try:
            try:
                status = self.source.status()
            except Exception as exc:  # any failure to read must show, never freeze the screen
                self.call_from_thread(self._lost, describe(exc), refused=is_refusal(exc))
                return
            data: object = None
            error = ""
            try:
                data = screen.fetch(self.source, pin)
            except Exception as exc:
                error = describe(exc)
            if not get_current_worker().is_cancelled:
                self.call_from_thread(self._apply, screen, status, data, error)
        finally:
            self._fetching = False

    def _apply(self, screen: ConsoleScreen, status: UnitStatus, data: object, error: str) -> None:
        self.status = status
        self.fetched_at = self.clock()
        self.lost_reason = None
        self.set_class(False, "-lost")
        if screen.is_attached:
            screen.show(status, data)
            if error:
                screen.show_error(error)
            else:
                screen.clear_error()
        self.redraw_chrome()

    def _lost(self, reason: str, *, refused: bool = False) -> None:
        self.lost_reason = reason
        self.lost_refused = refused
        self.set_class(True, "-lost")
        self.redraw_chrome()

    def tick(self) -> None:
        """Every second: lock again when idle, and keep "updated N s ago" true."""
        if self.pin is not None and self.clock() - self.last_input_at >= self.relock_seconds:
            self.lock(f"Locked again after {int(self.relock_seconds)} s without a key press.")
        self.redraw_chrome()

    def redraw_chrome(self) -> None:
        """Redraw the top bar and the not-responding panel of the current screen."""
        screen = self.data_screen()
        if screen is None or not screen.is_attached:
            return
        now = self.clock()
        for bar in screen.query(TopBar):
            bar.show(self.status, self.fetched_at, now, locked=self.pin is None)
        if self.lost_reason is not None:
            for panel in screen.query(UnreachablePanel):
                panel.show(
                    self.lost_reason,
                    self.fetched_at,
                    now,
                    self.socket_label,
                    refused=self.lost_refused,
                    setup_problems=read_notice(self.setup_notice),
                    can_set_up=self.setup_inbox is not None,
                )

    def action_commission(self) -> None:
        """The commissioning screen: only while the unit is not set up and can take answers."""
        if self.setup_inbox is None or self.lost_reason is None:
            return
        if read_notice(self.setup_notice) is None:
            return
        inbox = self.setup_inbox

        def done(handed_over: bool | None) -> None:
            if handed_over:
                self.notify("Answers handed to the unit; it checks them now.", timeout=10)

        self.push_screen(CommissioningScreen(inbox), done)

    # -- keys, locking -------------------------------------------------------------------------

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown):
            self.last_input_at = self.clock()
        await super().on_event(event)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While a dialog asks a question, its keys are the only keys.
        if isinstance(self.screen, ModalScreen) and action in {"goto", "help", "lock", "unlock"}:
            return False
        if action == "unlock":
            return self.pin is None
        if action == "lock":
            return self.pin is not None
        return True

    def action_goto(self, mode: str) -> None:
        self.switch_mode(mode)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_lock(self) -> None:
        self.lock("Locked: read only, patient names hidden.")

    def action_unlock(self) -> None:
        question = (
            "Unlock the console: allows pause, resume, retry and priority\n"
            "changes, and shows patient names. Type the operator PIN."
        )
        self.push_screen(PinScreen(question), self._unlock_with)

    def _unlock_with(self, answer: PinAnswer | None) -> None:
        if answer is not None:
            self._check_pin(answer.pin)

    @work(thread=True, group="action", exit_on_error=False)
    def _check_pin(self, pin: str) -> None:
        try:
            ok = self.source.check_pin(pin)
        except (ControlUnreachable, ControlError) as exc:
            self.call_from_thread(self.notify, describe(exc), severity="error")
            return
        self.call_from_thread(self._unlocked if ok else self._wrong_pin, pin)

    def _unlocked(self, pin: str) -> None:
        self.pin = pin
        self.last_input_at = self.clock()
        self.refresh_bindings()
        minutes = self.relock_seconds / 60
        self.notify(f"Unlocked. Locks again after {minutes:g} min without a key press.")
        self.redraw_chrome()
        self.refresh_data()

    def _wrong_pin(self, _: str) -> None:
        self.notify("Wrong PIN: the console stays locked.", severity="error")

    def lock(self, message: str) -> None:
        """Forget the PIN: read only again, patient names masked at the next refresh."""
        self.pin = None
        self.refresh_bindings()
        self.notify(message)
        self.redraw_chrome()
        self.refresh_data()

    def require_unlocked(self) -> bool:
        """True when changes are allowed; otherwise says how to unlock."""
        if self.pin is None:
            self.notify(
                "Locked: press u and type the operator PIN to make changes.", severity="warning"
            )
            return False
        return True

    # -- actions -------------------------------------------------------------------------------

    def perform(self, call: Callable[[], ActionResult | EchoResult]) -> None:
        """Run an action against the daemon in a thread; report its outcome; refresh."""
        self._perform(call)

    @work(thread=True, group="action", exit_on_error=False)
    def _perform(self, call: Callable[[], ActionResult | EchoResult]) -> None:
        try:
            result = call()
        except (ControlUnreachable, ControlError) as exc:
            self.call_from_thread(self.notify, describe(exc), title="Not done", severity="error")
            return
        severity = "information" if result.ok else "error"
        self.call_from_thread(self.notify, result.message, severity=severity)
        self.call_from_thread(self.refresh_data)
