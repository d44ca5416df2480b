"""Who is calling (the socket peer's credentials) and the operator PIN.

The kernel tells us the peer's uid (SO_PEERCRED); nothing the client sends can change it. The
PIN is stored only as a salted scrypt hash in a 0600 file; wrong PINs are rate-limited.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import hmac
import itertools
import os
import pwd
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_PIN_FORMAT = "scrypt"
MIN_PIN_DIGITS = 4


@dataclass(frozen=True)
class Peer:
    """The process on the other end of the socket."""

    pid: int
    uid: int
    gid: int
    user: str


def peer_of(sock: socket.socket) -> Peer:
    """The peer's credentials, from the kernel (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid{uid}"
    return Peer(pid, uid, gid, user)


def group_id(name: str) -> int | None:
    """The gid of group ``name``, or None when no such group exists."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def is_operator(peer: Peer, operators_group: str) -> bool:
    """Root, the daemon's own user, and members of the operators group may use the API."""
    if peer.uid in (0, os.geteuid()):
        return True
    try:
        group = grp.getgrnam(operators_group)
    except KeyError:
        return False
    if peer.gid == group.gr_gid or peer.user in group.gr_mem:
        return True
    # Supplementary groups of the peer's user (as the system's group database lists them).
    with contextlib.suppress(KeyError):
        entry = pwd.getpwuid(peer.uid)
        return group.gr_gid in os.getgrouplist(entry.pw_name, entry.pw_gid)
    return False


# -- the operator PIN ----------------------------------------------------------------------


class PinRefused(ValueError):
    """A PIN that may not be used (too short, not digits, all the same digit, a sequence)."""


def check_new_pin(pin: str) -> None:
    """Refuse trivial PINs: fewer than 4 digits, non-digits, one repeated digit, a run."""
    if not pin.isdigit() or not pin.isascii():
        raise PinRefused("the PIN must be digits only")
    if len(pin) < MIN_PIN_DIGITS:
        raise PinRefused(f"the PIN must have at least {MIN_PIN_DIGITS} digits")
    if len(set(pin)) == 1:
        raise PinRefused("the PIN must not be one digit repeated")
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    if steps in ({1}, {-1}):
        raise PinRefused("the PIN must not be a run of digits such as 1234")


def _hash(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, dklen=32, **_SCRYPT)


def write_pin(path: Path, pin: str) -> None:
    """Store ``pin`` as a salted scrypt hash in a 0600 file (atomically replaced)."""
    check_new_pin(pin)
    salt = os.urandom(16)
    line = f"{_PIN_FORMAT}${salt.hex()}${_hash(pin, salt).hex()}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
        if os.geteuid() == 0:
            # Set by root for a router running as its own user: that user must read it.
            owner = path.parent.stat()
            os.fchown(fd, owner.st_uid, owner.st_gid)
    finally:
        os.close(fd)
    os.replace(temporary, path)


class PinStore:
    """Verifies operator PINs against the hash file; at most ``limit`` wrong PINs a minute."""

    def __init__(self, path: Path, *, limit: int = 5, window: float = 60.0) -> None:
        self.path = path
        self.limit = limit
        self.window = window
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()
        # Why: scrypt is slow on purpose (tens of ms); a console refreshing with the PIN every
        # 2 s must not pay it each time. Remembered as a keyed digest, for this file version.
        self._session_key = os.urandom(32)
        self._verified: tuple[float, bytes] | None = None

    def is_set(self) -> bool:
        """Whether an operator PIN has been set."""
        return self.path.exists()

    def limited(self, now: float | None = None) -> bool:
        """Whether too many wrong PINs were given in the last minute."""
        at = time.monotonic() if now is None else now
        with self._lock:
            while self._failures and self._failures[0] <= at - self.window:
                self._failures.popleft()
            return len(self._failures) >= self.limit

    def verify(self, pin: str) -> bool:
        """Whether ``pin`` is the operator PIN (False when none is set). A wrong PIN counts
        towards the rate limit; check ``limited()`` first."""
        try:
            version = self.path.stat().st_mtime
            kind, salt, digest = self.path.read_text().strip().split("$")
        except (OSError, ValueError):
            return False
        remembered = hmac.new(self._session_key, pin.encode(), hashlib.sha256).digest()
        with self._lock:
            known = self._verified
        if known is not None and known[0] == version and hmac.compare_digest(known[1], remembered):
            return True
        ok = kind == _PIN_FORMAT and hmac.compare_digest(
            _hash(pin, bytes.fromhex(salt)), bytes.fromhex(digest)
        )
        if ok:
            with self._lock:
                self._verified = (version, remembered)
        else:
            with self._lock:
                self._failures.append(time.monotonic())
        return ok
