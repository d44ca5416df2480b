"""Backup and restore of the unit's configuration and keys, and the factory reset.

A backup is one file for a USB stick, encrypted with a passphrase: scrypt (n=2^15, r=8, p=1)
derives an AES-256-GCM key; the header is authenticated too. It holds the installed
configuration, the spool key file, the operator PIN's hash, the TLS key and certificate and the
commissioning record - never the spool itself (held objects are patient data).

The factory reset crypto-shreds the spool: the key file is overwritten and deleted, so every
blob and sealed record left anywhere is unreadable; then the spool and the unit's settings are
removed. Flash storage may keep old copies of the key file's blocks: docs/keys.md says what a
secure element adds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from router.config.load import parse_config
from router.config.model import Config
from router.errors import WaystationError
from router.spool.fsio import atomic_write, fsync_dir, make_dirs

MAGIC = b"WAYSTATION-BACKUP/1\n"
_SALT, _NONCE = 16, 12
MIN_PASSPHRASE = 10
CONFIG_NAME = "waystation.toml"


class BackupError(WaystationError):
    """A backup that cannot be made, read or restored; the message says why."""


@dataclass(frozen=True)
class Paths:
    """Where one unit keeps what a backup holds."""

    config: Path
    key_file: Path
    pin_file: Path
    tls: Path
    commissioning: Path
    spool: Path

    @classmethod
    def of(cls, config: Config, config_path: Path) -> Paths:
        """The paths the configuration implies."""
        return cls(
            config=config_path,
            key_file=config.spool.resolved_key_file,
            pin_file=config.pin_file,
            tls=config.state_dir / "tls",
            commissioning=config.state_dir / "commissioning",
            spool=config.spool.path,
        )

    def members(self) -> dict[str, Path]:
        """Backup member name -> file."""
        return {
            "config": self.config,
            "keys": self.key_file,
            "pin": self.pin_file,
            "tls/unit.key": self.tls / "unit.key",
            "tls/unit.crt": self.tls / "unit.crt",
            "commissioning/report.json": self.commissioning / "report.json",
        }


def _key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def create_backup(paths: Paths, out: Path, passphrase: str) -> list[str]:
    """Write an encrypted backup to ``out``; returns the member names included."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"the passphrase needs at least {MIN_PASSPHRASE} characters")
    if not paths.config.exists() or not paths.key_file.exists():
        raise BackupError("nothing to back up: no installed configuration or no key file")
    members = {
        name: base64.b64encode(path.read_bytes()).decode("ascii")
        for name, path in paths.members().items()
        if path.exists()
    }
    document = {"created": time.time(), "members": members}
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    header = MAGIC + salt + nonce
    sealed = AESGCM(_key(passphrase, salt)).encrypt(nonce, json.dumps(document).encode(), header)
    atomic_write(out, header + sealed, mode=0o600)
    return sorted(members)


def read_backup(path: Path, passphrase: str) -> dict[str, bytes]:
    """The members of a backup; BackupError on a wrong passphrase or a damaged file."""
    raw = path.read_bytes()
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _SALT + _NONCE + 16:
        raise BackupError(f"{path} is not a Waystation backup")
    salt = raw[len(MAGIC) : len(MAGIC) + _SALT]
    nonce = raw[len(MAGIC) + _SALT : len(MAGIC) + _SALT + _NONCE]
    header = raw[: len(MAGIC) + _SALT + _NONCE]
    try:
        plain = AESGCM(_key(passphrase, salt)).decrypt(nonce, raw[len(header) :], header)
    except InvalidTag:
        raise BackupError("wrong passphrase, or the backup file is damaged") from None
    document = json.loads(plain)
    return {name: base64.b64decode(value) for name, value in document["members"].items()}


def restore_backup(backup: Path, passphrase: str, state: Path) -> Paths:
    """Restore a backup into the state directory ``state``. Refuses to replace a different
    key file (that would make the spool it protects unreadable): factory-reset first."""
    members = read_backup(backup, passphrase)
    if "config" not in members or "keys" not in members:
        raise BackupError("the backup has no configuration or no key file")
    config = parse_config(
        members["config"].decode(), source="the backup's configuration", base=state
    )
    paths = Paths.of(config, state / CONFIG_NAME)
    if paths.key_file.exists() and paths.key_file.read_bytes() != members["keys"]:
        raise BackupError(
            f"this unit has other keys ({paths.key_file}): restoring would make its spool "
            "unreadable. Deliver or export what it holds, then run `waystation factory-reset`."
        )
    make_dirs(state, mode=0o750)
    # The keys before the configuration: a configuration without its keys would start a new,
    # empty key file and spool; keys without a configuration start nothing.
    order = ["keys", "pin", "tls/unit.key", "tls/unit.crt", "commissioning/report.json", "config"]
    for name in order:
        if name not in members:
            continue
        target = paths.members()[name]
        make_dirs(target.parent, mode=0o700 if name in ("keys", "tls/unit.key") else 0o750)
        mode = 0o644 if name == "tls/unit.crt" else (0o640 if name == "config" else 0o600)
        atomic_write(target, members[name], mode=mode)
    return paths


def shred_file(path: Path) -> bool:
    """Overwrite ``path`` with random bytes, sync, delete; False when it did not exist."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, os.urandom(max(size, 64)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    fsync_dir(path.parent)
    return True


def factory_reset(paths: Paths) -> list[str]:
    """Crypto-shred the spool and remove the unit's settings; returns what was removed."""
    removed: list[str] = []
    # Why first: once the keys are gone, whatever of the spool survives is ciphertext only.
    if shred_file(paths.key_file):
        removed.append(f"key file {paths.key_file} (overwritten)")
    if shred_file(paths.tls / "unit.key"):
        removed.append("TLS private key (overwritten)")
    if paths.spool.exists():
        shutil.rmtree(paths.spool)
        fsync_dir(paths.spool.parent)
        removed.append(f"spool {paths.spool}")
    for path in (paths.pin_file, paths.tls / "unit.crt", paths.config):
        if path.exists():
            path.unlink()
            removed.append(str(path))
    if paths.commissioning.exists():
        shutil.rmtree(paths.commissioning)
        removed.append(str(paths.commissioning))
    return removed
