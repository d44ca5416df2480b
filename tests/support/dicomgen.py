"""Deterministic DICOM test data for tests and benchmarks.

Everything here is synthetic and reproducible: the same arguments give byte-identical files on
every run (UIDs come from :func:`pydicom.uid.generate_uid` with a fixed prefix and entropy sources
derived from the seed, pixel noise from a seeded numpy generator, dates and times from the seed).

Generators:

* :func:`make_ct_series` - a CT Image Storage series of a torso phantom, 16-bit signed,
  Explicit VR Little Endian, ~525 KB per 512x512 slice.
* :func:`make_mr_series` - an MR Image Storage series of a head phantom, 16-bit unsigned
  (12 bits stored), ~131 KB per 256x256 slice, lossless ratio near the published 3.6 for MR.
* :func:`make_tiny_objects` - many ~5 KB CT objects spread over a few studies.
* :func:`make_multiframe` - one huge Multi-frame Grayscale Word Secondary Capture object, written
  streaming so the generator never holds the pixel data in memory.

Other helpers: :func:`pydicom_test_files` (pydicom's bundled files that are usable as storage
objects), :func:`cached_dataset` (build once into ``var/testdata``), :func:`dataset_bytes` /
:func:`dataset_sha256` (the data set after the File Meta Information, for byte-exact comparisons
that survive a receiver rewriting the file meta) and :func:`sha256_file`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import hashlib
import math
import os
import random
import shutil
import struct
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.data
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "REPO_ROOT",
    "TESTDATA_ROOT",
    "Patient",
    "cached_dataset",
    "dataset_bytes",
    "dataset_offset",
    "dataset_sha256",
    "make_ct_series",
    "make_mr_series",
    "make_multiframe",
    "make_tiny_objects",
    "pixel_data_length",
    "pydicom_test_file_exclusions",
    "pydicom_test_files",
    "random_patient",
    "sha256_file",
    "transfer_syntaxes_covered",
]

#: Repository root (``tests/support/dicomgen.py`` -> two levels up).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where :func:`cached_dataset` keeps its builds (``var/`` is git-ignored).
TESTDATA_ROOT = REPO_ROOT / "var" / "testdata"

_UID_PREFIX = PYDICOM_ROOT_UID  # "1.2.826.0.1.3680043.8.498."
_IMPLEMENTATION_VERSION = "WAYSTATION_TEST"
_MANUFACTURER = "WAYSTATION TESTDATA"
_FIRST_NAMES = (
    "ALICE",
    "BORIS",
    "CLARA",
    "DMITRI",
    "ELENA",
    "FARID",
    "GRETA",
    "HUGO",
    "IRMA",
    "JONAS",
    "KAREN",
    "LIAM",
)
# No 0/O/1/I so the tokens are unambiguous when read off a hex dump.
_TOKEN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
# VRs whose explicit-VR element header has 2 reserved bytes and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED_LENGTH = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Patients and UIDs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    """Patient and study identity written into generated objects.

    The default values made by :func:`random_patient` are distinctive so that a test can search
    the bytes of spool files, logs or databases for them (e.g. to prove that PHI is encrypted at
    rest or scrubbed from logs).
    """

    name: str
    patient_id: str
    accession: str
    study_description: str
    birth_date: str  # DICOM DA, YYYYMMDD


def random_patient(seed: int) -> Patient:
    """Return a deterministic, easily greppable patient for ``seed``.

    Example: ``Patient(name="WAYTEST^ALICE7F3Q", patient_id="PID-7F3Q9K",
    accession="ACC7F3Q9K", study_description="WAYTEST CT CHEST 7F3Q9K", birth_date="19610412")``.
    All values share one 6-character token, so grepping for the token finds every field.
    """
    rng = random.Random(f"waystation-patient-{seed}")
    token = "".join(rng.choice(_TOKEN_ALPHABET) for _ in range(6))
    first = rng.choice(_FIRST_NAMES)
    birth = _dt.date(1935, 1, 1) + _dt.timedelta(days=rng.randrange(0, 65 * 365))
    return Patient(
        name=f"WAYTEST^{first}{token[:4]}",
        patient_id=f"PID-{token}",
        accession=f"ACC{token}",
        study_description=f"WAYTEST CT CHEST {token}",
        birth_date=birth.strftime("%Y%m%d"),
    )


def _uid(*parts: object) -> UID:
    """A deterministic UID under pydicom's root derived from ``parts``."""
    return generate_uid(
        prefix=_UID_PREFIX, entropy_srcs=["waystation-testdata", *(str(p) for p in parts)]
    )


