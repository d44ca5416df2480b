"""Waveshare UPS HAT (two 18650 cells): an INA219 at I2C address 0x42 measures the pack's
voltage and current. Charge is estimated from the voltage (6.0 V empty .. 8.4 V full, as
Waveshare's own example does); mains is present while the pack is not being discharged."""

from __future__ import annotations

from hardware.linux_io import I2CDevice
from hardware.ups import PowerState

_ADDRESS = 0x42
_SHUNT_VOLTAGE = 0x01  # signed, 10 uV per step; positive while charging
_BUS_VOLTAGE = 0x02  # bits 15..3, 4 mV per step
_EMPTY, _FULL = 6.0, 8.4
# Discharging at more than ~50 mA (0.5 mV over the 0.01 ohm shunt) means the load runs on it.
_DISCHARGE_STEPS = -50


class WaveshareUps:
    """The Waveshare UPS HAT on a given I2C bus."""

    name = "waveshare"

    def __init__(self, *, i2c_bus: int = 1) -> None:
        self.i2c_bus = i2c_bus

    def read(self) -> PowerState:
        """Voltage, direction of current and estimated charge; unknown on errors."""
        try:
            device = I2CDevice(self.i2c_bus, _ADDRESS)
            try:
                shunt = device.read_u16(_SHUNT_VOLTAGE)
                bus = device.read_u16(_BUS_VOLTAGE)
            finally:
                device.close()
        except OSError as exc:
            return PowerState(None, None, f"INA219 unreadable: {exc.strerror or exc}")
        return reading(shunt, bus)


def reading(shunt_register: int, bus_register: int) -> PowerState:
    """The power state from the INA219's shunt-voltage and bus-voltage registers."""
    shunt = shunt_register - 0x10000 if shunt_register >= 0x8000 else shunt_register
    volts = (bus_register >> 3) * 0.004
    percent = max(0.0, min(100.0, (volts - _EMPTY) / (_FULL - _EMPTY) * 100))
    return PowerState(shunt > _DISCHARGE_STEPS, round(percent, 1), f"pack {volts:.2f} V")
