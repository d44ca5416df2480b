"""The hub protocol's vocabulary, pure: header names, metadata encoding and validation.

Shared by the hub (router/hub/server.py) and the sender (router/delivery/hub_sender.py), so
both ends parse and build the same thing. See docs/hub-protocol.md. Follows tus 1.0 (core,
creation, checksum, termination) where it fits.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

TUS_VERSION = "1.0.0"
API = "/v1"
UPLOADS = f"{API}/uploads"
RECEIPTS = f"{API}/receipts"
MANIFESTS = f"{API}/manifests"
# An authenticated "who am I": the unit the token belongs to (commissioning's check).
WHOAMI = f"{API}/whoami"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# What the hub offers (OPTIONS Tus-Extension). creation-with-upload (tus): the create may
# carry the first chunk. waystation-commit: a chunk (or create) with "Waystation-Commit: 1"
# that completes the upload also commits it, answering as the commit would.
EXTENSIONS = "creation,creation-with-upload,checksum,termination,waystation-commit"
COMMIT_HEADER = "Waystation-Commit"
# tus checksum extension: a chunk whose checksum does not match is refused with this status.
CHECKSUM_MISMATCH = 460

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_UNIT = re.compile(r"^[A-Za-z0-9_.\-]{1,16}$")
_REQUIRED = ("sop", "study", "series", "sha256")
ENVELOPE = "wsev1"
ENCODINGS = frozenset({"", ENVELOPE})


class ProtocolError(ValueError):
    """A request that breaks the protocol; the message is safe to show (no patient data)."""


@dataclass(frozen=True)
class UploadMetadata:
    """What a unit says about an object when it creates an upload."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sha256: str  # hex of the SHA-256 of the object's bytes, as the unit holds them
    # "" the bytes as they are; "wsev1" the lossless envelope (router/wan/envelope.py), which
    # the hub unwraps at commit. The sha256 is always the original object's.
    encoding: str = ""
    # How many objects the unit holds of this study for this hub (a study manifest riding
    # on the create, so announcing costs no round trip); 0 when not said.
    study_objects: int = 0

    def header(self) -> str:
        """The Upload-Metadata header value (tus: comma-separated "key base64(value)")."""
        pairs = {
            "sop": self.sop_instance_uid,
            "study": self.study_instance_uid,
            "series": self.series_instance_uid,
            "sha256": self.sha256,
        }
        if self.encoding:
            pairs["encoding"] = self.encoding
        if self.study_objects:
            pairs["study-objects"] = str(self.study_objects)
        return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def parse_metadata(value: str | None) -> UploadMetadata:
    """Parse and check an Upload-Metadata header; raises ProtocolError saying what is wrong."""
    if not value:
        raise ProtocolError("Upload-Metadata is required (sop, study, series, sha256)")
    if len(value) > 4096:
        raise ProtocolError("Upload-Metadata is too long")
    fields: dict[str, str] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) != 2 or not parts[0]:
            raise ProtocolError("Upload-Metadata: each pair is 'key base64value'")
        try:
            fields[parts[0]] = base64.b64decode(parts[1], validate=True).decode("ascii")
        except ValueError:  # binascii.Error, non-ASCII input, or bytes that are not ASCII
            raise ProtocolError(f"Upload-Metadata: {parts[0]} is not base64 ASCII") from None
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise ProtocolError(f"Upload-Metadata lacks {', '.join(missing)}")
    for key in ("sop", "study", "series"):
        check_uid(fields[key], key)
    if not _SHA256_HEX.match(fields["sha256"]):
        raise ProtocolError("Upload-Metadata: sha256 must be 64 lower-case hex digits")
    encoding = fields.get("encoding", "")
    if encoding not in ENCODINGS:
        raise ProtocolError(f"Upload-Metadata: encoding must be one of {sorted(ENCODINGS)}")
    count = fields.get("study-objects", "0")
    if not count.isdigit() or len(count) > 7:
        raise ProtocolError("Upload-Metadata: study-objects must be a whole number")
    return UploadMetadata(
        fields["sop"], fields["study"], fields["series"], fields["sha256"], encoding, int(count)
    )


def check_uid(value: str, what: str) -> str:
    """A DICOM UID: digits and dots, at most 64 characters (never used as a path)."""
    if not (1 <= len(value) <= 64) or not _UID.match(value):
        raise ProtocolError(f"{what} is not a valid DICOM UID")
    return value


def parse_length(value: str | None, what: str, maximum: int) -> int:
    """A non-negative decimal integer header at most ``maximum``."""
    if value is None or not value.isdigit() or len(value) > 20:
        raise ProtocolError(f"{what} must be a non-negative integer")
    number = int(value)
    if number > maximum:
        raise ProtocolError(f"{what} {number} is over the limit of {maximum}")
    return number


def parse_checksum(value: str | None) -> bytes | None:
    """tus Upload-Checksum "sha256 <base64>": the digest, or None when absent."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm.lower() != "sha256":
        raise ProtocolError("Upload-Checksum: only sha256 is supported")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII characters (found by fuzzing)
        raise ProtocolError("Upload-Checksum: not base64") from None
    if len(digest) != 32:
        raise ProtocolError("Upload-Checksum: a SHA-256 digest has 32 bytes")
    return digest


def checksum_header(digest: bytes) -> str:
    """The Upload-Checksum header for a chunk's SHA-256 digest."""
    return "sha256 " + base64.b64encode(digest).decode()


def is_upload_id(value: str) -> bool:
    """Whether ``value`` looks like an upload id the hub made (32 hex digits)."""
    return bool(_UPLOAD_ID.match(value))


def check_unit(value: str) -> str:
    """A unit id: 1-16 letters, digits, '_', '.', '-' (it is the objects' calling AE title)."""
    if not _UNIT.match(value):
        raise ProtocolError("a unit id has 1 to 16 characters: letters, digits, '_', '.' or '-'")
    return value


def bearer_token(value: str | None) -> str | None:
    """The token of an "Authorization: Bearer <token>" header, or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 512:
        return None
    return token.strip()


def retry_after_seconds(value: str | None, default: float | None = None) -> float | None:
    """Retry-After in seconds (the delay form; an HTTP date is treated as absent)."""
    if value is None or not value.strip().isdigit():
        return default
    return min(float(value.strip()), 86_400.0)