def _study_datetime(seed: int, study_index: int = 0) -> tuple[str, str]:
    """Deterministic (DA, TM) for a study."""
    rng = random.Random(f"waystation-study-time-{seed}-{study_index}")
    day = _dt.date(2024, 1, 1) + _dt.timedelta(days=rng.randrange(0, 730))
    seconds = rng.randrange(7 * 3600, 19 * 3600)
    return day.strftime(
        "%Y%m%d"
    ), f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------


class _TorsoPhantom:
    """A chest CT phantom computed once; :meth:`slice` adds per-slice variation and noise.

    Values are Hounsfield units (float32). Geometry uses normalised coordinates (u, v) in [-1, 1]
    across the field of view, so the same anatomy appears at any matrix size.
    """

    def __init__(self, rows: int, cols: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rows, self.cols = rows, cols
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        u = (xx - (cols - 1) / 2) / (cols / 2)
        v = (yy - (rows - 1) / 2) / (rows / 2)

        def ell(cu: float, cv: float, au: float, av: float) -> np.ndarray:
            r2: np.ndarray = ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2
            return r2

        self.fov = (u * u + v * v) <= 1.0
        under = np.full((rows, cols), -1000.0, dtype=np.float32)
        # Patient table: a curved slab under the body.
        table = (np.abs(v - 0.80 - 0.08 * u * u) < 0.025) & (np.abs(u) < 0.75)
        under[table] = 250.0
        # Body: subcutaneous fat rim around soft tissue with a gentle low-frequency texture.
        under[ell(0.0, 0.05, 0.78, 0.58) <= 1.0] = -100.0
        soft = ell(0.0, 0.05, 0.71, 0.51) <= 1.0
        phase = rng.uniform(0, 2 * math.pi, size=4)
        texture = (
            6.0 * np.sin(9.0 * u + phase[0]) * np.cos(7.0 * v + phase[1])
            + 4.0 * np.sin(17.0 * u - 13.0 * v + phase[2])
            + 3.0 * np.cos(23.0 * v + phase[3])
        ).astype(np.float32)
        under[soft] = 40.0 + texture[soft]

        # Lungs: two ellipses whose size changes along the series (apex -> base).
        self.lung_r2 = np.minimum(
            ell(-0.33, -0.02, 0.24, 0.36), ell(0.33, -0.02, 0.24, 0.36)
        ).astype(np.float32)
        vessels = (
            25.0 * np.sin(41.0 * u + phase[0]) * np.sin(37.0 * v + phase[1])
            + 15.0 * np.sin(67.0 * (u + v) + phase[2])
        ).astype(np.float32)
        self.lung = (-850.0 + vessels).astype(np.float32)

        # Structures drawn on top of the lungs: heart, aorta, spine, ribs, sternum.
        overlay = np.full((rows, cols), np.nan, dtype=np.float32)
        overlay[ell(0.06, 0.06, 0.21, 0.19) <= 1.0] = 45.0  # heart
        overlay[ell(-0.06, 0.24, 0.055, 0.055) <= 1.0] = 180.0  # descending aorta (contrast)
        overlay[ell(0.0, 0.36, 0.095, 0.085) <= 1.0] = 900.0  # vertebral body cortex
        overlay[ell(0.0, 0.36, 0.075, 0.067) <= 1.0] = 250.0  # cancellous bone
        overlay[ell(0.0, 0.49, 0.035, 0.035) <= 1.0] = 20.0  # spinal canal
        overlay[ell(0.0, -0.47, 0.06, 0.025) <= 1.0] = 700.0  # sternum
        for angle in np.linspace(0.15 * math.pi, 0.85 * math.pi, 6):
            for side in (-1.0, 1.0):
                cu = side * 0.64 * math.cos(angle)
                for cv in (0.05 - 0.45 * math.sin(angle), 0.05 + 0.44 * math.sin(angle)):
                    overlay[ell(cu, cv, 0.03, 0.022) <= 1.0] = 750.0  # anterior/posterior ribs
        self.overlay_mask = ~np.isnan(overlay)
        self.overlay = np.nan_to_num(overlay)
        self.under = under

    def slice(self, z_frac: float, rng: np.random.Generator, noise_hu: float = 12.0) -> np.ndarray:
        """HU image (float32) for position ``z_frac`` in [0, 1] along the series."""
        scale = 0.72 + 0.28 * math.sin(math.pi * min(max(z_frac, 0.0), 1.0))
        img = np.where(self.lung_r2 <= scale * scale, self.lung, self.under)
        img = np.where(self.overlay_mask, self.overlay, img)
        shift = round(2.0 * math.sin(6.0 * math.pi * z_frac))  # breathing / patient motion
        if shift:
            img = np.roll(img, shift, axis=0)
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_hu)
        return img


