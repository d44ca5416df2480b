"""The console against a fake control API: every screen, every action, y/N and PIN paths,
locking, masking, the not-responding screen and its recovery, and the console font's glyphs."""

from __future__ import annotations

import pytest
from textual.pilot import Pilot

from router.control.client import ControlError
from router.control.schema import ApiError, UnitStatus
from tests.support.console_pilot import Clock, make_app, press, refresh, run
from tests.support.console_screen import screen_text
from tests.support.fake_control import PIN, STUDIES, FakeControl
from tui.app import ConsoleApp
from tui.glyphs import ALLOWED_WITH_BLOCKS

STATES = ["healthy", "sending", "destination-down", "disk-nearly-full"]


def console(pilot: Pilot[None]) -> ConsoleApp:
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    return app


async def unlock(pilot: Pilot[None], pin: str = PIN) -> str:
    return await press(pilot, "u", *pin, "enter")


@pytest.mark.parametrize("state", STATES)
def test_first_screen_needs_no_keypress(state: str) -> None:
    fake = FakeControl(state=state)

    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        banner = fake.status().banner.text
        marker = {"ok": "OK ", "sending": ">> ", "attention": "!! "}[fake.status().banner.level]
        assert text.splitlines()[0].startswith(marker + banner[:40])
        for expected in (
            "PACS",
            "ARCHIVE",
            "34 studies received",
            "Last received: 09:58",
            "free of 29.0 GB",
            "Link: ok",
            "Clock: ok",
            "Power: ok",
            "clinic-north",
            "WAYSTATION",
            "0.0.0.0:11112",
            "192.168.1.20",
            "version 0.1.0",
            "updated 0 s ago",
            "LOCKED",
        ):
            assert expected in text, expected

    run(make_app(fake), scenario)


def test_destination_down_shows_state_and_plain_reason() -> None:
    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        assert "PACS          DOWN        212  46 min" in text
        assert "The PACS does not answer at 10.0.0.5 port 104" in text
        assert "2 objects" in text and "refused for good" in text

    run(make_app(FakeControl(state="destination-down")), scenario)


def test_disk_nearly_full_is_said_in_words() -> None:
    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        assert "DISK NEARLY FULL" in text
        assert "Less than a day left at today's rate" in text

    run(make_app(FakeControl(state="disk-nearly-full")), scenario)


def test_freshness_counts_up_between_refreshes() -> None:
    clock = Clock()

    async def scenario(pilot: Pilot[None]) -> None:
        clock.now += 7
        console(pilot).tick()
        await pilot.pause()
        assert "|  updated 7 s ago" in screen_text(pilot.app)
        clock.now += 5
        console(pilot).tick()
        await pilot.pause()
        assert "!! updated 12 s ago" in screen_text(pilot.app)
        assert "|  updated 0 s ago" in await refresh(pilot)

    run(make_app(FakeControl(), clock=clock), scenario)


def test_unreachable_shows_full_screen_and_recovers_by_itself() -> None:
    fake = FakeControl(reachable=False)

    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        assert "ROUTER SERVICE NOT RESPONDING" in text
        assert "What to do" in text and "call IT" in text
        assert "PACS" not in text  # no stale table behind the notice
        fake.reachable = True
        text = await refresh(pilot)
        assert "ROUTER SERVICE NOT RESPONDING" not in text
        assert "ALL STUDIES DELIVERED" in text
        fake.reachable = False
        text = await refresh(pilot)
        assert "ROUTER SERVICE NOT RESPONDING" in text
        assert "Last answer 0 s ago" in text

    run(make_app(fake), scenario)


def test_a_login_that_is_not_an_operator_is_told_so() -> None:
    class Refusing(FakeControl):
        def status(self) -> UnitStatus:
            raise ControlError(
                403, ApiError(error="forbidden", message="only operators may use this")
            )

    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        assert "THIS LOGIN MAY NOT USE THE ROUTER SERVICE" in text
        assert "only operators may use this" in text and "NOT RESPONDING" not in text

    run(make_app(Refusing()), scenario)


def test_every_screen_opens_from_its_key() -> None:
    fake = FakeControl(state="destination-down")

    async def scenario(pilot: Pilot[None]) -> None:
        text = await press(pilot, "2")
        assert "[2 Destinations]" in text and "Why: The PACS does not answer" in text
        text = await press(pilot, "3")
        assert "[3 Studies]" in text and "*STAT*" in text and "CT HEAD" in text
        text = await press(pilot, "4")
        assert "[4 Alarms]" in text and "PACS does not answer since 09:14" in text
        text = await press(pilot, "5")
        assert "[5 Audit log]" in text
        text = await press(pilot, "question_mark")
        assert "WAYSTATION CONSOLE - KEYS" in text
        text = await press(pilot, "escape", "1")
        assert "[1 Overview]" in text

    run(make_app(fake), scenario)


