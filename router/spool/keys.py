"""The unit's keys: key-encryption keys (KEKs) that wrap per-object data keys, and the index
secret used to seal metadata and make lookup tags.

The key file (JSON, mode 0600) is created on first start. By default it sits on the same storage
as the spool, so whoever holds the storage card holds the keys: see docs/keys.md for what that
exposes and how a TPM or secure element changes it. Rotation adds a KEK and makes it active;
old KEKs stay to unwrap older data keys (re-wrapping only touches the journal, never blobs).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from router.errors import IntegrityError, KeyStoreError
from router.spool.crypto import CipherName, open_sealed, seal
from router.spool.fsio import atomic_write, make_dirs

_FORMAT = "waystation-keys/1"


@dataclass(frozen=True)
class Keyring:
    """The unit's keys. Never logged, never written anywhere but the key file."""

    active_id: str
    keks: dict[str, bytes]
    index_secret: bytes
    cipher: CipherName

    def wrap(self, data_key: bytes, object_id: str) -> tuple[str, bytes]:
        """Wrap a data key under the active KEK, bound to ``object_id``."""
        ad = f"data-key|{self.active_id}|{object_id}".encode()
        return self.active_id, seal(self.cipher, self.keks[self.active_id], data_key, ad)

    def unwrap(self, key_id: str, wrapped: bytes, object_id: str) -> bytes:
        """Unwrap a data key; IntegrityError if it was moved to another object or altered."""
        kek = self.keks.get(key_id)
        if kek is None:
            raise IntegrityError(f"object {object_id} uses key {key_id}, not in the key file")
        ad = f"data-key|{key_id}|{object_id}".encode()
        # Try the current cipher first, then the other: a spool may move between CPUs.
        try:
            return open_sealed(self.cipher, kek, wrapped, ad)
        except IntegrityError:
            other: CipherName = (
                "chacha20-poly1305" if self.cipher == "aes-256-gcm" else "aes-256-gcm"
            )
            return open_sealed(other, kek, wrapped, ad)

    def _derived(self, purpose: bytes) -> bytes:
        return _derive(self.index_secret, purpose)

    def lookup_tag(self, kind: str, value: str) -> bytes:
        """A keyed tag for finding records by a sensitive value (e.g. a SOP Instance UID)
        without storing the value: equal inputs give equal tags, and without the key the tag
        reveals nothing."""
        key = self._derived(b"lookup")
        return hmac.new(key, f"{kind}|{value}".encode(), hashlib.sha256).digest()[:16]

    def content_tag(self, sha256: bytes) -> bytes:
        """The stored form of an object's SHA-256: keyed, so that someone holding a copy of a
        file cannot confirm from the journal alone that this unit holds it."""
        key = self._derived(b"content")
        return hmac.new(key, sha256, hashlib.sha256).digest()

    def seal_record(self, record_id: str, plaintext: bytes) -> bytes:
        """Encrypt metadata (patient name, IDs...) bound to ``record_id``."""
        return b"\x01" + seal(
            "aes-256-gcm", self._derived(b"records"), plaintext, record_id.encode()
        )

    def open_record(self, record_id: str, sealed: bytes) -> bytes:
        """Decrypt metadata sealed by ``seal_record``."""
        if not sealed.startswith(b"\x01"):
            raise IntegrityError("unknown record format")
        return open_sealed("aes-256-gcm", self._derived(b"records"), sealed[1:], record_id.encode())


@functools.lru_cache(maxsize=32)
def _derive(secret: bytes, purpose: bytes) -> bytes:
    # Cached: these keys are used for every object, and HKDF is not free on a Pi.
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"waystation " + purpose
    ).derive(secret)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def load_or_create(path: Path, cipher: CipherName) -> Keyring:
    """Load the key file, creating it (mode 0600, folder 0700) on first start."""
    if not path.exists():
        make_dirs(path.parent)
        key_id = uuid.uuid4().hex[:16]
        document = {
            "format": _FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "active": key_id,
            "keks": {key_id: _b64(os.urandom(32))},
            "index_secret": _b64(os.urandom(32)),
        }
        # The key must be durable before any object is acknowledged under it.
        atomic_write(path, json.dumps(document, indent=2).encode(), mode=0o600)
    return load(path, cipher)


def load(path: Path, cipher: CipherName) -> Keyring:
    """Load an existing key file; KeyStoreError says plainly what is wrong."""
    try:
        mode = path.stat().st_mode & 0o777
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyStoreError(f"key file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise KeyStoreError(f"key file {path} cannot be read: {exc}") from None
    if mode & 0o077:
        raise KeyStoreError(
            f"key file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    try:
        if document["format"] != _FORMAT:
            raise KeyStoreError(f"key file {path} has unknown format {document['format']!r}")
        keks = {k: base64.b64decode(v) for k, v in document["keks"].items()}
        active = document["active"]
        secret = base64.b64decode(document["index_secret"])
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"key file {path} is malformed: {exc}") from None
    if active not in keks or any(len(k) != 32 for k in keks.values()) or len(secret) != 32:
        raise KeyStoreError(f"key file {path} is malformed: bad key lengths or active key")
    return Keyring(active_id=active, keks=keks, index_secret=secret, cipher=cipher)


def fingerprint(keyring: Keyring) -> str:
    """A short fingerprint of the active KEK, safe to print in reports."""
    digest = hashlib.sha256(b"waystation-kek-fp|" + keyring.keks[keyring.active_id]).hexdigest()
    return f"{keyring.active_id}:{digest[:16]}"
