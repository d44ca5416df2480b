"""A PIN entry field that shows one star per character typed (no glyphs outside ASCII)."""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget


class PinField(Widget, can_focus=True):
    """Type the PIN; Backspace removes a character; Enter posts ``Submitted``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "submit", "OK", key_display="Enter")]
    DEFAULT_CSS = """
    PinField { height: 3; border: solid $foreground; padding: 0 1; }
    PinField:focus { border: double $accent; }
    """
    MAX_LENGTH = 32

    value: reactive[str] = reactive("")

    class Submitted(Message):
        """Enter was pressed in the field."""

        def __init__(self, field: PinField) -> None:
            super().__init__()
            self.field = field

    def render(self) -> str:
        return "*" * len(self.value) + ("_" if self.has_focus else "")

    def on_key(self, event: events.Key) -> None:
        if event.key == "backspace":
            self.value = self.value[:-1]
            event.stop()
        elif event.character and event.is_printable and len(self.value) < self.MAX_LENGTH:
            self.value += event.character
            event.stop()

    def action_submit(self) -> None:
        self.post_message(self.Submitted(self))
