"""Modal questions: y/N confirmation, a numbered choice, and the operator PIN (with a reason).

Every one answers from the keyboard alone and says which keys do what in its own text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from tui.widgets.pin_field import PinField


class ConfirmScreen(ModalScreen[bool]):
    """ "What will happen - y/N". Only y confirms; n, Escape and Enter answer no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes, do it", key_display="y"),
        Binding("n", "answer(False)", "No", key_display="n"),
        Binding("escape", "answer(False)", "No", show=False),
        Binding("enter", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, id="question")
            yield Static("Press y to do it, n (or Esc) to leave everything as it is.  [y/N]")
        yield Footer(compact=True)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ChoiceScreen(ModalScreen[str | None]):
    """A short numbered list: press 1-9 to choose, Esc to cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", key_display="Esc")
    ]

    def __init__(self, title: str, options: Sequence[tuple[str, str]]) -> None:
        """``options`` are (value, label) pairs, at most nine."""
        super().__init__()
        self.title_text = title
        self.options = list(options[:9])

    def compose(self) -> ComposeResult:
        lines = [f"  {n}  {label}" for n, (_, label) in enumerate(self.options, start=1)]
        with Vertical(classes="dialog"):
            yield Static(self.title_text, id="question")
            yield Static("\n".join(lines))
            yield Static("Press the number to choose, Esc to cancel.")
        yield Footer(compact=True)

    def on_key(self, event: events.Key) -> None:
        character = event.character
        if character and character.isdigit() and 1 <= int(character) <= len(self.options):
            self.dismiss(self.options[int(character) - 1][0])

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class PinAnswer:
    """What the operator typed: the PIN (sent to the daemon, which decides) and a reason."""

    pin: str
    reason: str = ""


class PinScreen(ModalScreen[PinAnswer | None]):
    """Ask for the operator PIN and, where the action records one, a reason."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", key_display="Esc"),
        Binding("tab", "app.focus_next", "Next field", key_display="Tab", show=False),
    ]

    def __init__(self, question: str, *, ask_reason: bool = False) -> None:
        super().__init__()
        self.question = question
        self.ask_reason = ask_reason

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, id="question")
            yield Static("Operator PIN:")
            yield PinField(id="pin")
            if self.ask_reason:
                yield Static("Reason (required, kept in the audit log):")
                yield Input(id="reason", placeholder="why")
            yield Static("", id="problem")
            yield Static("Enter: OK   Tab: next field   Esc: cancel")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(PinField).focus()

    def on_pin_field_submitted(self, _: PinField.Submitted) -> None:
        if self.ask_reason:
            self.query_one("#reason", Input).focus()
        else:
            self._finish()

    def on_input_submitted(self, _: Input.Submitted) -> None:
        self._finish()

    def _finish(self) -> None:
        pin = self.query_one(PinField).value
        reason = self.query_one("#reason", Input).value.strip() if self.ask_reason else ""
        problem = self.query_one("#problem", Static)
        if not pin:
            problem.update("!! Type the PIN first.")
            self.query_one(PinField).focus()
        elif self.ask_reason and not reason:
            problem.update("!! Type a reason first.")
        else:
            self.dismiss(PinAnswer(pin, reason))

    def action_cancel(self) -> None:
        self.dismiss(None)
