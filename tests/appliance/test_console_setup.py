"""The console at a unit that is not set up: first boot's problems, in plain words, instead of
"not responding"; once the router answers, the usual first screen."""

from __future__ import annotations

from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input

from appliance.firstboot import firstboot
from router.config import load_config
from router.control.auth import PinStore
from tests.appliance.test_firstboot import BAD, GOOD
from tests.support.console_pilot import make_app, press, refresh, run
from tests.support.console_screen import screen_text
from tests.support.fake_control import FakeControl


def test_setup_problems_replace_the_not_responding_notice(tmp_path: Path) -> None:
    boot, state = tmp_path / "boot", tmp_path / "state"
    boot.mkdir()
    (boot / "waystation.toml").write_text(BAD)
    assert firstboot(boot, state).outcome == "invalid"
    fake = FakeControl(reachable=False)

    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        assert "THIS UNIT IS NOT SET UP YET" in text
        assert "ae_titel" in text and "did you mean" in text
        assert "NOT RESPONDING" not in text
        fake.reachable = True
        text = await refresh(pilot)
        assert "NOT SET UP" not in text

    notice = state / "firstboot" / "notice.json"
    run(make_app(fake, setup_notice=notice), scenario)


def test_no_file_says_where_the_file_goes(tmp_path: Path) -> None:
    assert firstboot(tmp_path / "boot", tmp_path / "state").outcome == "no-file"
    fake = FakeControl(reachable=False)

    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        assert "NOT SET UP YET" in text and "waystation.toml on the boot partition" in text
        assert "press c" not in text  # no inbox: this console cannot take the answers

    run(make_app(fake, setup_notice=tmp_path / "state" / "firstboot" / "notice.json"), scenario)


def _type(text: str) -> list[str]:
    return [
        {" ": "space", ".": "full_stop", "-": "minus", "_": "underscore"}.get(c, c) for c in text
    ]


def test_commissioning_screen_sets_up_an_unconfigured_unit(tmp_path: Path) -> None:
    boot, state = tmp_path / "boot", tmp_path / "state"
    assert firstboot(boot, state).outcome == "no-file"
    inbox = state / "firstboot" / "inbox"
    inbox.mkdir()
    fake = FakeControl(reachable=False)

    async def scenario(pilot: Pilot[None]) -> None:
        assert "press c to answer the setup questions here" in screen_text(pilot.app)
        text = await press(pilot, "c")
        assert "SET UP THIS UNIT" in text
        # Submitting with the PACS left empty and no PIN says what is missing, sends nothing.
        text = await press(pilot, "ctrl+s")
        assert "AE title needs 1 to 16" in text
        assert list(inbox.iterdir()) == []
        app = pilot.app
        answers = {
            "destination_ae": "PACS",
            "destination_host": "10.1.2.3",
            "pin": "4862",
            "pin_again": "4862",
        }
        for field, value in answers.items():
            app.screen.query_one(f"#{field}", Input).value = value
        await press(pilot, "ctrl+s")
        assert "SET UP THIS UNIT" not in screen_text(app)

    run(
        make_app(fake, setup_notice=state / "firstboot" / "notice.json", setup_inbox=inbox),
        scenario,
    )
    assert sorted(p.name for p in inbox.iterdir()) == ["waystation.pin", "waystation.toml"]
    # The unit's setup step (waystation-setup.service) installs them as first boot would.
    result = firstboot(inbox, state, only_if_unconfigured=True)
    assert result.outcome == "installed", result.problems
    config = load_config(state / "waystation.toml")
    assert config.unit.ae_title == "WAYSTATION" and config.ingest.port == 104
    assert config.destinations[0].host == "10.1.2.3"
    assert PinStore(config.pin_file).verify("4862")
    assert list(inbox.iterdir()) == []


def test_the_inbox_never_changes_a_unit_that_is_set_up(tmp_path: Path) -> None:
    boot, state = tmp_path / "boot", tmp_path / "state"
    boot.mkdir()
    (boot / "waystation.toml").write_text(GOOD)
    assert firstboot(boot, state).outcome == "installed"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "waystation.toml").write_text(GOOD.replace("clinic-a", "intruder"))
    assert firstboot(inbox, state, only_if_unconfigured=True).outcome == "already-configured"
    assert (state / "waystation.toml").read_text() == GOOD
    assert list(inbox.iterdir()) == []
