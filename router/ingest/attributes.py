"""Read an object's header (never its pixel data) into ObjectAttributes."""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import AllTransferSyntaxes, DeflatedExplicitVRLittleEndian

from router.core.objects import ObjectAttributes

_KNOWN_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)
# Large non-pixel values (encapsulated PDFs, waveforms) are skipped, not loaded.
_DEFER = 64 * 1024
# A deflated header never needs more than this once inflated; more is a bomb, refused.
_MAX_INFLATED_HEADER = 64 * 1024 * 1024
_PHI_KEYWORDS = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "AccessionNumber": "accession",
    "StudyDescription": "study_description",
    "SeriesDescription": "series_description",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "StudyID": "study_id",
    "InstitutionName": "institution",
    "ReferringPhysicianName": "referring_physician",
}


class UnreadableObject(Exception):
    """The received bytes are not a data set we can understand (answer 0xC2xx).

    ``kind`` is safe to log; the message may quote values from the object."""

    def __init__(self, message: str, kind: str = "malformed data set") -> None:
        super().__init__(message)
        self.kind = kind


def read_attributes(
    stream: BinaryIO, *, command_sop_class: str, command_sop_instance: str
) -> ObjectAttributes:
    """Parse the header of the Part 10 stream and return what routing and the console need."""
    try:
        dataset = _read_header(stream)
    except UnreadableObject:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input; contain them all
        raise UnreadableObject(f"{type(exc).__name__}: {exc}", type(exc).__name__) from None
    meta = dataset.file_meta
    if str(meta.TransferSyntaxUID) not in _KNOWN_SYNTAXES:
        # Unrestricted storage accepts whatever syntax is proposed; bytes in a syntax nobody
        # can decode must not be acknowledged as if they could be delivered.
        raise UnreadableObject("unknown transfer syntax", "unknown transfer syntax")
    sop_instance = str(dataset.get("SOPInstanceUID", "") or command_sop_instance)
    phi = {
        key: str(dataset.get(keyword, "") or "")
        for keyword, key in _PHI_KEYWORDS.items()
        if keyword in dataset
    }
    keywords: dict[str, str] = {}
    for element in dataset:
        if element.keyword and element.VR not in ("SQ", "OB", "OW", "OF", "OD", "OL", "UN"):
            try:
                keywords[element.keyword] = str(element.value)[:1024]
            except Exception:  # an undecodable value must not fail the object
                continue
    return ObjectAttributes(
        sop_class_uid=str(meta.get("MediaStorageSOPClassUID", command_sop_class)),
        sop_instance_uid=sop_instance,
        study_instance_uid=str(dataset.get("StudyInstanceUID", "") or ""),
        series_instance_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        transfer_syntax=str(meta.TransferSyntaxUID),
        modality=str(dataset.get("Modality", "") or ""),
        phi=phi,
        keywords=keywords,
    )


def _read_header(stream: BinaryIO) -> Dataset:
    end = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    read_preamble(stream, force=False)
    meta = _read_file_meta_info(stream)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        stream.seek(0)
        parsed = dcmread(stream, stop_before_pixels=True, defer_size=_DEFER)
        _check_lengths(parsed, end)
        return parsed
    # pydicom would inflate the whole remainder in memory: inflate a bounded prefix instead.
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    while len(inflated) < _MAX_INFLATED_HEADER:
        raw = stream.read(256 * 1024)
        if not raw:
            break
        inflated += inflater.decompress(raw, _MAX_INFLATED_HEADER - len(inflated))
    dataset = read_dataset(
        io.BytesIO(bytes(inflated)),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=lambda tag, vr, length: tag.group >= 0x7FE0,
        defer_size=_DEFER,
    )
    _check_lengths(dataset, len(inflated))
    dataset.file_meta = meta
    return dataset


def _check_lengths(dataset: Dataset, end: int) -> None:
    """pydicom reads a value that runs past the end of the data as a short value, silently;
    such a stream is broken (truncated or hostile) and is not acknowledged."""
    for raw in dataset._dict.values():
        tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", 0)
        if tell is not None and length != 0xFFFFFFFF and tell + length > end:
            raise UnreadableObject(
                f"element {raw.tag} runs past the end of the data set", "truncated element"
            )
