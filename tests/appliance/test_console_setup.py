"""The console at a unit that is not set up: first boot's problems, in plain words, instead of
"not responding"; once the router answers, the usual first screen."""

from __future__ import annotations

from pathlib import Path

from textual.pilot import Pilot

from appliance.firstboot import firstboot
from tests.appliance.test_firstboot import BAD
from tests.support.console_pilot import make_app, refresh, run
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


def test_no_file_points_to_commissioning(tmp_path: Path) -> None:
    assert firstboot(tmp_path / "boot", tmp_path / "state").outcome == "no-file"
    fake = FakeControl(reachable=False)

    async def scenario(pilot: Pilot[None]) -> None:
        text = screen_text(pilot.app)
        assert "NOT SET UP YET" in text and "waystation commission" in text

    run(make_app(fake, setup_notice=tmp_path / "state" / "firstboot" / "notice.json"), scenario)
