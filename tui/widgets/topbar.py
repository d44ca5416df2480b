"""The three lines at the top of every screen: banner, screens to go to, lock and freshness."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from router.control.schema import UnitStatus
from tui.text import ago, banner_line

STALE_AFTER = 10.0  # seconds; refreshes come every 2 s

SCREENS = (
    ("1", "Overview"),
    ("2", "Destinations"),
    ("3", "Studies"),
    ("4", "Alarms"),
    ("5", "Audit log"),
)


def nav_line(current: str) -> str:
    """The screen keys, the current one in brackets (so it shows without colour)."""
    return "".join(
        f"[{key} {name}]" if name == current else f" {key} {name} " for key, name in SCREENS
    )


class TopBar(Static):
    """Banner, navigation and lock/freshness; ``show`` redraws it."""

    def __init__(self, title: str) -> None:
        super().__init__("", id="topbar")
        self.title_text = title

    def show(
        self, status: UnitStatus | None, fetched_at: float | None, now: float, locked: bool
    ) -> None:
        """Redraw from the latest status; ``fetched_at`` is when it was read."""
        text = Text(no_wrap=True, overflow="ellipsis")
        if status is None:
            text.append("?? Reading the router's status ...", style="bold")
        else:
            # Attention shows in reverse video as well as words: visible on any console.
            style = "bold reverse" if status.banner.level == "attention" else "bold"
            text.append(banner_line(status.banner), style=style)
        text.append("\n")
        text.append(nav_line(self.title_text))
        text.append("\n")
        lock = "LOCKED: read only, patient names hidden" if locked else "UNLOCKED: changes allowed"
        if fetched_at is None:
            fresh = "waiting for data"
        else:
            age = now - fetched_at
            # Old data is flagged in words: the numbers on screen may no longer be true.
            fresh = f"{'!! ' if age >= STALE_AFTER else ''}updated {ago(age)} ago"
        right = f"{lock}  |  {fresh}"
        text.append(self.title_text.upper(), style="bold")
        width = self.size.width or 80
        text.append(" " * max(1, width - len(self.title_text) - len(right)))
        text.append(right)
        self.update(text)
