"""The wire envelope restores every object byte for byte and refuses bombs and corruption."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from router.wan.envelope import (
    MAGIC,
    EnvelopeError,
    Mode,
    read_header,
    unwrap,
    wrap,
)
from tests.support.dicomgen import make_ct_series, make_multiframe, pydicom_test_files

_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


def _image(
    *,
    syntax: str,
    rows: int,
    cols: int,
    frames: int,
    samples: int,
    planar: int,
    allocated: int,
    stored: int,
    signed: bool,
    pixels: bytes,
    trailer: bytes = b"",
) -> bytes:
    """A Part 10 image object with exactly ``pixels`` as its Pixel Data value."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW" if allocated > 8 else "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
               implicit_vr=syntax == ImplicitVRLittleEndian)  # fmt: skip
    return out.getvalue() + trailer


def _roundtrip(original: bytes) -> bytes:
    envelope = wrap(original)
    restored = unwrap(envelope)
    assert hashlib.sha256(restored).digest() == hashlib.sha256(original).digest()
    assert restored == original
    return envelope


@st.composite
def images(draw: st.DrawFn) -> bytes:
    allocated = draw(st.sampled_from([8, 16]))
    samples = draw(st.sampled_from([1, 1, 3]))
    rows, cols = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    frames = draw(st.integers(1, 3))
    count = rows * cols * samples * frames
    pixels = draw(st.binary(min_size=count * allocated // 8, max_size=count * allocated // 8))
    if len(pixels) % 2:
        pixels += b"\0"  # DICOM pads the value to even length; the pad rides in the "rest"
    return _image(
        syntax=draw(st.sampled_from(_SYNTAXES)),
        rows=rows,
        cols=cols,
        frames=frames,
        samples=samples,
        planar=draw(st.sampled_from([0, 1])),
        allocated=allocated,
        stored=draw(st.integers(1, allocated)),
        signed=draw(st.booleans()),
        pixels=pixels,
        trailer=draw(st.sampled_from([b"", b"\x00", b"\xfe\xff\x00"])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_any_native_image_restores_exactly(original: bytes) -> None:
    _roundtrip(original)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_restore_exactly(original: bytes) -> None:
    _roundtrip(original)


def test_smooth_pixels_use_jpeg_ls_for_every_layout() -> None:
    rng = np.random.default_rng(7)
    ramp = (np.add.outer(np.arange(32), np.arange(32)) * 20).astype(np.int64)
    for syntax in _SYNTAXES:
        for signed, allocated, stored in [(True, 16, 12), (False, 16, 16), (False, 8, 8)]:
            for samples, planar, frames in [(1, 0, 1), (1, 0, 4), (3, 0, 2), (3, 1, 1)]:
                values = ramp - (2000 if signed else 0) + rng.integers(0, 3, ramp.shape)
                order = ">" if syntax == ExplicitVRBigEndian else "<"
                dtype = order + ("i" if signed else "u") + str(allocated // 8)
                if allocated == 8:
                    values = (values // 8) % 256
                # np.stack returns native byte order: convert after stacking.
                pixels = np.stack([values] * samples * frames).astype(dtype).tobytes()
                original = _image(syntax=syntax, rows=32, cols=32, frames=frames,
                                  samples=samples, planar=planar, allocated=allocated,
                                  stored=stored, signed=signed, pixels=pixels)  # fmt: skip
                envelope = _roundtrip(original)
                assert read_header(envelope).mode is Mode.PIXELS, (syntax, signed, samples)
                assert len(envelope) < len(original) * 0.6


def test_garbage_above_bits_stored_survives() -> None:
    # 12 bits stored in 16, with overlay-style junk in the top 4 bits of some pixels.
    values = np.full((16, 16), 1000, dtype="<u2")
    values[::3, ::5] |= 0xF000
    original = _image(syntax=ExplicitVRLittleEndian, rows=16, cols=16, frames=1, samples=1,
                      planar=0, allocated=16, stored=12, signed=False,
                      pixels=values.tobytes())  # fmt: skip
    assert read_header(_roundtrip(original)).mode is Mode.PIXELS


def test_ct_series_compresses_three_times(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, 3, rows=128, cols=128)
    for path in paths:
        original = path.read_bytes()
        envelope = _roundtrip(original)
        assert read_header(envelope).mode is Mode.PIXELS
        assert len(original) / len(envelope) > 2.5


def test_pydicom_files_restore_and_compressed_ones_travel_as_they_are() -> None:
    files = pydicom_test_files()
    assert len(files) > 20
    stored = 0
    for path in files:
        original = path.read_bytes()
        envelope = _roundtrip(original)
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        if syntax.startswith("1.2.840.10008.1.2.4") or syntax == "1.2.840.10008.1.2.5":
            assert read_header(envelope).mode is Mode.STORED, path.name
            assert envelope[-len(original) :] == original
            stored += 1
    assert stored > 5


# --- refusals ------------------------------------------------------------------------------


def _forged(mode: Mode, size: int, payload: bytes, digest: bytes = b"\0" * 32) -> bytes:
    return struct.pack(">4sBBHQ32s", MAGIC, 1, int(mode), 0, size, digest) + payload


def test_a_deflate_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in ~64 KB
    with pytest.raises(EnvelopeError, match="declared 1000 bytes"):
        unwrap(_forged(Mode.DEFLATE, 1000, bomb))


def test_a_declared_size_over_the_limit_is_refused() -> None:
    envelope = wrap(b"x" * 5000)
    with pytest.raises(EnvelopeError, match="over the limit"):
        unwrap(envelope, max_size=4999)
    assert unwrap(envelope, max_size=5000) == b"x" * 5000


def test_a_jpeg_ls_plane_claiming_a_huge_image_is_refused() -> None:
    ramp = (np.add.outer(np.arange(32), np.arange(32)) * 20).astype("<u2")
    original = _image(syntax=ExplicitVRLittleEndian, rows=32, cols=32, frames=1, samples=1,
                      planar=0, allocated=16, stored=16, signed=False,
                      pixels=ramp.tobytes())  # fmt: skip
    envelope = bytearray(wrap(original))
    sof = envelope.index(b"\xff\xf7")
    envelope[sof + 5 : sof + 9] = struct.pack(">HH", 65535, 65535)
    with pytest.raises(EnvelopeError, match="frame header disagrees"):
        unwrap(bytes(envelope))


_RAMP = (np.add.outer(np.arange(8), np.arange(8)) * 9).astype("<i2") - 300
_SMALL = _image(syntax=ExplicitVRLittleEndian, rows=8, cols=8, frames=2, samples=1, planar=0,
                allocated=16, stored=12, signed=True, pixels=_RAMP.tobytes() * 2)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_damaged_envelope_raises_envelope_error_or_restores(data: st.DataObject) -> None:
    original = _SMALL
    envelope = bytearray(wrap(original))
    if data.draw(st.booleans()):
        del envelope[data.draw(st.integers(0, len(envelope) - 1)) :]
    else:
        at = data.draw(st.integers(0, len(envelope) - 1))
        envelope[at] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(EnvelopeError):
        assert unwrap(bytes(envelope)) == original


def test_not_an_envelope() -> None:
    with pytest.raises(EnvelopeError, match="magic"):
        unwrap(b"DICM" + b"\0" * 100)
    with pytest.raises(EnvelopeError, match="version 9"):
        unwrap(struct.pack(">4sBBHQ32s", MAGIC, 9, 0, 0, 0, b"\0" * 32))


def test_a_multiframe_object_restores_within_a_bounded_amount_of_memory(tmp_path: Path) -> None:
    path = make_multiframe(tmp_path / "mf.dcm", size_mb=4)  # 8 frames of 512 x 512, 12 bits
    original = path.read_bytes()
    tracemalloc.start()
    try:
        envelope = wrap(original)
        _, wrap_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        restored = unwrap(envelope)
        _, unwrap_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert restored == original
    assert read_header(envelope).mode is Mode.PIXELS
    assert len(envelope) < len(original) / 2
    # Python and numpy allocations (the codec's own buffers are per plane and not traced).
    assert wrap_peak < 3.5 * len(original)
    assert unwrap_peak < 3 * len(original)