def test_studies_masked_until_unlocked_and_masked_again_on_lock() -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        text = await press(pilot, "3")
        assert "DOE^JANE" not in text and "*****" in text
        await unlock(pilot)
        text = await refresh(pilot)
        assert "DOE^JANE" in text and "UNLOCKED" in text
        assert fake.called("studies")[-1][-1] == PIN
        text = await press(pilot, "u")  # u locks again
        assert "DOE^JANE" not in text and "LOCKED: read only" in text

    run(make_app(fake), scenario)


def test_wrong_pin_stays_locked() -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        await unlock(pilot, "9999")
        assert console(pilot).pin is None
        text = await press(pilot, "3")
        assert "LOCKED" in text and "DOE^JANE" not in text
        assert fake.called("check_pin") == [("9999",)]

    run(make_app(fake), scenario)


def test_relocks_after_idle_time() -> None:
    clock = Clock()
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        await unlock(pilot)
        assert console(pilot).pin == PIN
        clock.now += 59
        console(pilot).tick()
        assert console(pilot).pin == PIN
        clock.now += 2
        console(pilot).tick()
        assert console(pilot).pin is None
        assert "LOCKED" in await refresh(pilot)

    run(make_app(fake, clock=clock, relock_seconds=60), scenario)


def test_actions_refused_while_locked() -> None:
    fake = FakeControl(state="destination-down")

    async def scenario(pilot: Pilot[None]) -> None:
        for key in ("p", "r", "t", "f"):
            await press(pilot, "2", key)
            assert not pilot.app.screen.is_modal
        assert not fake.called("pause") and not fake.called("retry")

    run(make_app(fake), scenario)


@pytest.mark.parametrize(
    ("key", "method", "words"),
    [
        ("p", "pause", "212 objects (12 studies) waiting will stay safe"),
        ("r", "resume", "212 objects (12 studies) waiting will be sent"),
        ("t", "retry", "212 objects (12 studies) waiting will be tried at once"),
        ("f", "retry_failed", "Send again the 2 objects that PACS refused"),
    ],
)
@pytest.mark.parametrize("answer", ["y", "n"])
def test_destination_actions_ask_y_or_n(key: str, method: str, words: str, answer: str) -> None:
    fake = FakeControl(state="destination-down")

    async def scenario(pilot: Pilot[None]) -> None:
        await unlock(pilot)
        text = await press(pilot, "2", key)
        assert words in text and "[y/N]" in text
        text = await press(pilot, answer)
        if answer == "y":
            assert fake.called(method) == [("PACS", "")]
            assert f"{method.replace('_', '-')} PACS: done" in text
        else:
            assert fake.called(method) == []
        assert not pilot.app.screen.is_modal

    run(make_app(fake), scenario)


def test_enter_and_escape_answer_no() -> None:
    fake = FakeControl(state="destination-down")

    async def scenario(pilot: Pilot[None]) -> None:
        await unlock(pilot)
        await press(pilot, "2", "p", "enter")
        await press(pilot, "p", "escape")
        assert fake.called("pause") == []

    run(make_app(fake), scenario)


def test_echo_works_while_locked() -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        text = await press(pilot, "2", "e")
        assert fake.called("echo") == [("PACS",)]
        assert "answered the echo test" in text

    run(make_app(fake), scenario)


def test_studies_filter_state_and_order() -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        await press(pilot, "3", "slash", *"head", "enter")
        assert fake.called("studies")[-1][1] == "head"
        text = screen_text(pilot.app)
        assert "CT HEAD" in text and "CHEST PA" not in text
        await press(pilot, "escape", "s")
        assert fake.called("studies")[-1][:2] == ("sending", None)
        await press(pilot, "o")
        assert fake.called("studies")[-1][2] == "last_received"

    run(make_app(fake), scenario)


@pytest.mark.parametrize("answer", ["y", "n"])
def test_priority_from_studies_and_detail(answer: str) -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        await unlock(pilot)
        text = await press(pilot, "3", "down", "p")
        assert "Priority for" in text
        text = await press(pilot, "1")  # 1 = STAT in the choice
        assert "to STAT?" in text and "[y/N]" in text
        await press(pilot, answer)
        expected = [("st2", "stat", "")] if answer == "y" else []
        assert fake.called("set_priority") == expected

    run(make_app(fake), scenario)


