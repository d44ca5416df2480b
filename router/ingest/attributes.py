"""Read an object's header (never its pixel data) into ObjectAttributes."""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO, overload

from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian

from router.core.objects import ObjectAttributes
from router.dicom.depth import DEFAULT_MAX_SEQUENCE_DEPTH, SequenceTooDeep, check_sequence_depth

_KNOWN_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)
# Large non-pixel values (encapsulated PDFs, waveforms) are skipped, not loaded.
_DEFER = 64 * 1024
# A deflated header never needs more than this once inflated; the rest is never inflated.
_MAX_INFLATED_HEADER = 16 * 1024 * 1024
# More top-level elements than this before Pixel Data is not a header but junk (a run of
# zero bytes parses as endless empty elements): refused rather than held in memory.
_MAX_ELEMENTS = 20_000
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
    stream: BinaryIO,
    *,
    command_sop_class: str,
    command_sop_instance: str,
    wanted_keywords: frozenset[str] = frozenset(),
    max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
) -> ObjectAttributes:
    """Parse the header of the Part 10 stream and return what routing and the console need.

    ``wanted_keywords`` are the attributes routing rules look at; only those are decoded.
    Sequences nested deeper than ``max_sequence_depth`` make the object unreadable."""
    try:
        # Buffered: pydicom reads element headers a few bytes at a time.
        buffered = io.BufferedReader(stream, 64 * 1024)  # type: ignore[type-var]
        dataset = _read_header(buffered, max_sequence_depth)
        # pydicom converts raw values lazily, so reading them can raise too (an unknown VR
        # in the File Meta, say): inside the same containment.
        return _attributes(dataset, command_sop_class, command_sop_instance, wanted_keywords)
    except UnreadableObject:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input; contain them all
        raise UnreadableObject(f"{type(exc).__name__}: {exc}", type(exc).__name__) from None


def read_attributes_early(
    prefix: bytes,
    *,
    command_sop_class: str,
    command_sop_instance: str,
    wanted_keywords: frozenset[str] = frozenset(),
    max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
) -> ObjectAttributes | None:
    """What :func:`read_attributes` returns for the whole stream, read from its first bytes
    only - or None when those bytes cannot tell.

    Why this is the same answer: the header ends where Pixel Data (or any group from 7FE0
    on) starts, and nothing after that is read. So when the parser reached that element
    inside ``prefix``, every element before it lay inside ``prefix`` too, and parsing the
    complete stream reads exactly the same bytes and stops at the same place. When it did
    not (the header is longer than ``prefix``, there is no pixel data, the syntax is
    deflated) or anything at all went wrong, this returns None and the complete object is
    parsed as before - so errors are always decided, and reported, on the whole object.
    """
    try:
        buffered = io.BufferedReader(io.BytesIO(prefix), 64 * 1024)
        dataset = _read_header(buffered, max_sequence_depth, prefix_only=True)
        if dataset is None:
            return None
        return _attributes(dataset, command_sop_class, command_sop_instance, wanted_keywords)
    except Exception:  # decided on the complete object, by read_attributes
        return None


def _attributes(
    dataset: Dataset,
    command_sop_class: str,
    command_sop_instance: str,
    wanted_keywords: frozenset[str],
) -> ObjectAttributes:
    meta = dataset.file_meta
    sop_instance = str(dataset.get("SOPInstanceUID", "") or command_sop_instance)
    phi: dict[str, str] = {}
    for keyword, key in _PHI_KEYWORDS.items():
        value = dataset.get(keyword)
        if value is not None:
            phi[key] = str(value)
    keywords: dict[str, str] = {}
    for keyword in wanted_keywords:
        try:
            value = dataset.get(keyword)
        except Exception:  # an undecodable value must not fail the object
            continue
        if value is not None:
            keywords[keyword] = str(value)[:1024]
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


