"""The devices the configuration asks for: the UPS driver and the status LEDs, on the board
profile's bus, chip and lines."""

from __future__ import annotations

import logging

from hardware import leds
from hardware.linux_io import GpioOutput
from hardware.profiles import select
from hardware.ups import FileUps, Ups
from hardware.waveshare import WaveshareUps
from hardware.x728 import X728
from router.config.model import Config

log = logging.getLogger("waystation.health")


def build_ups(config: Config) -> Ups | None:
    """The configured UPS driver, on the board profile's bus and chip."""
    kind = config.appliance.ups
    if kind == "none":
        return None
    if kind == "file":
        assert config.appliance.ups_state_file is not None  # the config requires it
        return FileUps(config.appliance.ups_state_file)
    board = select(config.appliance.board)
    if kind == "x728":
        return X728(i2c_bus=board.i2c_bus, gpio_chip=board.gpio_chip)
    return WaveshareUps(i2c_bus=board.i2c_bus)


def build_leds(config: Config) -> leds.StatusLeds | None:
    """The status LEDs on the board profile's lines, when asked for and present."""
    if not config.appliance.status_led:
        return None
    board = select(config.appliance.board)
    if board.led_red is None or board.led_green is None or not board.gpio_chip:
        log.error("status_led is set, but board %s has no status LED lines", board.name)
        return None
    try:
        red = GpioOutput(board.gpio_chip, board.led_red)
        green = GpioOutput(board.gpio_chip, board.led_green)
    except OSError as exc:  # LEDs are a convenience: never stop the router
        log.error("cannot drive the status LEDs on %s: %s", board.gpio_chip, exc)
        return None
    return leds.StatusLeds(red.set, green.set)
