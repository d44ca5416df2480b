"""Health: the clock-skew alarm, link, storage wear, metrics text, and the control API view."""

from __future__ import annotations

from pathlib import Path

from router.alarms import Alarms
from router.config.model import ApplianceConfig
from router.health import checks, probes
from router.health.checks import ClockFacts, ClockSample
from router.health.metrics import render
from router.health.monitor import Monitor, MonitorInputs
from router.health.notify import Notifier

NOW = 1_800_000_000.0  # 2027-01-15


def _facts(**kw: object) -> ClockFacts:
    base: dict[str, object] = {
        "now": ClockSample(NOW, 1000.0),
        "previous": ClockSample(NOW - 5, 995.0),
        "synchronized": True,
        "rtc_present": True,
    }
    base.update(kw)
    return ClockFacts(**base)  # type: ignore[arg-type]


def test_steady_clock_is_ok() -> None:
    verdict = checks.clock(_facts())
    assert verdict.alarms == {}
    assert verdict.check.state == "ok"
    assert verdict.check.detail == "synchronised (NTP), RTC present"


def test_a_jump_raises_clock_jumped_both_ways() -> None:
    forward = checks.clock(_facts(previous=ClockSample(NOW - 3600, 995.0)))
    assert "jumped forward by 3595 s" in forward.alarms["clock-jumped"]
    back = checks.clock(_facts(previous=ClockSample(NOW + 600, 995.0)))
    assert "jumped back by 605 s" in back.alarms["clock-jumped"]
    assert back.check.state == "fault"
    # NTP slewing a few seconds is not a jump.
    assert checks.clock(_facts(previous=ClockSample(NOW - 9, 995.0))).alarms == {}


def test_implausible_times() -> None:
    old = checks.clock(_facts(now=ClockSample(946_684_800.0, 1000.0), previous=None))
    assert "before 2026" in old.alarms["clock-implausible"]
    behind = checks.clock(_facts(latest_known=NOW + 86_400))
    assert "set back" in behind.alarms["clock-implausible"]


def test_unsynchronised_without_rtc_is_a_warning() -> None:
    verdict = checks.clock(_facts(synchronized=False, rtc_present=False))
    assert verdict.check.state == "warn" and verdict.alarms == {}


class SteppedClock:
    """A wall clock that a test can step while the monotonic clock runs on."""

    def __init__(self) -> None:
        self.wall, self.mono = NOW, 100.0

    def __call__(self) -> ClockSample:
        self.wall += 5
        self.mono += 5
        return ClockSample(self.wall, self.mono)


def test_monitor_raises_the_skew_alarm_and_clears_the_implausible_one(tmp_path: Path) -> None:
    clock = SteppedClock()
    alarms = Alarms()
    monitor = Monitor(
        ApplianceConfig(),
        alarms,
        MonitorInputs(
            watched=list,
            summary=lambda: "test",
            spool_path=tmp_path,
            clock=clock,
            rtc_present=lambda: False,
            ntp_synchronized=lambda: None,
        ),
        notifier=Notifier({}),
    )
    monitor.tick()
    assert alarms.active() == []
    clock.wall -= 7200  # someone set the clock back two hours
    monitor.tick()
    codes = {a.code for a in alarms.active()}
    assert codes == {"clock-jumped"}
    clock_item = next(c for c in monitor.checks if c.name == "clock")
    assert clock_item.state == "fault"
    # A clock from before 2026 raises the implausible alarm; corrected, that one clears.
    clock.wall = 1_000_000_000.0
    monitor.tick()
    assert "clock-implausible" in {a.code for a in alarms.active()}
    clock.wall = NOW + 100_000
    monitor.tick()
    assert "clock-implausible" not in {a.code for a in alarms.active()}


def test_link_and_storage_words() -> None:
    assert checks.link(False, None).state == "warn"
    assert checks.link(True, "10.0.0.5").detail == "default route, address 10.0.0.5"
    assert checks.link(None, None).state == "unknown"
    assert checks.storage_wear(None, None, "sda").state == "unknown"
    assert checks.storage_wear(80, "normal", "mmcblk0").state == "warn"
    assert checks.storage_wear(20, "urgent", "mmcblk0").state == "fault"


def test_emmc_wear_from_sysfs(tmp_path: Path) -> None:
    device = tmp_path / "mmcblk0" / "device"
    device.mkdir(parents=True)
    (device / "life_time").write_text("0x02 0x03\n")
    (device / "pre_eol_info").write_text("0x01\n")
    assert probes.emmc_wear(tmp_path / "mmcblk0") == (30, "normal")
    assert probes.emmc_wear(tmp_path / "nothing") == (None, None)


def test_default_route_from_proc(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    (net / "route").write_text(header + "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    assert probes.default_route(tmp_path) is False
    (net / "route").write_text(header + "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n")
    assert probes.default_route(tmp_path) is True
    assert probes.default_route(tmp_path / "missing") is None


def test_metrics_text_has_states_and_codes_only() -> None:
    text = render(
        [checks.Check("clock", "fault", "jumped"), checks.Check("link", "ok", "x")],
        {"spool_free_bytes": 1024.0},
        ["clock-jumped"],
    )
    assert 'waystation_health{aspect="clock"} 3' in text
    assert 'waystation_health{aspect="link"} 0' in text
    assert 'waystation_alarm{code="clock-jumped"} 1' in text
    assert "waystation_spool_free_bytes 1024" in text
    assert "jumped\n" not in text  # details (free text) never go into metrics


def test_undervoltage_from_the_pi_hwmon_sensor(tmp_path: Path) -> None:
    assert probes.undervoltage(tmp_path) is None
    sensor = tmp_path / "class" / "hwmon" / "hwmon1"
    sensor.mkdir(parents=True)
    (tmp_path / "class" / "hwmon" / "hwmon0").mkdir()  # another sensor, no name file
    (sensor / "name").write_text("rpi_volt\n")
    (sensor / "in0_lcrit_alarm").write_text("0\n")
    assert probes.undervoltage(tmp_path) is False
    (sensor / "in0_lcrit_alarm").write_text("1\n")
    assert probes.undervoltage(tmp_path) is True


def test_power_item_without_a_ups(tmp_path: Path) -> None:
    def monitor(low: bool | None) -> Monitor:
        inputs = MonitorInputs(
            watched=list, summary=str, spool_path=tmp_path, undervoltage=lambda: low
        )
        return Monitor(ApplianceConfig(), Alarms(), inputs, notifier=Notifier({}))

    for low, expected in ((None, None), (False, "ok"), (True, "warn")):
        m = monitor(low)
        m.tick()
        power = [c.state for c in m.checks if c.name == "power"]
        assert power == ([] if expected is None else [expected])
