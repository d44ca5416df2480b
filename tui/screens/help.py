"""Help: every key, and what the states mean."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

HELP = """\
WAYSTATION CONSOLE - KEYS                              (Esc or ? closes)

Everywhere:  1 Overview  2 Destinations  3 Studies  4 Alarms  5 Audit log
             ? this help   u unlock (PIN) / lock   q quit
             Up/Down move, PgUp/PgDn scroll, Tab next field

Destinations (2): p pause  r resume  t try now  f retry refused  e echo test
Studies (3):  Enter open   / search   s state filter   o order   p priority
Study:        p priority   r send again (PIN)   x discard (PIN, reason)  Esc back

The console starts LOCKED: you can look, not change. u and the operator PIN
unlock it: then changes are allowed and patient names show. It locks itself
again after 2 minutes without a key press. Every change asks y/N first and
says what will happen; only y does it. Every change is in the audit log.

Banner:  OK  all studies delivered     >>  sending now
         !!  attention: something needs you; the line says what
         ??  state not known yet

Destination states:
  OK       nothing waiting            SENDING  sending now
  WAITING  failed, will try again     PAUSED   stopped by an operator
  DOWN     not answering              BLOCKED  refuses this unit: call IT
Studies flagged *STAT* go first. Studies wait safely on this unit's disk
until every destination has them."""


class HelpScreen(ModalScreen[None]):
    """The keys and states, on one screen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Close", key_display="Esc"),
        Binding("question_mark", "app.pop_screen", "Close", key_display="?", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(HELP)
        yield Footer()
