"""The two kernel interfaces the HAT drivers use: /dev/i2c-N and the GPIO character device.

Only the standard ioctls: I2C_SLAVE, and the GPIO v1 line-handle ABI (every kernel since 4.8,
still supported next to v2), so no library is needed on the image."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

_I2C_SLAVE = 0x0703
# _IOWR(0xB4, 0x03, struct gpiohandle_request) and _IOWR(0xB4, 0x08, struct gpiohandle_data)
_GPIO_GET_LINEHANDLE = 0xC16CB403
_GPIOHANDLE_GET_LINE_VALUES = 0xC040B408
_GPIOHANDLE_SET_LINE_VALUES = 0xC040B409
_GPIOHANDLE_REQUEST_INPUT = 1
_GPIOHANDLE_REQUEST_OUTPUT = 2
_REQUEST = struct.Struct("64I I 64B 32s I i")  # 364 bytes


class I2CDevice:
    """One device on an I2C bus; registers read MSB first."""

    def __init__(self, bus: int, address: int, dev_root: Path = Path("/dev")) -> None:
        self._fd = os.open(dev_root / f"i2c-{bus}", os.O_RDWR)
        try:
            fcntl.ioctl(self._fd, _I2C_SLAVE, address)
        except OSError:
            os.close(self._fd)
            raise

    def read_u16(self, register: int) -> int:
        """A 16-bit register, big-endian on the wire."""
        os.write(self._fd, bytes([register]))
        data = os.read(self._fd, 2)
        if len(data) != 2:
            raise OSError(f"short I2C read of register {register:#x}")
        return int.from_bytes(data, "big")

    def close(self) -> None:
        """Release the bus."""
        os.close(self._fd)


def _line_handle(chip: str, line: int, flags: int, consumer: str) -> int:
    chip_fd = os.open(Path("/dev") / chip, os.O_RDONLY)
    try:
        request = bytearray(
            _REQUEST.pack(*([line] + [0] * 63), flags, *([0] * 64), consumer.encode()[:31], 1, 0)
        )
        fcntl.ioctl(chip_fd, _GPIO_GET_LINEHANDLE, request)
        return int(_REQUEST.unpack(bytes(request))[-1])
    finally:
        os.close(chip_fd)


class GpioInput:
    """One input line of a GPIO chip (/dev/gpiochipN), read on demand."""

    def __init__(self, chip: str, line: int, consumer: str = "waystation") -> None:
        self._fd = _line_handle(chip, line, _GPIOHANDLE_REQUEST_INPUT, consumer)

    def value(self) -> int:
        """0 or 1."""
        data = bytearray(64)
        fcntl.ioctl(self._fd, _GPIOHANDLE_GET_LINE_VALUES, data)
        return data[0]

    def close(self) -> None:
        """Release the line."""
        os.close(self._fd)


class GpioOutput:
    """One output line of a GPIO chip, e.g. a status LED."""

    def __init__(self, chip: str, line: int, consumer: str = "waystation") -> None:
        self._fd = _line_handle(chip, line, _GPIOHANDLE_REQUEST_OUTPUT, consumer)

    def set(self, on: bool) -> None:
        """Drive the line high (True) or low."""
        data = bytearray(64)
        data[0] = 1 if on else 0
        fcntl.ioctl(self._fd, _GPIOHANDLE_SET_LINE_VALUES, data)

    def close(self) -> None:
        """Release the line."""
        os.close(self._fd)