@overload
def _read_header(stream: BinaryIO, max_depth: int) -> Dataset: ...


@overload
def _read_header(stream: BinaryIO, max_depth: int, *, prefix_only: bool) -> Dataset | None: ...


def _read_header(stream: BinaryIO, max_depth: int, *, prefix_only: bool = False) -> Dataset | None:
    """The header's data set. ``prefix_only``: ``stream`` holds only the first bytes of the
    object; None unless the header ended inside them (see read_attributes_early)."""
    end = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    read_preamble(stream, force=False)
    meta = _read_file_meta_info(stream)
    syntax = UID(str(meta.get("TransferSyntaxUID", "")))
    if str(syntax) not in _KNOWN_SYNTAXES:
        # Unrestricted storage accepts whatever syntax is proposed; bytes in a syntax nobody
        # can decode must not be acknowledged as if they could be delivered.
        raise UnreadableObject("unknown transfer syntax", "unknown transfer syntax")
    if syntax != DeflatedExplicitVRLittleEndian:
        _check_depth(stream, syntax, end, max_depth)
        header_end = _HeaderEnd()
        parsed = read_dataset(
            stream,
            is_implicit_VR=syntax.is_implicit_VR,
            is_little_endian=syntax.is_little_endian,
            stop_when=header_end,
            defer_size=_DEFER,
        )
        if prefix_only and not header_end.reached:
            return None  # the header may go on past the prefix
        _check_encoding(parsed, syntax)
        _check_lengths(parsed, end)
        parsed.file_meta = meta
        return parsed
    if prefix_only:
        return None  # a deflated header is read from the complete object only
    # pydicom would inflate the whole remainder in memory: inflate a bounded prefix instead.
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    while len(inflated) < _MAX_INFLATED_HEADER:
        raw = stream.read(256 * 1024)
        if not raw:
            break
        inflated += inflater.decompress(raw, _MAX_INFLATED_HEADER - len(inflated))
    header = io.BytesIO(bytes(inflated))
    _check_depth(header, syntax, len(inflated), max_depth)
    dataset = read_dataset(
        header,
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=_HeaderEnd(),
        defer_size=_DEFER,
    )
    _check_encoding(dataset, syntax)
    _check_lengths(dataset, len(inflated))
    dataset.file_meta = meta
    return dataset


def _check_depth(stream: BinaryIO, syntax: UID, end: int, limit: int) -> None:
    """Refuse over-deep sequences before pydicom (which recurses) reads any of them; the
    stream is back where it was afterwards."""
    start = stream.tell()
    try:
        check_sequence_depth(
            stream,
            implicit=syntax.is_implicit_VR,
            little=syntax.is_little_endian,
            end=end,
            limit=limit,
        )
    except SequenceTooDeep as exc:
        raise UnreadableObject(str(exc), "sequences nested too deep") from None
    stream.seek(start)


class _HeaderEnd:
    """pydicom's ``stop_when``: stop at Pixel Data; refuse command-group elements (group
    0000 never belongs in a data set) and more elements than any header has."""

    def __init__(self) -> None:
        self.count = 0
        self.reached = False  # stopped at the header's end (not at the end of the bytes)

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        self.count += 1
        if tag.group == 0x0000 or self.count > _MAX_ELEMENTS:
            raise UnreadableObject("not a data set header", "junk instead of a header")
        self.reached = bool(tag.group >= 0x7FE0)
        return self.reached


def _check_encoding(dataset: Dataset, syntax: UID) -> None:
    """pydicom silently switches to the VR encoding it finds; bytes that contradict the
    negotiated transfer syntax would be held and delivered under the wrong label."""
    implicit, little = dataset.original_encoding
    if implicit is not None and (implicit, little) != (
        syntax.is_implicit_VR,
        syntax.is_little_endian,
    ):
        raise UnreadableObject(
            "the data set is not encoded in its transfer syntax", "encoding contradicts syntax"
        )


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