def _ct_stored(hu: np.ndarray, fov: np.ndarray) -> bytes:
    """Signed 16-bit stored values (intercept -1024), padding -2000 outside the FOV."""
    stored = np.rint(hu + 1024.0).clip(-1024, 31743).astype("<i2")
    stored[~fov] = -2000
    return stored.tobytes()


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    return meta


def _ct_dataset(
    patient: Patient,
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    study_date: str,
    study_time: str,
    rows: int,
    cols: int,
    fov_mm: float,
    slice_thickness: float,
    series_number: int,
    series_description: str,
    study_id: str,
) -> Dataset:
    """A CT Image Storage data set without the per-instance attributes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = study_time
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = patient.accession
    ds.Modality = "CT"
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = "Waystation Test Clinic"
    ds.ReferringPhysicianName = "WAYTEST^REFERRER"
    ds.StationName = "WAYTEST-CT1"
    ds.StudyDescription = patient.study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "Synthetic Torso Phantom"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{slice_thickness:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "waystation-dicomgen 1"
    ds.ReconstructionDiameter = f"{fov_mm:g}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "250"
    ds.Exposure = "125"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    spacing = f"{fov_mm / cols:.10g}"
    ds.PixelSpacing = [f"{fov_mm / rows:.10g}", spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _write_instance(path: Path, ds: Dataset, sop_instance: str) -> None:
    ds.SOPInstanceUID = sop_instance
    ds.file_meta = _file_meta(ds.SOPClassUID, sop_instance)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------


def make_ct_series(
    out_dir: Path,
    count: int = 300,
    *,
    rows: int = 512,
    cols: int = 512,
    seed: int = 1,
    patient: Patient | None = None,
) -> list[Path]:
    """Write a synthetic CT series of ``count`` slices into ``out_dir`` and return the paths.

    CT Image Storage, Explicit VR Little Endian, 16-bit signed (RescaleIntercept -1024,
    PixelPaddingValue -2000 outside the circular field of view), 1.25 mm axial slices of a torso
    phantom with ~12 HU noise, so files compress like real CT (~525 KB each at 512x512). Files are
    named ``ct_00001.dcm``... in InstanceNumber order and are byte-identical across runs for the
    same arguments. ``patient`` defaults to :func:`random_patient(seed) <random_patient>`.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    patient = patient or random_patient(seed)
    study_date, study_time = _study_datetime(seed)
    key = ("ct", seed, rows, cols, patient.patient_id)
    fov_mm, thickness = 500.0, 1.25
    ds = _ct_dataset(
        patient,
        study_uid=_uid(*key, "study"),
        series_uid=_uid(*key, "series"),
        frame_uid=_uid(*key, "frame"),
        study_date=study_date,
        study_time=study_time,
        rows=rows,
        cols=cols,
        fov_mm=fov_mm,
        slice_thickness=thickness,
        series_number=2,
        series_description="AXIAL 1.25MM STANDARD",
        study_id="1",
    )
    ds.PixelPaddingValue = -2000
    phantom = _TorsoPhantom(rows, cols, seed)
    rng = np.random.default_rng([seed, rows, cols, 0xC7])
    corner = -fov_mm / 2
    paths: list[Path] = []
    for i in range(count):
        z = -(i * thickness) + 0.0  # no "-0"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [f"{corner:g}", f"{corner:g}", f"{z:g}"]
        ds.SliceLocation = f"{z:g}"
        hu = phantom.slice(i / max(count - 1, 1), rng)
        ds.PixelData = _ct_stored(hu, phantom.fov)
        path = out_dir / f"ct_{i + 1:05d}.dcm"
        _write_instance(path, ds, _uid(*key, "instance", i))
        paths.append(path)
    return paths


