"""Drive the console with Textual's Pilot: start it on a source, press keys, wait for workers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from textual.pilot import Pilot

from tests.support.console_screen import screen_text
from tests.support.fake_control import NOW
from tui.app import ConsoleApp
from tui.source import ControlSource


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_app(
    source: ControlSource, clock: Callable[[], float] | None = None, **kw: Any
) -> ConsoleApp:
    """A console with fixed time and UTC, refreshing only when the test says so."""
    return ConsoleApp(source, clock=clock or Clock(), tz=UTC, refresh_seconds=3600, **kw)


async def settle(pilot: Pilot[None]) -> None:
    """Let every worker finish and the screen catch up."""
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def press(pilot: Pilot[None], *keys: str) -> str:
    """Press keys one at a time, settling after each; returns the screen's text."""
    for key in keys:
        await pilot.press(key)
        await settle(pilot)
    return screen_text(pilot.app)


async def refresh(pilot: Pilot[None]) -> str:
    """Make the console read the daemon now, as its 2 s timer would; returns the screen."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    app.refresh_data()
    await settle(pilot)
    return screen_text(app)


def run(app: ConsoleApp, scenario: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    """Run ``scenario`` against ``app`` at 80x25, after its first refresh."""

    async def main() -> None:
        async with app.run_test(size=(80, 25), notifications=True) as pilot:
            await settle(pilot)
            await scenario(pilot)

    asyncio.run(main())
