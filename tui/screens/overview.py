"""The first screen: is everything delivered, and if not, what is wrong and what to do."""

from __future__ import annotations

import textwrap
from datetime import tzinfo

from textual.app import ComposeResult
from textual.widgets import Static

from router.control.schema import DestinationView, UnitStatus
from tui.screens.base import ConsoleScreen
from tui.text import (
    ago,
    clock_time,
    destination_reason,
    destination_state,
    health_line,
    outlook_line,
    plural,
    spool_line,
)

HEADER = (
    f"{'Destination':<14}{'State':<9}{'Queue':>6}  {'Oldest':<10}{'Last sent':<12}{'Next try':<9}"
)


class OverviewScreen(ConsoleScreen):
    """Destinations with reasons, today's counts, disk, health and the unit's identity."""

    TITLE_TEXT = "Overview"

    def body(self) -> ComposeResult:
        yield Static("", id="destinations")
        yield Static("", id="today")
        yield Static("", id="disk")
        yield Static("", id="health")
        yield Static("", id="unit")

    def show(self, status: UnitStatus, data: object) -> None:
        now, tz = status.now, self.console.tz
        width = max(40, (self.size.width or 80) - 4)
        self.query_one("#destinations", Static).update(destination_rows(status, width, tz))
        last = status.last_received_at
        last_text = (
            "nothing yet"
            if last is None
            else (f"{clock_time(last, now, tz)} ({ago(now - last)} ago)")
        )
        today = (
            f"Today: {plural(status.received_today, 'study', 'studies')} received, "
            f"{status.delivered_today} delivered. Last received: {last_text}"
        )
        if status.unrouted:
            unrouted = plural(status.unrouted, "study", "studies")
            today += f"\n!! {unrouted} matched no route: see 3 Studies"
        self.query_one("#today", Static).update(today)
        self.query_one("#disk", Static).update(
            f"Disk: {spool_line(status.spool)}\n      {outlook_line(status.spool)}"
        )
        alarms = f"   Alarms: {len(status.alarms)} (see 4)" if status.alarms else ""
        self.query_one("#health", Static).update(health_line(status.health) + alarms)
        addresses = ", ".join(status.addresses) or "address not known"
        self.query_one("#unit", Static).update(
            f"Unit {status.unit_name}   AE title {status.ae_title}   listening on {status.listen}\n"
            f"Address {addresses}   version {status.version}"
        )


def destination_rows(status: UnitStatus, width: int, tz: tzinfo | None) -> str:
    """The destination table as text, with each problem's reason wrapped underneath."""
    if not status.destinations:
        return "No destinations are configured. Call IT to set one up."
    lines = [HEADER]
    for view in status.destinations:
        lines.append(destination_row(view, status.now, tz))
        reason = destination_reason(view)
        if view.failed:
            refused = plural(view.failed, "object")
            reason = f"{reason} {refused} refused for good: see 2 Destinations.".strip()
        if (reason and view.state != "idle") or view.failed:
            lines.extend(
                textwrap.wrap(reason, width, initial_indent="  -> ", subsequent_indent="     ")
            )
    return "\n".join(lines)


def destination_row(view: DestinationView, now: float, tz: tzinfo | None) -> str:
    """One destination's line: name, state, queue, oldest waiting, last success, next retry."""
    oldest = "-" if view.oldest_waiting_at is None else ago(now - view.oldest_waiting_at)
    next_try = "-" if view.next_retry_at is None else "in " + ago(view.next_retry_at - now)
    return (
        f"{view.name[:13]:<14}{destination_state(view):<9}{view.queued_total:>6}  {oldest:<10}"
        f"{clock_time(view.last_success_at, now, tz):<12}{next_try:<9}"
    )