def test_study_detail_shows_every_object_with_deliveries_and_history() -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        text = await press(pilot, "3", "enter")
        assert "Object 1: CT CT Image Storage" in text and "Object 2:" in text
        assert "-> PACS: DELIVERED after 1 attempt" in text
        assert "-> PACS: PENDING after 3 attempts" in text and "connection refused" in text
        assert "received" in text and "delivered (destination PACS, status 0)" in text
        assert "locked: names hidden" in text
        text = await press(pilot, "escape")
        assert "*STAT*" in text  # back on the list

    run(make_app(fake), scenario)


@pytest.mark.parametrize(("pin", "done"), [(PIN, True), ("1357", False)])
def test_resend_asks_destination_and_pin(pin: str, done: bool) -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        text = await press(pilot, "3", "enter", "r")
        assert "1  PACS" in text and "2  ARCHIVE" in text
        text = await press(pilot, "2")
        assert "again to ARCHIVE?" in text and "Operator PIN" in text
        text = await press(pilot, *pin, "enter")
        assert fake.called("resend") == [("st1", "ARCHIVE", pin, "")]
        assert ("resend st1: done" in text) is done
        assert ("Wrong PIN: nothing was sent again" in text) is not done

    run(make_app(fake), scenario)


@pytest.mark.parametrize(("pin", "done"), [(PIN, True), ("1357", False)])
def test_discard_asks_pin_and_reason(pin: str, done: bool) -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        text = await press(pilot, "3", "enter", "x")
        assert "DISCARD study" in text and "cannot be undone" in text
        await press(pilot, *pin, "enter")
        text = await press(pilot, "enter")  # an empty reason is refused here
        assert "Type a reason first" in text and fake.called("discard") == []
        text = await press(pilot, *"duplicate", "enter")
        assert fake.called("discard") == [("st1", pin, "duplicate")]
        assert ("discard st1: done" in text) is done
        assert ("Wrong PIN: nothing was discarded" in text) is not done

    run(make_app(fake), scenario)


def test_a_study_that_is_gone_says_so_once() -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        await press(pilot, "3", "enter")
        saved = list(STUDIES)
        STUDIES.clear()
        try:
            text = await refresh(pilot)
            await refresh(pilot)
        finally:
            STUDIES.extend(saved)
        assert "!! No such study on this unit." in text and "Press Esc" in text
        assert [n.message for n in pilot.app._notifications].count(
            "No such study on this unit."
        ) == 1

    run(make_app(fake), scenario)


def test_pin_dialog_escape_sends_nothing() -> None:
    fake = FakeControl()

    async def scenario(pilot: Pilot[None]) -> None:
        await press(pilot, "3", "enter", "x", *PIN, "escape")
        assert fake.called("discard") == [] and not pilot.app.screen.is_modal

    run(make_app(fake), scenario)


def test_audit_log_lists_actions_newest_first() -> None:
    fake = FakeControl(state="destination-down")

    async def scenario(pilot: Pilot[None]) -> None:
        await unlock(pilot)
        await press(pilot, "2", "p", "y", "r", "y")
        text = await press(pilot, "5")
        lines = [line for line in text.splitlines() if " tech " in line]
        assert "resume" in lines[0] and "pause" in lines[1]

    run(make_app(fake), scenario)


def test_navigation_keys_do_nothing_inside_a_dialog() -> None:
    fake = FakeControl(state="destination-down")

    async def scenario(pilot: Pilot[None]) -> None:
        await unlock(pilot)
        await press(pilot, "2", "p", "3")
        assert pilot.app.screen.is_modal and "[2 Destinations]" in screen_text(pilot.app)

    run(make_app(fake), scenario)


@pytest.mark.parametrize("state", [*STATES, "unreachable"])
def test_only_glyphs_the_linux_console_font_has(state: str) -> None:
    fake = FakeControl(state=state, reachable=state != "unreachable")

    async def scenario(pilot: Pilot[None]) -> None:
        screens = [screen_text(pilot.app)]
        if state != "unreachable":
            await unlock(pilot)
            for keys in (
                ("2",),
                ("2", "p"),
                ("n", "3"),
                ("enter",),
                ("x",),
                ("escape", "4"),
                ("5",),
                ("question_mark",),
            ):
                screens.append(await press(pilot, *keys))
        for text in screens:
            assert set(text) <= ALLOWED_WITH_BLOCKS, set(text) - ALLOWED_WITH_BLOCKS

    run(make_app(fake), scenario)
