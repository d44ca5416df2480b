"""The lossless wire envelope: a Part 10 object made smaller for the WAN, restored exactly.

``wrap(original) -> envelope`` and ``unwrap(envelope) -> original``, byte for byte (the
envelope carries the original's SHA-256 and ``unwrap`` checks it). Three modes:

* ``PIXELS`` - native (uncompressed) pixel data is cut out of the object and each frame's
  sample planes are JPEG-LS coded losslessly; everything else (the file meta, the data set
  around the pixels, any padding) is deflated. Pixel values are shifted by the plane's minimum
  before coding, which maps signed pixels and bits stored < bits allocated (including
  garbage in the high bits) onto a small unsigned range without losing a bit.
* ``DEFLATE`` - the whole object deflated: objects without native 8/16-bit pixel data
  (structured reports, 32-bit or 1-bit pixels, anything unparsable).
* ``STORED`` - the object as it is, marked: already compressed transfer syntaxes (JPEG, JPEG
  2000, RLE, deflated) and anything deflate does not shrink.

``wrap`` verifies its own output by unwrapping it before returning, so a codec bug can cost
ratio, never data. ``unwrap`` refuses an envelope whose declared size is over the caller's
limit and never inflates or decodes past what the header declares (decompression bombs).

Memory: both directions hold the object and its envelope in memory (peak about 3 x the object,
measured by tests/unit/test_envelope.py);
callers bound object size with ``max_size``.

Wire format, version 1 (all integers big-endian)::

    header  magic "WSEV" | version u8 | mode u8 | reserved u16 | size u64 | sha256 [32]
    STORED  the original bytes
    DEFLATE a zlib stream of the original bytes
    PIXELS  region_offset u64 | frames u32 | rows u16 | columns u16 | samples u8 |
            planar u8 | bytes_per_sample u8 | flags u8 (1 big-endian, 2 signed) |
            rest_len u64 | planes x (minimum i32 | bits u8 | jls_len u32) |
            zlib(rest) | JPEG-LS streams, frame by frame, plane by plane
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from router.errors import WaystationError

MAGIC = b"WSEV"
VERSION = 1
_HEADER = struct.Struct(">4sBBHQ32s")
_PIXELS = struct.Struct(">QIHHBBBBQ")
_PLANE = struct.Struct(">iBI")
# An object this big is refused by default: the hub and the sender both hold it in memory.
DEFAULT_MAX_SIZE = 4 * 1024**3
# deflate must save at least this share, else the object travels as it is.
_MIN_SAVING = 0.02
_NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
}
_FLAG_BIG_ENDIAN = 1
_FLAG_SIGNED = 2


class Mode(IntEnum):
    """How an envelope's payload is coded."""

    STORED = 0
    DEFLATE = 1
    PIXELS = 2


class EnvelopeError(WaystationError):
    """An envelope is malformed, too big, or does not restore to the bytes it declares."""


@dataclass(frozen=True)
class EnvelopeInfo:
    """What an envelope's header declares (read without decoding the payload)."""

    version: int
    mode: Mode
    size: int
    sha256: str


def read_header(envelope: bytes) -> EnvelopeInfo:
    """Return the header of ``envelope``; raises EnvelopeError if it is not one."""
    if len(envelope) < _HEADER.size:
        raise EnvelopeError("not a Waystation envelope: shorter than its header")
    magic, version, mode, _reserved, size, digest = _HEADER.unpack_from(envelope)
    if magic != MAGIC:
        raise EnvelopeError("not a Waystation envelope: wrong magic bytes")
    if version != VERSION:
        raise EnvelopeError(f"envelope version {version} is not supported (only {VERSION})")
    if mode not in Mode._value2member_map_:
        raise EnvelopeError(f"envelope mode {mode} is unknown")
    return EnvelopeInfo(version, Mode(mode), size, digest.hex())


def wrap(original: bytes, *, verify: bool = True) -> bytes:
    """Return the envelope of ``original`` (any bytes; Part 10 objects compress best).

    With ``verify`` (the default) the envelope is unwrapped and compared before it is
    returned; if the pixel coding does not restore exactly, the object is deflated instead.
    """
    digest = hashlib.sha256(original).digest()
    plan = _pixel_plan(original)
    if plan == "stored":
        return _header(Mode.STORED, original, digest) + original
    if isinstance(plan, _Plan):
        try:
            envelope: bytes | None = _wrap_pixels(original, digest, plan)
        except Exception:  # a codec refusing odd data must cost ratio, not the object
            envelope = None
        fits = envelope is not None and len(envelope) < len(original)
        if envelope is not None and fits and (not verify or _restores(envelope, original)):
            return envelope
    return _wrap_deflate(original, digest)


