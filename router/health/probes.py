"""Reading the facts the health checks judge: the kernel's clock state, the RTC, the routing
table, eMMC wear. Each probe answers None ("unknown") rather than failing."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import time
from pathlib import Path

from router.health.checks import ClockSample

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised


def clock_sample() -> ClockSample:
    """The wall clock and the monotonic clock, read together."""
    return ClockSample(time.time(), time.monotonic())


def ntp_synchronized() -> bool | None:
    """Whether the kernel's clock is synchronised (adjtimex with no changes), or None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        # struct timex is about 208 bytes; its first field ``modes`` = 0 reads only.
        buffer = ctypes.create_string_buffer(512)
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def rtc_present(sys_root: Path = Path("/sys")) -> bool:
    """Whether the kernel knows a hardware real-time clock."""
    return (sys_root / "class" / "rtc" / "rtc0").exists()


def default_route(proc_root: Path = Path("/proc")) -> bool | None:
    """Whether an IPv4 or IPv6 default route exists; None when the tables cannot be read."""
    seen_any = False
    with contextlib.suppress(OSError):
        for line in (proc_root / "net" / "route").read_text().splitlines()[1:]:
            seen_any = True
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:
                return True
    with contextlib.suppress(OSError):
        for line in (proc_root / "net" / "ipv6_route").read_text().splitlines():
            seen_any = True
            fields = line.split()
            if (
                len(fields) > 9
                and fields[0] == "0" * 32
                and fields[1] == "00"
                and fields[9] != "lo"
            ):
                return True
    return False if seen_any else None


def source_address() -> str | None:
    """The address this unit would send from to the outside, or None. Sends nothing: a UDP
    socket's connect only asks the routing table."""
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((target, 9))
                address = str(sock.getsockname()[0])
        except OSError:
            continue
        if address not in ("0.0.0.0", "::"):
            return address
    return None


_EMMC_LIFE = {n: min(100, n * 10) for n in range(1, 12)}  # 0x01 = 0-10% used ... 0x0B exceeded
_PRE_EOL = {1: "normal", 2: "warning", 3: "urgent"}


def block_device_of(path: Path, sys_root: Path = Path("/sys")) -> Path | None:
    """The sysfs folder of the whole disk holding ``path`` (a partition's parent)."""
    try:
        dev = os.stat(path).st_dev
        node = (sys_root / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}").resolve()
    except OSError:
        return None
    if not node.exists():
        return None
    return node.parent if (node / "partition").exists() else node


def emmc_wear(disk: Path) -> tuple[int | None, str | None]:
    """eMMC life used (percent, the worse of types A and B) and pre-EOL state, if reported."""
    used: int | None = None
    pre_eol: str | None = None
    with contextlib.suppress(OSError, ValueError):
        values = [int(v, 16) for v in (disk / "device" / "life_time").read_text().split()]
        known = [_EMMC_LIFE[v] for v in values if v in _EMMC_LIFE]
        used = max(known) if known else None
    with contextlib.suppress(OSError, ValueError):
        pre_eol = _PRE_EOL.get(int((disk / "device" / "pre_eol_info").read_text().strip(), 16))
    return used, pre_eol


def undervoltage(sys_root: Path = Path("/sys")) -> bool | None:
    """A Raspberry Pi's under-voltage alarm (the rpi_volt hwmon sensor), or None elsewhere."""
    with contextlib.suppress(OSError):
        for hwmon in (sys_root / "class" / "hwmon").iterdir():
            with contextlib.suppress(OSError):
                if (hwmon / "name").read_text().strip() == "rpi_volt":
                    return (hwmon / "in0_lcrit_alarm").read_text().strip() == "1"
    return None
