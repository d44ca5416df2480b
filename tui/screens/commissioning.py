"""The commissioning screen: the few answers a unit without a configuration needs (unit name,
AE title, listen port, one destination, the operator PIN). Tab moves between fields; Ctrl+S
hands them to the unit; Esc leaves without changing anything."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from tui.setup_answers import Answers, problems, submit

FIELDS = [
    ("unit_name", "Unit name (shown on this screen and in the report)", "clinic-a", False),
    ("ae_title", "This unit's AE title (the modalities send to it)", "WAYSTATION", False),
    ("port", "Listen port (104, or 11112)", "104", False),
    ("destination_name", "Destination name", "pacs", False),
    ("destination_ae", "The PACS's AE title", "", False),
    ("destination_host", "The PACS's address (IP or name)", "", False),
    ("destination_port", "The PACS's port", "104", False),
    ("pin", "Operator PIN (at least 4 digits)", "", True),
    ("pin_again", "The PIN again", "", True),
]


class CommissioningScreen(ModalScreen[bool]):
    """Answers -> the unit's first-boot inbox. Dismisses True once handed over."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "submit", "Set up the unit", key_display="Ctrl+S"),
        Binding("escape", "cancel", "Leave", key_display="Esc"),
    ]

    def __init__(self, inbox: Path) -> None:
        super().__init__()
        self.inbox = inbox

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="commissioning"):
            yield Static("SET UP THIS UNIT", id="question")
            yield Static("Tab: next field.  Ctrl+S: set up the unit.  Esc: leave.")
            # Above the fields: what is wrong must be seen without scrolling.
            yield Static("", id="problem")
            for name, label, default, secret in FIELDS:
                yield Static(label)
                yield Input(value=default, password=secret, id=name)
        yield Footer(compact=True)

    def answers(self) -> Answers:
        """What is typed now."""
        values = {name: self.query_one(f"#{name}", Input).value for name, *_ in FIELDS}
        return Answers(**values)

    def action_submit(self) -> None:
        answers = self.answers()
        found = problems(answers)
        if found:
            self.query_one("#problem", Static).update("\n".join(f"! {p}" for p in found))
            return
        try:
            submit(self.inbox, answers)
        except OSError as exc:
            self.query_one("#problem", Static).update(
                f"! The unit did not take the answers: {exc.strerror or exc}. Call IT support."
            )
            return
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
