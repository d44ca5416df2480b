"""Board profiles, the UPS policy and the HAT drivers' register arithmetic, the file UPS, the
status LED patterns, and journald records with stable message ids."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from hardware import leds, waveshare, x728
from hardware.profiles import detect, profiles
from hardware.ups import FileUps, PowerState, decide, write_state
from router.health.journald import MESSAGE_IDS, JournaldHandler


def test_profiles_prefer_chacha_on_the_pi4_only() -> None:
    known = profiles()
    assert set(known) == {"pi4", "pi5", "x86"}
    assert known["pi4"].cipher == "chacha20-poly1305"
    assert known["pi5"].cipher == known["x86"].cipher == "aes-256-gcm"
    assert all(p.watchdog.startswith("/dev/watchdog") for p in known.values())


def test_detect_by_device_tree_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\0")
    assert detect(model).name == "pi4"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    assert detect(model).name == "pi5"
    assert detect(tmp_path / "absent").name == "x86"


def test_ups_policy() -> None:
    assert decide(PowerState(True, 10), 20) == "normal"  # charging: no reason to stop
    assert decide(PowerState(False, 80), 20) == "on-battery"
    assert decide(PowerState(False, 20), 20) == "shutdown"
    assert decide(PowerState(False, None), 20) == "on-battery"
    assert decide(PowerState(None), 20) == "unknown"


def test_x728_fuel_gauge() -> None:
    assert x728.charge_percent(0x5A80) == 90.5
    assert x728.charge_percent(0x6500) == 100.0  # the gauge may report above 100


def test_waveshare_ina219() -> None:
    # 8.0 V on the bus (2000 steps of 4 mV, shifted by 3), charging (+1 mV on the shunt).
    charging = waveshare.reading(100, 2000 << 3)
    assert charging.on_mains is True and charging.charge_percent == 83.3
    # 6.6 V, discharging at 1 A (-10 mV = -1000 steps, two's complement).
    discharging = waveshare.reading(0x10000 - 1000, 1650 << 3)
    assert discharging.on_mains is False and discharging.charge_percent == 25.0


def test_file_ups(tmp_path: Path) -> None:
    path = tmp_path / "ups.json"
    assert FileUps(path).read().on_mains is None
    write_state(path, mains=False, charge=42)
    assert FileUps(path).read() == PowerState(False, 42.0)
    path.write_text('{"mains": "yes"}')
    assert FileUps(path).read().on_mains is None


def test_led_patterns() -> None:
    assert leds.look(faults=1, attention=3, waiting=5) == "fault"
    assert leds.look(faults=0, attention=1, waiting=5) == "attention"
    assert leds.look(faults=0, attention=0, waiting=5) == "sending"
    assert leds.look(faults=0, attention=0, waiting=0) == "delivered"
    assert leds.PATTERNS["delivered"].green == (1, 0)


def test_journald_record_has_a_stable_message_id(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(str(path))
        handler = JournaldHandler(path)
        logger = logging.getLogger("waystation.test-journald")
        logger.addHandler(handler)
        try:
            logger.error(
                "ALARM %s: %s", "clock-jumped", "two\nlines", extra={"message_id": "alarm"}
            )
        finally:
            logger.removeHandler(handler)
            handler.close()
        data = journal.recv(65536)
    assert b"MESSAGE_ID=" + MESSAGE_IDS["alarm"].encode() + b"\n" in data
    assert b"PRIORITY=3\n" in data
    assert b"SYSLOG_IDENTIFIER=waystation\n" in data
    # A multi-line message uses the protocol's binary form: name, newline, 64-bit length.
    message = b"ALARM clock-jumped: two\nlines"
    assert b"MESSAGE\n" + len(message).to_bytes(8, "little") + message in data


def test_status_leds_blink_the_current_look() -> None:
    import time as _time

    seen: dict[str, list[bool]] = {"red": [], "green": []}
    status = leds.StatusLeds(seen["red"].append, seen["green"].append, tick=0.01)
    status.look = "fault"
    status.start()
    try:
        _time.sleep(0.6)
        assert not any(seen["green"]) and True in seen["red"] and False in seen["red"]
        status.look = "delivered"
        _time.sleep(0.2)
        del seen["green"][:], seen["red"][:]
        _time.sleep(0.2)
        assert seen["green"] and all(seen["green"]) and not any(seen["red"])
    finally:
        status.stop()
    assert seen["green"][-1] is False and seen["red"][-1] is False  # off when stopped


def test_blink_timing() -> None:
    assert leds.is_on((1, 1), 0.5) and not leds.is_on((1, 1), 1.5)
    assert leds.is_on((1, 0), 99) and not leds.is_on((0, 0), 0)
