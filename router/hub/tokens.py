"""Per-unit bearer tokens for the hub: minted once at enrollment, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.hub.protocol import check_unit
from router.spool.journal import Journal

_PREFIX = "wst_"


def mint() -> str:
    """A new token: 256 random bits, URL-safe."""
    return _PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """What is stored: SHA-256 of the token (a random 256-bit secret needs no slow hash)."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Unit:
    """An enrolled unit as `waystation hub units` lists it."""

    unit: str
    enrolled_at: float
    revoked_at: float | None


class UnitRegistry:
    """Enrollment, revocation and token checks, in the hub's journal."""

    def __init__(self, journal: Journal, reader: Callable[[], sqlite3.Connection]) -> None:
        self.journal = journal
        self._reader = reader

    def enroll(self, unit: str) -> str:
        """Enrol ``unit`` (or re-enrol it: the old token stops working); returns the token."""
        check_unit(unit)
        token = mint()
        now = time.time()
        self.journal.run(
            lambda conn: conn.execute(
                "INSERT INTO hub_units(unit, token_hash, enrolled_at) VALUES (?, ?, ?)"
                " ON CONFLICT(unit) DO UPDATE SET token_hash = excluded.token_hash,"
                " enrolled_at = excluded.enrolled_at, revoked_at = NULL",
                (unit, token_hash(token), now),
            )
        )
        return token

    def revoke(self, unit: str) -> bool:
        """Revoke ``unit``'s token; False when no such unit is enrolled."""
        changed: int = self.journal.run(
            lambda conn: (
                conn.execute(
                    "UPDATE hub_units SET revoked_at = ? WHERE unit = ? AND revoked_at IS NULL",
                    (time.time(), unit),
                ).rowcount
            )
        )
        return changed > 0

    def units(self) -> list[Unit]:
        """Every enrolled unit, revoked ones included."""
        rows = (
            self._reader()
            .execute("SELECT unit, enrolled_at, revoked_at FROM hub_units ORDER BY unit")
            .fetchall()
        )
        return [Unit(*row) for row in rows]

    def authenticate(self, token: str) -> tuple[str | None, str]:
        """The unit a token belongs to, or None with the reason in plain words."""
        row = (
            self._reader()
            .execute(
                "SELECT unit, revoked_at FROM hub_units WHERE token_hash = ?", (token_hash(token),)
            )
            .fetchone()
        )
        if row is None:
            return None, "unknown token"
        if row[1] is not None:
            return None, "this unit's token was revoked"
        return str(row[0]), ""
