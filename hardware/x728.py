"""Geekworm X728 UPS HAT: GPIO6 goes high when mains is lost; a MAX17043 fuel gauge at I2C
address 0x36 reports the cell voltage and state of charge (see README.md for the wiring)."""

from __future__ import annotations

from hardware.linux_io import GpioInput, I2CDevice
from hardware.ups import PowerState

_GAUGE_ADDRESS = 0x36
_VCELL = 0x02  # 12 bits, 1.25 mV per step, left-aligned
_SOC = 0x04  # high byte: percent; low byte: 1/256 percent


class X728:
    """The X728 on a given I2C bus and GPIO chip (the board profile says which)."""

    name = "x728"

    def __init__(self, *, i2c_bus: int = 1, gpio_chip: str = "gpiochip0", power_line: int = 6):
        self.i2c_bus = i2c_bus
        self.gpio_chip = gpio_chip
        self.power_line = power_line

    def read(self) -> PowerState:
        """Mains from the power-loss line, charge from the fuel gauge; unknown on errors."""
        try:
            line = GpioInput(self.gpio_chip, self.power_line)
            try:
                on_mains = line.value() == 0
            finally:
                line.close()
        except OSError as exc:
            return PowerState(None, None, f"X728 power line unreadable: {exc.strerror or exc}")
        try:
            gauge = I2CDevice(self.i2c_bus, _GAUGE_ADDRESS)
            try:
                soc = gauge.read_u16(_SOC)
                volts = (gauge.read_u16(_VCELL) >> 4) * 1.25 / 1000
            finally:
                gauge.close()
        except OSError as exc:
            return PowerState(on_mains, None, f"X728 fuel gauge unreadable: {exc.strerror or exc}")
        return PowerState(on_mains, charge_percent(soc), f"cell {volts:.2f} V")


def charge_percent(soc_register: int) -> float:
    """The MAX17043's SOC register: whole percent in the high byte, 1/256ths in the low."""
    return min(100.0, (soc_register >> 8) + (soc_register & 0xFF) / 256)