class _HeadPhantom:
    """An axial brain MR phantom (T2-like signal, 12-bit): skull, CSF, grey and white matter,
    ventricles, a smooth coil-sensitivity bias field; :meth:`slice` adds Rician noise."""

    def __init__(self, rows: int, cols: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        self.u = (xx - (cols - 1) / 2) / (cols / 2)
        self.v = (yy - (rows - 1) / 2) / (rows / 2)
        phase = rng.uniform(0, 2 * math.pi, size=6)
        u, v = self.u, self.v
        # Gyri: a smooth, folded texture that sets grey against white matter.
        self.folds = (
            np.sin(19.0 * u + 3.0 * np.sin(7.0 * v + phase[0]) + phase[1])
            * np.cos(17.0 * v + 3.0 * np.sin(5.0 * u + phase[2]) + phase[3])
        ).astype(np.float32)
        # Receive-coil sensitivity: brighter near the surface coils, smooth.
        self.bias = (1.0 + 0.25 * (u * u + v * v) + 0.1 * np.sin(2.0 * u + phase[4])).astype(
            np.float32
        )
        self.phase = phase

    def slice(self, z_frac: float, rng: np.random.Generator, noise: float) -> np.ndarray:
        """Signal (float32, 0..4095) for position ``z_frac`` in [0, 1] along the series."""
        u, v = self.u, self.v
        size = 0.55 + 0.35 * math.sin(math.pi * min(max(z_frac, 0.0), 1.0))
        r2 = (u / (0.80 * size + 0.1)) ** 2 + (v / (0.92 * size + 0.1)) ** 2
        img = np.zeros_like(u)
        img[(r2 <= 1.0) & (r2 > 0.88)] = 300.0  # scalp fat (bright on T2 FSE)
        img[(r2 <= 0.88) & (r2 > 0.80)] = 60.0  # skull: little signal
        brain = r2 <= 0.80
        grey_white = np.where(self.folds > 0.15, 1150.0, 850.0).astype(np.float32)
        img[brain] = grey_white[brain] + 60.0 * self.folds[brain]
        img[(r2 <= 0.80) & (r2 > 0.74)] = 2200.0  # CSF around the brain
        ventricles = np.minimum(
            ((u - 0.1) / 0.07) ** 2 + (v / (0.25 * size)) ** 2,
            ((u + 0.1) / 0.07) ** 2 + (v / (0.25 * size)) ** 2,
        )
        img[ventricles <= 1.0] = 2300.0
        img *= self.bias
        # Magnitude of complex Gaussian noise: Rician, non-zero in the air as in real MR.
        real = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
        imag = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
        out: np.ndarray = np.sqrt(real * real + imag * imag)
        return out


def make_mr_series(
    out_dir: Path,
    count: int = 64,
    *,
    rows: int = 256,
    cols: int = 256,
    seed: int = 1,
    noise: float = 2.0,
    patient: Patient | None = None,
) -> list[Path]:
    """Write a synthetic brain MR series of ``count`` slices into ``out_dir``; return the paths.

    MR Image Storage, Explicit VR Little Endian, 16 bits allocated / 12 stored, unsigned,
    5 mm axial slices of a head phantom with smooth structures, a coil bias field and Rician
    noise (``noise`` is its sigma in stored values), so files compress losslessly like real
    MR (~3.5x with JPEG-LS at the default noise; ~131 KB each at 256x256). Named
    ``mr_00001.dcm``... in
    InstanceNumber order; byte-identical across runs for the same arguments.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    patient = patient or random_patient(seed)
    study_date, study_time = _study_datetime(seed)
    key = ("mr", seed, rows, cols, patient.patient_id)
    fov_mm, thickness = 240.0, 5.0
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = patient.accession
    ds.Modality = "MR"
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = "Waystation Test Clinic"
    ds.ReferringPhysicianName = "WAYTEST^REFERRER"
    ds.StationName = "WAYTEST-MR1"
    ds.StudyDescription = patient.study_description.replace(" CT CHEST ", " MR BRAIN ")
    ds.SeriesDescription = "AX T2 FSE"
    ds.ManufacturerModelName = "Synthetic Head Phantom"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = f"{thickness:g}"
    ds.RepetitionTime = "4000"
    ds.EchoTime = "100"
    ds.MagneticFieldStrength = "1.5"
    ds.SpacingBetweenSlices = f"{thickness:g}"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = _uid(*key, "study")
    ds.SeriesInstanceUID = _uid(*key, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = _uid(*key, "frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{fov_mm / rows:.10g}", f"{fov_mm / cols:.10g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "1100"
    ds.WindowWidth = "2200"
    phantom = _HeadPhantom(rows, cols, seed)
    rng = np.random.default_rng([seed, rows, cols, 0x3A])
    corner = -fov_mm / 2
    paths: list[Path] = []
    for i in range(count):
        z = 60.0 - i * thickness
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [f"{corner:g}", f"{corner:g}", f"{z:g}"]
        ds.SliceLocation = f"{z:g}"
        signal = phantom.slice(i / max(count - 1, 1), rng, noise)
        ds.PixelData = np.rint(signal).clip(0, 4095).astype("<u2").tobytes()
        path = out_dir / f"mr_{i + 1:05d}.dcm"
        _write_instance(path, ds, _uid(*key, "instance", i))
        paths.append(path)
    return paths


def make_tiny_objects(
    out_dir: Path,
    count: int = 2000,
    *,
    seed: int = 2,
    patient: Patient | None = None,
    studies: int = 4,
) -> list[Path]:
    """Write ``count`` small (~5 KB, 40x40 CT) objects spread round-robin over ``studies`` studies.

    Every object has a distinct SOP Instance UID; each study has one series. Study ``k > 0`` gets
    accession ``f"{patient.accession}-{k}"`` so the patient's accession stays greppable. Files
    are named ``tiny_000001.dcm``... and are deterministic for the same arguments.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    patient = patient or random_patient(seed)
    studies = max(1, min(studies, count))
    rows = cols = 40
    phantom = _TorsoPhantom(rows, cols, seed)
    rng = np.random.default_rng([seed, 0x71])
    templates: list[Dataset] = []
    for k in range(studies):
        key = ("tiny", seed, patient.patient_id, k)
        study_date, study_time = _study_datetime(seed, k)
        accession = patient.accession if k == 0 else f"{patient.accession}-{k}"
        ds = _ct_dataset(
            Patient(
                patient.name,
                patient.patient_id,
                accession,
                patient.study_description,
                patient.birth_date,
            ),
            study_uid=_uid(*key, "study"),
            series_uid=_uid(*key, "series"),
            frame_uid=_uid(*key, "frame"),
            study_date=study_date,
            study_time=study_time,
            rows=rows,
            cols=cols,
            fov_mm=500.0,
            slice_thickness=5.0,
            series_number=k + 1,
            series_description="SCOUT TINY",
            study_id=str(k + 1),
        )
        templates.append(ds)
    per_study = math.ceil(count / studies)
    width = max(6, len(str(count)))
    paths: list[Path] = []
    for i in range(count):
        k, n = i % studies, i // studies
        ds = templates[k]
        z = -(n * 5.0) + 0.0
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = ["-250", "-250", f"{z:g}"]
        ds.SliceLocation = f"{z:g}"
        ds.PixelData = _ct_stored(phantom.slice(n / max(per_study - 1, 1), rng), phantom.fov)
        path = out_dir / f"tiny_{i + 1:0{width}d}.dcm"
        _write_instance(path, ds, _uid("tiny", seed, patient.patient_id, k, "instance", n))
        paths.append(path)
    return paths


def make_multiframe(
    out_path: Path,
    size_mb: int = 210,
    *,
    seed: int = 3,
    patient: Patient | None = None,
) -> Path:
    """Write one Multi-frame Grayscale Word SC object of at least ``size_mb`` MiB; return the path.

    512x512 16-bit frames (12 bits stored, unsigned, HU + 1024) of the torso phantom;
    NumberOfFrames is the smallest that makes the pixel data alone ``>= size_mb * 2**20`` bytes.
    The file is written streaming: pydicom writes the preamble, file meta and the data set without
    Pixel Data, then the (7FE0,0010) OW element header with the exact length is appended and the
    frames are written one at a time, so peak memory stays at a few MB of frame buffers no matter
    the size. The file is written as ``<name>.partial`` and renamed when complete and verified
    (pydicom reads it back without loading the pixels; the Pixel Data length and the file size
    must match exactly).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    patient = patient or random_patient(seed)
    rows = cols = 512
    frame_bytes = rows * cols * 2
    frames = max(1, math.ceil(size_mb * 2**20 / frame_bytes))
    length = frames * frame_bytes
    if length > 0xFFFFFFFE:
        raise ValueError("Pixel Data longer than 4 GiB cannot be encoded with a defined length")

    study_date, study_time = _study_datetime(seed)
    key = ("multiframe", seed, size_mb, patient.patient_id)
    sop_instance = _uid(*key, "instance")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.InstanceCreationDate = ds.StudyDate = ds.ContentDate = study_date
    ds.InstanceCreationTime = ds.StudyTime = ds.ContentTime = study_time
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance
    ds.AccessionNumber = patient.accession
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = _MANUFACTURER
    ds.ReferringPhysicianName = "WAYTEST^REFERRER"
    ds.StudyDescription = patient.study_description
    ds.SeriesDescription = "MULTIFRAME STRESS OBJECT"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.FrameTime = "40"
    ds.StudyInstanceUID = _uid(*key, "study")
    ds.SeriesInstanceUID = _uid(*key, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "1064"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.file_meta = _file_meta(ds.SOPClassUID, sop_instance)

    phantom = _TorsoPhantom(rows, cols, seed)
    rng = np.random.default_rng([seed, 0x3F])
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with open(partial, "wb") as fh:
            pydicom.dcmwrite(fh, ds, enforce_file_format=True)
            pixel_offset = fh.tell()
            fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
            for i in range(frames):
                hu = phantom.slice(i / max(frames - 1, 1), rng)
                stored = np.rint(hu + 1024.0).clip(0, 4095).astype("<u2")
                stored[~phantom.fov] = 0
                fh.write(stored.tobytes())
        _verify_streamed(partial, sop_instance, frames, pixel_offset, length)
        os.replace(partial, out_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return out_path


def _verify_streamed(path: Path, sop_instance: str, frames: int, offset: int, length: int) -> None:
    """Check a streamed multi-frame file: header readable, Pixel Data length and size exact."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    if header.SOPInstanceUID != sop_instance or int(header.NumberOfFrames) != frames:
        raise RuntimeError(f"{path}: header does not read back as written")
    if pixel_data_length(path) != length:
        raise RuntimeError(f"{path}: Pixel Data length is not {length}")
    if path.stat().st_size != offset + 12 + length:
        raise RuntimeError(f"{path}: file size does not match the Pixel Data length")


# --------------------------------------------------------------------------------------------
# pydicom's bundled test files
# --------------------------------------------------------------------------------------------


def pixel_data_length(path: Path) -> int | None:
    """Declared length of the top-level Pixel Data, read without loading the pixels.

    None if the file has no Pixel Data; 0xFFFFFFFF for encapsulated (undefined length) data.
    """
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, defer_size=1024)
        raw = ds.get_item(0x7FE00010, keep_deferred=True)
    if raw is None:
        return None
    if isinstance(raw, RawDataElement):
        return int(raw.length)
    value = raw.value
    return len(value) if isinstance(value, bytes) else None


