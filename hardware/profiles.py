"""Board profiles (profiles.toml) and which one this machine is."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

_PROFILES = Path(__file__).with_name("profiles.toml")


@dataclass(frozen=True)
class BoardProfile:
    """What the appliance needs to know about one board."""

    name: str
    model_prefix: str
    watchdog: str
    watchdog_max_seconds: int
    rtc: str
    cipher: str
    gpio_chip: str
    i2c_bus: int
    storage: str
    led_red: int | None = None
    led_green: int | None = None


def profiles() -> dict[str, BoardProfile]:
    """Every known board profile by name."""
    document = tomllib.loads(_PROFILES.read_text(encoding="utf-8"))
    return {name: BoardProfile(name=name, **values) for name, values in document.items()}


def detect(model_file: Path = Path("/proc/device-tree/model")) -> BoardProfile:
    """The profile of this machine: a Raspberry Pi by its device-tree model, else x86."""
    known = profiles()
    try:
        model = model_file.read_text(errors="replace").rstrip("\0\n")
    except OSError:
        return known["x86"]
    for profile in known.values():
        if profile.model_prefix and model.startswith(profile.model_prefix):
            return profile
    return known["x86"]


def select(name: str) -> BoardProfile:
    """The profile ``name`` ("auto" detects it)."""
    return detect() if name == "auto" else profiles()[name]
