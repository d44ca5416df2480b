"""Studies: newest first, filter by words and state, sort, STAT flagged in text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Input, Static

from router.control.schema import PRIORITIES, Priority, StudySummary, UnitStatus
from tui import wording
from tui.screens.base import ConsoleScreen
from tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from tui.source import ControlSource
from tui.text import clock_time, mask

STATES: tuple[str | None, ...] = (None, "sending", "waiting", "failed", "unrouted", "delivered")
SORTS = (
    ("-last_received", "newest first"),
    ("last_received", "oldest first"),
    ("state", "by state"),
    ("-objects", "most objects first"),
)
PRIORITY_FLAGS = {"stat": "*STAT*", "urgent": "URGENT", "routine": "", "bulk": "bulk"}
COLUMNS = ("Priority", "State", "Patient", "Date", "Mod", "Obj", "Received", "Description")


@dataclass(frozen=True)
class StudyQuery:
    """The list's filter and sort, as sent to the daemon."""

    text: str = ""
    state: str | None = None
    sort: str = "-last_received"


def priority_flag(priority: str) -> str:
    """STAT (and the other non-routine priorities) written out, not coloured."""
    return PRIORITY_FLAGS.get(priority, priority)


class StudiesScreen(ConsoleScreen):
    """The studies list; Enter opens a study with every object's history."""

    TITLE_TEXT = "Studies"
    AUTO_FOCUS = "#table"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", key_display="Enter"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("s", "next_state", "State filter", key_display="s"),
        Binding("o", "next_sort", "Order", key_display="o"),
        Binding("p", "priority", "Priority", key_display="p"),
        Binding("escape", "clear", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_state = StudyQuery()
        self.rows: list[StudySummary] = []

    def body(self) -> ComposeResult:
        yield Static("", id="filter")
        yield Input(placeholder="words to find, then Enter (Esc clears)", id="search")
        table: DataTable[str] = DataTable(id="table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table

    def on_mount(self) -> None:
        self.query_one("#search", Input).display = False
        self._show_filter()

    def fetch(self, source: ControlSource, pin: str | None) -> object:
        q = self.query_state
        return source.studies(state=q.state, query=q.text or None, sort=q.sort, limit=200, pin=pin)

    def show(self, status: UnitStatus, data: object) -> None:
        if not isinstance(data, list):
            return
        self.rows = data
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for s in self.rows:
            table.add_row(
                priority_flag(s.priority),
                s.state,
                mask(s.patient_name, s.masked)[:18],
                s.study_date or "-",
                "/".join(s.modalities)[:5],
                str(s.objects),
                clock_time(s.last_received_at, status.now, self.console.tz),
                s.description[:20],
                key=s.study_id,
            )
        if self.rows:
            table.move_cursor(row=min(row, len(self.rows) - 1))
        self._show_filter()

    def _show_filter(self) -> None:
        q = self.query_state
        sort = dict(SORTS).get(q.sort, q.sort)
        words = f'"{q.text}"' if q.text else "any"
        self.query_one("#filter", Static).update(
            f"Showing: state {q.state or 'all'}, words {words}, {sort}. {len(self.rows)} studies."
        )

    def selected(self) -> StudySummary | None:
        """The study under the cursor."""
        row = self.query_one(DataTable).cursor_row
        return self.rows[row] if 0 <= row < len(self.rows) else None

    def _requery(self, query: StudyQuery) -> None:
        self.query_state = query
        self._show_filter()
        self.console.refresh_data()

    def action_open(self) -> None:
        from tui.screens.study_detail import StudyDetailScreen

        study = self.selected()
        if study is not None:
            self.app.push_screen(StudyDetailScreen(study.study_id))

    def on_data_table_row_selected(self, _: DataTable.RowSelected) -> None:
        self.action_open()

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.display = True
        search.value = self.query_state.text
        search.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.query_one(DataTable).focus()
        q = self.query_state
        self._requery(StudyQuery(event.value.strip(), q.state, q.sort))

    def action_clear(self) -> None:
        self.query_one("#search", Input).display = False
        self.query_one(DataTable).focus()
        self._requery(StudyQuery(sort=self.query_state.sort))

    def action_next_state(self) -> None:
        q = self.query_state
        state = STATES[(STATES.index(q.state) + 1) % len(STATES)]
        self._requery(StudyQuery(q.text, state, q.sort))

    def action_next_sort(self) -> None:
        q = self.query_state
        keys = [k for k, _ in SORTS]
        sort = keys[(keys.index(q.sort) + 1) % len(keys)] if q.sort in keys else keys[0]
        self._requery(StudyQuery(q.text, q.state, sort))

    def action_priority(self) -> None:
        study = self.selected()
        if study is not None:
            ask_priority(self, study)


def ask_priority(screen: ConsoleScreen, study: StudySummary) -> None:
    """Choose a priority, confirm what it does, then set it (only when unlocked)."""
    console = screen.console
    if not console.require_unlocked():
        return
    options = [(p, p.upper()) for p in PRIORITIES]

    def chosen(priority: str | None) -> None:
        if priority is None:
            return
        level: Priority = next(p for p in PRIORITIES if p == priority)

        def answered(yes: bool | None) -> None:
            if yes:
                console.perform(lambda: console.source.set_priority(study.study_id, level))

        console.push_screen(ConfirmScreen(wording.priority_question(study, level)), answered)

    console.push_screen(
        ChoiceScreen(f"Priority for {wording.study_label(study)}:", options), chosen
    )