def _truncation(ds: Dataset) -> str | None:
    """Describe the first element whose value is shorter than its declared length, if any."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.value is not None
            and raw.length != _UNDEFINED_LENGTH
            and len(raw.value) < raw.length
        ):
            return f"element {raw.tag} has {len(raw.value)} of {raw.length} bytes"
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                found = _truncation(item)
                if found:
                    return found
    return None


def _classify_test_file(path: Path) -> tuple[str | None, str | None, str | None]:
    """Return (reason to exclude or None, SOP Instance UID, transfer syntax UID)."""
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    if not path.is_file():
        return "not a regular file", None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            return "not a Part 10 file (no preamble/DICM prefix)", None, None
        except Exception as exc:
            return f"unreadable: {type(exc).__name__}: {exc}", None, None
        meta = ds.file_meta
        ts = meta.get("TransferSyntaxUID")
        sop_class = meta.get("MediaStorageSOPClassUID")
        sop_instance = meta.get("MediaStorageSOPInstanceUID")
        if not ts or not sop_class or not sop_instance:
            return "file meta lacks Transfer Syntax / SOP Class / SOP Instance UID", None, None
        if uid_to_service_class(sop_class) is not StorageServiceClass:
            return f"not a storage SOP class ({UID(sop_class).name})", None, None
        if ds.get("SOPInstanceUID") is None or ds.get("SOPClassUID") is None:
            return "data set has no SOP Class / SOP Instance UID", None, None
        if ds.SOPClassUID != sop_class or ds.SOPInstanceUID != sop_instance:
            return "file meta SOP Class/Instance UID differs from the data set", None, None
        try:
            found = _truncation(ds)
        except Exception as exc:
            return f"broken: {type(exc).__name__}: {exc}", None, None
        if found:
            return f"truncated: {found}", None, None
    return None, str(sop_instance), str(ts)


@functools.cache
def _test_file_survey() -> tuple[tuple[Path, ...], tuple[tuple[Path, str], ...]]:
    candidates = sorted(
        {Path(p) for p in pydicom.data.get_testdata_files()}
        | {Path(p) for p in pydicom.data.get_charset_files()}
    )
    excluded: dict[Path, str] = {}
    by_uid: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for path in candidates:
        reason, sop_instance, ts = _classify_test_file(path)
        if reason is not None or sop_instance is None or ts is None:
            excluded[path] = reason or "unusable"
            continue
        by_uid[sop_instance].append((path, ts))
    # De-duplicate by SOP Instance UID (the router treats a repeated UID as a replacement).
    # pydicom ships several encodings of one instance (MR_small*.dcm...): keep the variant with
    # the rarest transfer syntax so de-duplication loses as little coverage as possible.
    ts_count = Counter(ts for group in by_uid.values() for _, ts in group)
    kept: list[Path] = []
    for group in by_uid.values():
        best = min(group, key=lambda item: (ts_count[item[1]], str(item[0])))
        kept.append(best[0])
        for path, _ in group:
            if path != best[0]:
                excluded[path] = f"duplicate SOP Instance UID of {best[0].name}"
    return tuple(sorted(kept)), tuple(sorted(excluded.items()))


def pydicom_test_files() -> list[Path]:
    """pydicom's bundled test and charset files that are usable as storage objects.

    Kept: Part 10 files whose file meta has a Transfer Syntax, a *Storage* SOP Class and a SOP
    Instance UID that match the data set, and that are not truncated. One file per SOP Instance
    UID (the variant with the rarest transfer syntax wins). Sorted, deterministic. The set covers
    implicit/explicit VR little endian, explicit big endian, deflated, JPEG baseline/extended/
    lossless SV1, JPEG-LS lossless/near-lossless, JPEG 2000 lossless/lossy and RLE, plus the
    character set files (chrH31.dcm, chrX1.dcm, ...). See :func:`pydicom_test_file_exclusions`.
    """
    return list(_test_file_survey()[0])


def pydicom_test_file_exclusions() -> dict[Path, str]:
    """Bundled pydicom files left out of :func:`pydicom_test_files`, with the reason."""
    return dict(_test_file_survey()[1])


def transfer_syntaxes_covered(files: Iterable[Path]) -> set[str]:
    """The set of Transfer Syntax UIDs (from the file meta) used by ``files``."""
    out: set[str] = set()
    for path in files:
        ts = read_file_meta_info(path).get("TransferSyntaxUID")
        if ts:
            out.add(str(ts))
    return out


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cached_dataset(name: str, builder: Callable[[Path], object]) -> Path:
    """Return ``var/testdata/<name>``, building it once with ``builder(directory)`` if missing.

    ``builder`` receives an empty temporary directory next to the cache and must write the data
    set into it; the directory is then renamed to its final name, so a half-built cache (builder
    crashed, run killed) is never used. Concurrent callers are serialised with a lock file, so
    parallel test processes build it only once. Put the parameters in ``name``
    (``"ct-300-seed1"``): the cache is never invalidated otherwise; ``make clean`` removes it.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad cache name {name!r}")
    TESTDATA_ROOT.mkdir(parents=True, exist_ok=True)
    final = TESTDATA_ROOT / name
    if final.is_dir():
        return final
    with open(TESTDATA_ROOT / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        for stale in TESTDATA_ROOT.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=TESTDATA_ROOT))
        try:
            builder(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# --------------------------------------------------------------------------------------------
# Byte-level helpers
# --------------------------------------------------------------------------------------------


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise ValueError("unexpected end of file inside the File Meta Information")
    return data


def dataset_offset(path: Path) -> int:
    """Offset of the first byte after the File Meta Information of a Part 10 file.

    Walks the group 0002 elements (always explicit VR little endian) rather than trusting
    (0002,0000), so files with a missing or wrong group length are handled too.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise ValueError(f"{path}: not a DICOM Part 10 file (no DICM prefix)")
        offset = 132
        while True:
            tag = fh.read(8)
            if len(tag) < 8 or struct.unpack("<H", tag[:2])[0] != 0x0002:
                return offset
            vr = tag[4:6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack("<I", _read_exact(fh, 4))
                header = 12
            else:
                (length,) = struct.unpack("<H", tag[6:8])
                header = 8
            fh.seek(length, os.SEEK_CUR)
            offset += header + length


def dataset_bytes(path: Path) -> bytes:
    """The bytes of the data set after the File Meta Information of a Part 10 file.

    Compare these between what was sent and what a receiver stored: receivers rewrite the file
    meta (implementation UID, source AE title...) but must not change the data set.
    """
    offset = dataset_offset(path)
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read()


def _iter_chunks(fh: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    while block := fh.read(chunk):
        yield block


def dataset_sha256(path: Path) -> str:
    """SHA-256 (hex) of :func:`dataset_bytes` without reading the whole file into memory."""
    offset = dataset_offset(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        for block in _iter_chunks(fh):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of a whole file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in _iter_chunks(fh):
            digest.update(block)
    return digest.hexdigest()