def unwrap(envelope: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Return the original bytes of ``envelope``, checked against its SHA-256.

    Raises EnvelopeError for anything malformed, for a declared size over ``max_size``, and
    for a payload that would inflate past its declared size.
    """
    info = read_header(envelope)
    if info.size > max_size:
        raise EnvelopeError(
            f"envelope declares {info.size} bytes, over the limit of {max_size} bytes"
        )
    payload = memoryview(envelope)[_HEADER.size :]
    if info.mode is Mode.STORED:
        original = bytes(payload)
    elif info.mode is Mode.DEFLATE:
        original = _inflate_exact(payload, info.size)
    else:
        try:
            original = _unwrap_pixels(payload, info.size)
        except EnvelopeError:
            raise
        except Exception as exc:  # a corrupt JPEG-LS stream: the codec's own exception types
            raise EnvelopeError(f"envelope's pixel data is corrupt: {exc}") from None
    if len(original) != info.size:
        raise EnvelopeError(f"envelope restores {len(original)} bytes, declares {info.size}")
    if hashlib.sha256(original).hexdigest() != info.sha256:
        raise EnvelopeError("envelope does not restore the original bytes (SHA-256 differs)")
    return original


# --- planning: where the native pixel data is ---------------------------------------------


@dataclass(frozen=True)
class _Plan:
    offset: int
    frames: int
    rows: int
    columns: int
    samples: int
    planar: int
    bytes_per_sample: int
    flags: int

    @property
    def frame_len(self) -> int:
        return self.rows * self.columns * self.samples * self.bytes_per_sample

    @property
    def region_len(self) -> int:
        return self.frames * self.frame_len


def _pixel_plan(data: bytes) -> _Plan | str | None:
    """A plan for PIXELS, "stored" for compressed syntaxes, or None to deflate."""
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement

    try:
        ds = dcmread(io.BytesIO(data), force=False)
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except Exception:  # not Part 10, or not parsable: deflate it as bytes
        return None
    if syntax not in _NATIVE_SYNTAXES:
        return "stored" if syntax.startswith("1.2.840.10008.1.2.") else None
    try:
        raw: Any = ds.get_item(0x7FE00010)
        if not isinstance(raw, RawDataElement) or raw.value_tell is None:
            return None
        plan = _Plan(
            offset=int(raw.value_tell),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples=int(ds.get("SamplesPerPixel", 1)),
            planar=int(ds.get("PlanarConfiguration", 0) or 0),
            bytes_per_sample=int(ds.BitsAllocated) // 8,
            flags=(_FLAG_BIG_ENDIAN if syntax == "1.2.840.10008.1.2.2" else 0)
            | (_FLAG_SIGNED if int(ds.get("PixelRepresentation", 0)) == 1 else 0),
        )
        length = int(raw.length)
    except Exception:  # missing or nonsensical image attributes
        return None
    if (
        int(ds.BitsAllocated) not in (8, 16)
        or plan.frames < 1
        or plan.rows < 1
        or plan.columns < 1
        or plan.samples not in (1, 3, 4)
        or plan.planar not in (0, 1)
        or length == 0xFFFFFFFF
        or length < plan.region_len
        or plan.offset + plan.region_len > len(data)
    ):
        return None
    return plan


# --- PIXELS --------------------------------------------------------------------------------


def _dtype(plan: _Plan) -> np.dtype[Any]:
    order = ">" if plan.flags & _FLAG_BIG_ENDIAN else "<"
    kind = "i" if plan.flags & _FLAG_SIGNED else "u"
    return np.dtype(f"{order}{kind}{plan.bytes_per_sample}")


def _planes(frame: np.ndarray[Any, Any], plan: _Plan) -> list[np.ndarray[Any, Any]]:
    if plan.samples == 1:
        return [frame.reshape(plan.rows, plan.columns)]
    if plan.planar == 0:
        cube = frame.reshape(plan.rows, plan.columns, plan.samples)
        return [cube[:, :, s] for s in range(plan.samples)]
    cube = frame.reshape(plan.samples, plan.rows, plan.columns)
    return [cube[s] for s in range(plan.samples)]


def _wrap_pixels(original: bytes, digest: bytes, plan: _Plan) -> bytes:
    import jpeg_ls

    rest = original[: plan.offset] + original[plan.offset + plan.region_len :]
    pixels = np.frombuffer(
        original, _dtype(plan), plan.region_len // plan.bytes_per_sample, plan.offset
    )
    table = bytearray()
    streams: list[bytes] = []
    for f in range(plan.frames):
        count = plan.frame_len // plan.bytes_per_sample
        for plane in _planes(pixels[f * count : (f + 1) * count], plan):
            minimum = int(plane.min())
            spread = int(plane.max()) - minimum
            bits = max(2, spread.bit_length())
            shifted = (plane.astype(np.int64) - minimum).astype(
                "<u2" if plan.bytes_per_sample == 2 else "u1"
            )
            stream = bytes(
                jpeg_ls.encode_buffer(shifted.tobytes(), plan.rows, plan.columns, 1, bits)
            )
            table += _PLANE.pack(minimum, bits, len(stream))
            streams.append(stream)
    head = _PIXELS.pack(
        plan.offset, plan.frames, plan.rows, plan.columns, plan.samples, plan.planar,
        plan.bytes_per_sample, plan.flags, len(rest),
    )  # fmt: skip
    return b"".join(
        [_header(Mode.PIXELS, original, digest), head, bytes(table), zlib.compress(rest, 6),
         *streams]
    )  # fmt: skip


def _unwrap_pixels(payload: memoryview, size: int) -> bytes:
    import jpeg_ls

    if len(payload) < _PIXELS.size:
        raise EnvelopeError("envelope truncated in its pixel header")
    offset, frames, rows, columns, samples, planar, bps, flags, rest_len = _PIXELS.unpack_from(
        payload
    )
    plan = _Plan(offset, frames, rows, columns, samples, planar, bps, flags)
    if bps not in (1, 2) or samples not in (1, 3, 4) or planar not in (0, 1) or frames < 1:
        raise EnvelopeError("envelope pixel header is malformed")
    if rest_len + plan.region_len != size or offset > rest_len:
        raise EnvelopeError("envelope pixel header disagrees with the declared size")
    n_planes = frames * samples
    table_end = _PIXELS.size + n_planes * _PLANE.size
    if table_end > len(payload):
        raise EnvelopeError("envelope truncated in its plane table")
    entries = [_PLANE.unpack_from(payload, _PIXELS.size + i * _PLANE.size) for i in range(n_planes)]
    streams_len = sum(entry[2] for entry in entries)
    rest_end = len(payload) - streams_len
    if rest_end < table_end:
        raise EnvelopeError("envelope plane table claims more bytes than it holds")
    rest = _inflate_exact(payload[table_end:rest_end], rest_len)
    # One buffer for the whole object: the pixel planes are decoded straight into it.
    out = bytearray(size)
    out[:offset] = rest[:offset]
    out[offset + plan.region_len :] = rest[offset:]
    del rest
    region = np.frombuffer(out, _dtype(plan), plan.region_len // bps, offset)
    wire = "<u2" if bps == 2 else "u1"
    position = rest_end
    count = plan.frame_len // bps
    for f in range(frames):
        frame = region[f * count : (f + 1) * count]
        for s, plane in enumerate(_planes(frame, plan)):
            minimum, bits, length = entries[f * samples + s]
            stream = bytes(payload[position : position + length])
            position += length
            _check_jls_header(stream, rows, columns, bits)
            decoded = np.frombuffer(jpeg_ls.decode_from_buffer(stream), wire)
            if decoded.size != rows * columns:
                raise EnvelopeError("a JPEG-LS plane decodes to the wrong number of pixels")
            values = decoded.astype(np.int64).reshape(rows, columns) + minimum
            plane[...] = values.astype(plane.dtype)
    return bytes(out)


def _check_jls_header(stream: bytes, rows: int, columns: int, bits: int) -> None:
    """Refuse a JPEG-LS stream whose frame header is not the declared one, before decoding
    (a tiny stream may claim a 65535 x 65535 image)."""
    if stream[:2] != b"\xff\xd8":
        raise EnvelopeError("a JPEG-LS plane does not start with SOI")
    at = 2
    while at + 4 <= len(stream):
        if stream[at] != 0xFF:
            break
        marker = stream[at + 1]
        (length,) = struct.unpack_from(">H", stream, at + 2)
        if marker == 0xF7:  # SOF55, JPEG-LS
            if at + 10 > len(stream):
                break
            precision, height, width, components = struct.unpack_from(">BHHB", stream, at + 4)
            if (precision, height, width, components) != (bits, rows, columns, 1):
                raise EnvelopeError("a JPEG-LS plane's frame header disagrees with the envelope")
            return
        at += 2 + length
    raise EnvelopeError("a JPEG-LS plane has no readable frame header")


# --- DEFLATE and helpers -------------------------------------------------------------------


def _wrap_deflate(original: bytes, digest: bytes) -> bytes:
    level = 6 if len(original) < (1 << 20) else 1
    packed = zlib.compress(original, level)
    if len(packed) > len(original) * (1 - _MIN_SAVING):
        return _header(Mode.STORED, original, digest) + original
    return _header(Mode.DEFLATE, original, digest) + packed


def _inflate_exact(packed: memoryview | bytes, size: int) -> bytes:
    """Inflate ``packed`` to exactly ``size`` bytes, never producing more than size + 1."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(packed, size + 1)
    except zlib.error as exc:
        raise EnvelopeError(f"envelope's deflate stream is corrupt: {exc}") from None
    if len(out) != size or inflater.unconsumed_tail or not inflater.eof:
        raise EnvelopeError(
            f"envelope's deflate stream does not inflate to its declared {size} bytes"
        )
    return out


def _header(mode: Mode, original: bytes, digest: bytes) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, int(mode), 0, len(original), digest)


def _restores(envelope: bytes, original: bytes) -> bool:
    try:
        return unwrap(envelope, max_size=len(original)) == original
    except EnvelopeError:
        return False
