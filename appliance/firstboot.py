"""First boot: install the configuration dropped on the boot partition, or say what is wrong.

The boot partition is FAT: anyone holding the card can read it, and it has no permissions.
So a valid ``waystation.toml`` is installed into the state directory (0640) and then removed
from the boot partition; an invalid one is moved off it too (kept 0600 in the state directory
so it can be mended), and only the list of problems - no values from the file - is written
back for the engineer's laptop. Nothing is installed unless the whole file is valid, so a bad
file never half-applies: the previous configuration (or none) stays in force.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from router.config.load import parse_config
from router.control.auth import PinRefused, write_pin
from router.errors import ConfigError
from router.spool.fsio import atomic_write, fsync_dir, make_dirs

CONFIG_NAME = "waystation.toml"
PIN_NAME = "waystation.pin"  # optional: the operator PIN, digits only
PROBLEMS_NAME = "waystation-problems.txt"  # written back to the boot partition
NOTICE_DIR = "firstboot"  # in the state directory: what the console shows

Outcome = Literal["installed", "invalid", "no-file", "already-configured"]


@dataclass
class FirstBootResult:
    """What first boot did, in words the console and the log show."""

    outcome: Outcome
    problems: list[str] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def ok(self) -> bool:
        """Whether the unit may run (a configuration is installed and nothing was rejected)."""
        return self.outcome in ("installed", "already-configured")


def config_fingerprint(text: bytes) -> str:
    """The SHA-256 of a configuration file's bytes, short form for reports."""
    return hashlib.sha256(text).hexdigest()[:16]


def firstboot(boot: Path, state: Path, *, only_if_unconfigured: bool = False) -> FirstBootResult:
    """Validate and install ``boot/waystation.toml`` into ``state``; see the module docs.

    ``only_if_unconfigured``: for the console's inbox, which may set a unit up but never
    change one that is set up (the files there are removed unread)."""
    make_dirs(state, mode=0o750)
    source = boot / CONFIG_NAME
    installed = state / CONFIG_NAME
    if only_if_unconfigured and installed.exists():
        for name in (CONFIG_NAME, PIN_NAME):
            _remove(boot / name)
        return FirstBootResult("already-configured")
    if not source.exists():
        if installed.exists():
            result = FirstBootResult("already-configured")
        else:
            result = FirstBootResult(
                "no-file",
                [
                    f"No configuration yet. Put {CONFIG_NAME} on the boot partition and "
                    "restart (docs/commissioning.md)."
                ],
            )
        _write_notice(state, result)
        return result
    raw = source.read_bytes()
    try:
        text = raw.decode("utf-8")
        # Relative paths in the file mean the state directory, where it is going to live.
        parse_config(text, source=f"{CONFIG_NAME} (boot partition)", base=state)
        pin = _read_pin(boot)
    except UnicodeDecodeError:
        return _reject(boot, state, raw, [f"{CONFIG_NAME}: not UTF-8 text"])
    except ConfigError as exc:
        return _reject(boot, state, raw, list(exc.problems))
    except PinRefused as exc:
        return _reject(boot, state, raw, [f"{PIN_NAME}: {exc}"])
    # Why this order: install (durably) first, then delete from the boot partition. A power
    # cut in between installs the same file again next boot; the reverse order could lose it.
    atomic_write(installed, raw, mode=0o640)
    _match_owner(installed, state)
    if pin is not None:
        pin_file = parse_config(text, source=CONFIG_NAME, base=state).pin_file
        write_pin(pin_file, pin)
    for name in (CONFIG_NAME, PIN_NAME, PROBLEMS_NAME):
        _remove(boot / name)
    result = FirstBootResult("installed", fingerprint=config_fingerprint(raw))
    _write_notice(state, result)
    return result


def _read_pin(boot: Path) -> str | None:
    path = boot / PIN_NAME
    if not path.exists():
        return None
    pin = path.read_text(encoding="utf-8", errors="replace").strip()
    from router.control.auth import check_new_pin

    check_new_pin(pin)
    return pin


def _reject(boot: Path, state: Path, raw: bytes, problems: list[str]) -> FirstBootResult:
    result = FirstBootResult("invalid", problems)
    # The file may hold secrets: keep it only where permissions protect it.
    notices = state / NOTICE_DIR
    make_dirs(notices, mode=0o750)
    atomic_write(notices / "rejected.toml", raw, mode=0o600)
    report = (
        f"{CONFIG_NAME} was NOT installed ({time.strftime('%Y-%m-%d %H:%M:%S')}):\n"
        + "".join(f"  {p}\n" for p in problems)
        + f"Fix these and copy {CONFIG_NAME} to the boot partition again.\n"
    )
    atomic_write(boot / PROBLEMS_NAME, report.encode(), mode=0o644)
    _remove(boot / CONFIG_NAME)
    _remove(boot / PIN_NAME)
    _write_notice(state, result)
    return result


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def _match_owner(path: Path, state: Path) -> None:
    if os.geteuid() == 0:
        owner = state.stat()
        os.chown(path, owner.st_uid, owner.st_gid)


def _write_notice(state: Path, result: FirstBootResult) -> None:
    """``firstboot/notice.json`` for the console, which shows it while the router is not up."""
    notices = state / NOTICE_DIR
    make_dirs(notices, mode=0o750)
    document = {
        "outcome": result.outcome,
        "problems": result.problems,
        "fingerprint": result.fingerprint,
        "at": time.time(),
    }
    atomic_write(notices / "notice.json", json.dumps(document, indent=2).encode(), mode=0o640)
    _match_owner(notices / "notice.json", state)
