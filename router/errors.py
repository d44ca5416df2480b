"""Waystation's errors, one tree with stable codes and plain-language messages.

WaystationError
├── ConfigError            the configuration file is invalid (exit code 78)
├── SpoolError             the spool cannot do what was asked
│   ├── StorageFull        below min_free: new objects are refused (0xA700)
│   ├── StorageFault       a write or fsync failed: nothing affected is acknowledged
│   └── IntegrityError     a held object fails its AEAD tag or SHA-256 check
├── KeyStoreError          the unit's key file is missing, unreadable or malformed
└── ControlSocketError     the control API's socket cannot be served
"""

from __future__ import annotations


class WaystationError(Exception):
    """Base of every error Waystation raises on purpose."""

    code = "WS000"


class ConfigError(WaystationError):
    """The configuration is invalid; ``problems`` lists every finding."""

    code = "WS078"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SpoolError(WaystationError):
    """The spool could not complete an operation."""

    code = "WS100"


class StorageFull(SpoolError):
    """Free space is below the configured minimum; new objects are refused."""

    code = "WS101"


class StorageFault(SpoolError):
    """A write or fsync failed. Never retried as if the data were safe (fsyncgate)."""

    code = "WS102"


class IntegrityError(SpoolError):
    """A held object failed authentication (AEAD tag) or its recorded SHA-256."""

    code = "WS103"


class KeyStoreError(WaystationError):
    """The unit key file is missing, unreadable or malformed."""

    code = "WS200"


class ControlSocketError(WaystationError):
    """The control API's Unix socket cannot be created (or another router serves it)."""

    code = "WS300"
