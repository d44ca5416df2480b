"""Snapshots of the console at 80x25 for each state a technician meets (pytest-textual-snapshot).

Canned data with fixed times keeps them deterministic. The operator guide shows the same
pictures: docs/img/console-*.svg are copies of these snapshots (test below keeps them equal;
`make console-screenshots` refreshes both)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.support.console_pilot import make_app, settle
from tests.support.fake_control import PIN, FakeControl

SIZE = (80, 25)
SNAPSHOTS = Path(__file__).parent / "__snapshots__" / Path(__file__).stem
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def keys(*pressed: str, unlock: bool = False) -> Callable[[Pilot[None]], Any]:
    """A run_before that waits for the first refresh, then presses keys."""

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        if unlock:
            await pilot.press("u", *PIN, "enter")
            await settle(pilot)
        for key in pressed:
            await pilot.press(key)
            await settle(pilot)

    return run_before


CASES: dict[str, tuple[FakeControl, Callable[[Pilot[None]], Any]]] = {
    "healthy": (FakeControl(state="healthy"), keys()),
    "sending": (FakeControl(state="sending"), keys()),
    "destination_down": (FakeControl(state="destination-down"), keys()),
    "disk_nearly_full": (FakeControl(state="disk-nearly-full"), keys()),
    "service_unreachable": (FakeControl(reachable=False), keys()),
    "destinations": (FakeControl(state="destination-down"), keys("2")),
    "confirm_pause": (FakeControl(state="destination-down"), keys("2", "p", unlock=True)),
    "studies": (FakeControl(state="sending"), keys("3")),
    "study_detail": (FakeControl(state="sending"), keys("3", "enter")),
    "help": (FakeControl(), keys("question_mark")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_console_snapshot(case: str, snap_compare: Any) -> None:
    fake, run_before = CASES[case]
    assert snap_compare(make_app(fake), terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("case", list(CASES))
def test_operator_guide_pictures_are_the_snapshots(case: str) -> None:
    snapshot = SNAPSHOTS / f"test_console_snapshot[{case}].svg"
    picture = DOCS_IMG / f"console-{case.replace('_', '-')}.svg"
    assert picture.read_bytes() == snapshot.read_bytes(), (
        f"{picture} is stale: run `make console-screenshots`"
    )
