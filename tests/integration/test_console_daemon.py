"""The console against a real router on a temporary spool: what it shows as studies arrive
and a destination goes away, every action through the control API (y/N and PIN paths), masking,
and the not-responding screen while the router is stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from router.control.auth import write_pin
from router.control.client import ControlClient
from tests.support import dicomgen
from tests.support.console_pilot import press, refresh, run
from tests.support.console_screen import screen_text
from tests.support.peers import Storescp
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    destination_toml,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)
from tests.support.sender import send
from tui.app import ConsoleApp

pytestmark = pytest.mark.dcmtk

PIN = "2580"
PATIENT = dicomgen.random_patient(77)


def unit(tmp_path: Path, pacs_port: int) -> tuple[Path, int]:
    directory = tmp_path / "unit"
    directory.mkdir()
    port = free_port()
    config = write_config(
        directory,
        port=port,
        destinations=destination_toml("pacs", "STORESCP", pacs_port)
        + route_toml("everything", "pacs"),
        extra=fast_retry_toml(),
    )
    write_pin(directory / "operator.pin", PIN)
    return config, port


def objects(tmp_path: Path, count: int, name: str) -> list[Path]:
    return dicomgen.make_tiny_objects(tmp_path / name, count, studies=1, patient=PATIENT)


def resent(client: ControlClient) -> bool:
    return any(e.action == "resend" and e.outcome.startswith("ok") for e in client.audit())


def console_for(router: RouterProcess) -> ConsoleApp:
    return ConsoleApp(router.client(), socket_label=str(router.socket_path), refresh_seconds=3600)


async def refresh_until(pilot: Pilot[None], text: str, tries: int = 60) -> str:
    """Refresh (as the 2 s timer does) until ``text`` is on the screen."""
    import asyncio

    screen = ""
    for _ in range(tries):
        screen = await refresh(pilot)
        if text in screen:
            return screen
        await asyncio.sleep(0.5)
    raise AssertionError(f"{text!r} never showed; last screen:\n{screen}")


def test_overview_follows_delivery_and_a_destination_going_away(tmp_path: Path) -> None:
    first, second = objects(tmp_path, 3, "first"), objects(tmp_path, 2, "second")
    with Storescp(tmp_path / "scp") as scp:
        config, port = unit(tmp_path, scp.port)
        with RouterProcess(config) as router:
            assert send(first, port).acknowledged == first
            assert wait_for(lambda: delivery_states(config).get("delivered") == 3)

            async def scenario(pilot: Pilot[None]) -> None:
                screen = await refresh_until(pilot, "OK ALL STUDIES DELIVERED")
                assert "1 study received, 1 delivered" in screen
                assert "test-unit" in screen and "WAYSTATION" in screen
                assert "updated 0 s ago" in screen or "updated 1 s ago" in screen
                scp.stop()  # the destination goes away (idempotent: the with-block stops it too)
                assert send(second, port).acknowledged == second
                screen = await refresh_until(pilot, "!! ATTENTION")
                row = next(line for line in screen.splitlines() if line.startswith("│ pacs"))
                assert "WAITING" in row or "DOWN" in row
                assert "  -> " in screen  # the reason, in words, under the row

            run(console_for(router), scenario)


def test_actions_against_the_daemon(tmp_path: Path) -> None:
    files = objects(tmp_path, 2, "study")
    with Storescp(tmp_path / "scp") as scp:
        config, port = unit(tmp_path, scp.port)
        with RouterProcess(config) as router:
            client = router.client()
            assert send(files, port).acknowledged == files
            assert wait_for(lambda: delivery_states(config).get("delivered") == 2)

            async def scenario(pilot: Pilot[None]) -> None:
                # Locked: the name is masked and pause is refused without asking.
                screen = await press(pilot, "3")
                assert PATIENT.name[:12] not in screen and "LOCKED" in screen
                await press(pilot, "2", "p")
                assert not pilot.app.screen.is_modal
                # A wrong PIN leaves it locked; the right one unlocks and unmasks.
                await press(pilot, "u", *"1397", "enter")
                assert "LOCKED: read only" in await refresh(pilot)
                await press(pilot, "u", *PIN, "enter")
                screen = await press(pilot, "3")
                assert PATIENT.name[:12] in await refresh(pilot)
                # Pause: N changes nothing, y pauses.
                await press(pilot, "2", "p", "n")
                assert not client.destinations()[0].paused
                screen = await press(pilot, "p")
                assert "Pause sending to pacs?" in screen
                await press(pilot, "y")
                assert wait_for(lambda: client.destinations()[0].paused, 10)
                assert "PAUSED" in await refresh(pilot)
                await press(pilot, "r", "y")
                assert wait_for(lambda: not client.destinations()[0].paused, 10)
                await press(pilot, "t", "y")
                # Priority from the studies list.
                await press(pilot, "3", "p", "1", "y")
                await refresh(pilot)
                # The study: every object with its delivery and history, names shown.
                screen = await press(pilot, "enter")
                assert "Object 1:" in screen and "Object 2:" in screen
                assert "-> pacs: DELIVERED" in screen and PATIENT.patient_id in screen
                # Resend: a wrong PIN is refused by the daemon; the right one queues it again.
                await press(pilot, "r", "1", *"1397", "enter")
                screen = await press(pilot, "r", "1", *PIN, "enter")
                assert wait_for(lambda: resent(client), 10), screen
                assert wait_for(lambda: delivery_states(config).get("delivered") == 2, 60)
                # Discard needs the PIN and a reason.
                await press(pilot, "x", *PIN, "enter", *"test study", "enter")
                screen = await press(pilot, "5")
                assert "discard" in screen

            run(console_for(router), scenario)
            actions = [(e.action, e.outcome.split(":")[0]) for e in client.audit(limit=100)]
            done = {a for a, outcome in actions if outcome == "ok"}
            assert {"pause", "resume", "retry", "priority", "resend", "discard"} <= done, actions
            refused = [a for a, outcome in actions if a == "resend" and outcome != "ok"]
            assert refused, actions


def test_not_responding_while_the_router_is_stopped(tmp_path: Path) -> None:
    with Storescp(tmp_path / "scp") as scp:
        config, _ = unit(tmp_path, scp.port)
        router = RouterProcess(config).start()
        try:

            async def scenario(pilot: Pilot[None]) -> None:
                await refresh_until(pilot, "ALL STUDIES DELIVERED")
                router.stop()
                screen = await refresh(pilot)
                assert "ROUTER SERVICE NOT RESPONDING" in screen
                # The socket's path, for IT, wrapped over lines inside the frame.
                assert str(router.socket_path) in "".join(screen.split()).replace("║", "")
                router.start()
                screen = await refresh_until(pilot, "ALL STUDIES DELIVERED")
                assert "NOT RESPONDING" not in screen
                assert screen_text(pilot.app).startswith("OK ")

            run(console_for(router), scenario)
        finally:
            router.stop()
