"""One study: who, what, and every object's deliveries and history; resend, discard, priority."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from router.control.schema import HistoryEvent, StudyDetail, UnitStatus
from tui import wording
from tui.screens.base import ConsoleScreen
from tui.screens.dialogs import ChoiceScreen, PinAnswer, PinScreen
from tui.screens.studies import ask_priority, priority_flag
from tui.source import ControlSource
from tui.text import clock_time, mask, plural, size


class StudyDetailScreen(ConsoleScreen):
    """Opened from Studies with Enter; Esc goes back."""

    TITLE_TEXT = "Studies"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", key_display="Esc"),
        Binding("p", "priority", "Priority", key_display="p"),
        Binding("r", "resend", "Send again", key_display="r"),
        Binding("x", "discard", "Discard", key_display="x"),
    ]

    def __init__(self, study_id: str) -> None:
        super().__init__()
        self.study_id = study_id
        self.detail: StudyDetail | None = None

    def body(self) -> ComposeResult:
        with VerticalScroll(id="scroll"):
            yield Static("Reading the study ...", id="study")

    def on_mount(self) -> None:
        self.query_one("#scroll").focus()

    def fetch(self, source: ControlSource, pin: str | None) -> object:
        return source.study(self.study_id, pin=pin)

    def show(self, status: UnitStatus, data: object) -> None:
        if isinstance(data, StudyDetail):
            self.detail = data
        if self.detail is not None:
            text = study_text(self.detail, status.now, self.console)
            self.query_one("#study", Static).update(text)

    def show_error(self, message: str) -> None:
        # Typically: the study is no longer on the unit (discarded, then deleted).
        self.query_one("#study", Static).update(f"!! {message}\n\nPress Esc to go back.")
        super().show_error(message)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_priority(self) -> None:
        if self.detail is not None:
            ask_priority(self, self.detail.summary)

    def action_resend(self) -> None:
        if self.detail is None:
            return
        summary = self.detail.summary
        status = self.console.status
        names = [d.name for d in status.destinations] if status else []
        names = names or list(summary.destinations)
        if not names:
            self.notify("No destination to send to.", severity="warning")
            return
        console = self.console

        def chosen(destination: str | None) -> None:
            if destination is None:
                return
            question = (
                f"Send study {wording.study_label(summary)} again to {destination}?\n"
                f"All {plural(summary.objects, 'object')} will be queued for {destination}, "
                "even those it already has."
            )

            def with_pin(answer: PinAnswer | None) -> None:
                if answer is not None:
                    console.perform(
                        lambda: console.source.resend(
                            summary.study_id, destination, pin=answer.pin, reason=answer.reason
                        )
                    )

            console.push_screen(PinScreen(question), with_pin)

        options = [(n, n) for n in names]
        console.push_screen(ChoiceScreen("Send the study again to:", options), chosen)

    def action_discard(self) -> None:
        if self.detail is None:
            return
        summary = self.detail.summary
        waiting = wording.undelivered(summary)
        console = self.console
        question = (
            f"DISCARD study {wording.study_label(summary)}?\n"
            f"Its {plural(waiting, 'copy', 'copies')} not yet delivered will never be sent, "
            "and its objects are deleted from this unit after the retention time.\n"
            "This cannot be undone."
        )

        def with_pin(answer: PinAnswer | None) -> None:
            if answer is not None:
                console.perform(
                    lambda: console.source.discard(
                        summary.study_id, pin=answer.pin, reason=answer.reason
                    )
                )

        console.push_screen(PinScreen(question, ask_reason=True), with_pin)


def study_text(detail: StudyDetail, now: float, console: object) -> str:
    """The study as lines of text: summary, then each object with deliveries and history."""
    tz = getattr(console, "tz", None)
    s = detail.summary
    flag = priority_flag(s.priority)
    lines = [
        f"Patient {mask(s.patient_name, s.masked)}   ID {mask(s.patient_id, s.masked)}"
        + ("   (locked: names hidden)" if s.masked else ""),
        f"Study {s.study_date or '-'}  {'/'.join(s.modalities)}  {s.description or '-'}"
        f"   accession {mask(s.accession, s.masked)}",
        f"{plural(s.objects, 'object')}, state {s.state}"
        + (f", priority {flag}" if flag else ", priority routine")
        + f", received {clock_time(s.first_received_at, now, tz)}"
        f" to {clock_time(s.last_received_at, now, tz)}",
    ]
    for name, counts in s.destinations.items():
        lines.append(
            f"  -> {name}: {counts.delivered} delivered, {counts.pending} waiting, "
            f"{counts.inflight} sending, {counts.failed} refused, {counts.discarded} discarded"
        )
    history: dict[str, list[HistoryEvent]] = {}
    for event in detail.history:
        history.setdefault(event.object_id, []).append(event)
    for n, obj in enumerate(detail.objects, start=1):
        lines.append("")
        lines.append(
            f"Object {n}: {obj.modality} {obj.sop_class}, {size(obj.size)}, from "
            f"{obj.calling_ae}, received {clock_time(obj.received_at, now, tz, seconds=True)}"
        )
        for d in obj.deliveries:
            retry = (
                f", next try {clock_time(d.next_attempt_at, now, tz, seconds=True)}"
                if d.next_attempt_at
                else ""
            )
            error = f": {d.last_error}" if d.last_error else ""
            lines.append(
                f"  -> {d.destination}: {d.state.upper()} after "
                f"{plural(d.attempts, 'attempt')}{retry}{error}"
            )
        for event in history.get(obj.object_id, []):
            lines.append(f"     {clock_time(event.at, now, tz, seconds=True)}  {event_text(event)}")
    return "\n".join(lines)


def event_text(event: HistoryEvent) -> str:
    """A history event in one line: its name, then its details as key=value."""
    details = ", ".join(f"{k} {v}" for k, v in event.detail.items())
    return f"{event.event}" + (f" ({details})" if details else "")
