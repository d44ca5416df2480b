"""The sequence-depth scan (router/dicom/depth.py): it measures what pydicom would build, in
every encoding, and read_attributes refuses an object nested deeper than its limit."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from router.dicom.depth import DEFAULT_MAX_SEQUENCE_DEPTH, SequenceTooDeep, check_sequence_depth
from router.dicom.part10 import part10_header
from router.ingest.attributes import UnreadableObject, read_attributes
from tests.support import dicomgen

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
KEYWORDS = ("ContentSequence", "ConceptNameCodeSequence", "ReferencedSeriesSequence")


def nested(
    depth: int,
    *,
    explicit: bool = True,
    undefined: bool = False,
    vr: bytes = b"SQ",
    lead: bool = True,
) -> bytes:
    """Raw data set bytes: Content Sequences nested ``depth`` deep, one item each (after a
    Modality element with ``lead``)."""
    inner = _plain(explicit)
    for _ in range(depth):
        if undefined:
            item = _tag(0xFFFE, 0xE000, 0xFFFFFFFF) + inner + _tag(0xFFFE, 0xE00D, 0)
            inner = _sq(explicit, 0xFFFFFFFF, vr) + item + _tag(0xFFFE, 0xE0DD, 0)
        else:
            item = _tag(0xFFFE, 0xE000, len(inner)) + inner
            inner = _sq(explicit, len(item), vr) + item
    return (_plain(explicit, 0x0008, 0x0060) if lead else b"") + inner


def _tag(group: int, element: int, length: int) -> bytes:
    return struct.pack("<HHI", group, element, length)


def _sq(explicit: bool, length: int, vr: bytes) -> bytes:
    if explicit:
        return struct.pack("<HH2sHI", 0x0040, 0xA730, vr, 0, length)
    return _tag(0x0040, 0xA730, length)


def _plain(explicit: bool, group: int = 0x0008, element: int = 0x0100) -> bytes:
    if explicit:
        return struct.pack("<HH2sH", group, element, b"SH", 2) + b"X "
    return _tag(group, element, 2) + b"X "


def scan(data: bytes, *, explicit: bool = True, limit: int = 1000) -> int:
    return check_sequence_depth(
        io.BytesIO(data), implicit=not explicit, little=True, end=len(data), limit=limit
    )


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "implicit"])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_depth_is_measured_in_every_encoding(explicit: bool, undefined: bool) -> None:
    for depth in (0, 1, 7, 300):
        assert scan(nested(depth, explicit=explicit, undefined=undefined), explicit=explicit) == (
            depth
        )


def test_un_of_undefined_length_is_read_as_an_implicit_sequence() -> None:
    # PS3.5 6.2.2: an undefined-length UN holds Implicit VR Little Endian.
    inner = nested(5, explicit=False, undefined=True)
    data = struct.pack("<HH2sHI", 0x0040, 0xA730, b"UN", 0, 0xFFFFFFFF)
    data += _tag(0xFFFE, 0xE000, 0xFFFFFFFF) + inner + _tag(0xFFFE, 0xE00D, 0)
    data += _tag(0xFFFE, 0xE0DD, 0)
    assert scan(data) == 6


def test_the_limit_is_inclusive_and_one_more_is_refused() -> None:
    assert scan(nested(10), limit=10) == 10
    with pytest.raises(SequenceTooDeep, match="deeper than 10"):
        scan(nested(11), limit=10)


def test_encapsulated_pixel_data_in_an_item_is_not_nesting() -> None:
    # An icon image with encapsulated (undefined-length) pixel data: fragments, not items.
    icon = Dataset()
    icon.Rows = icon.Columns = 1
    fragments = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
    fragments += _tag(0xFFFE, 0xE000, 0) + _tag(0xFFFE, 0xE000, 4) + b"\xfe\xff\x00\xe0"
    fragments += _tag(0xFFFE, 0xE0DD, 0)
    # The icon item with its fragments, undefined lengths around it.
    item = encode(icon, False, True) or b""
    data = bytearray(_plain(True, 0x0008, 0x0060))
    data += struct.pack("<HH2sHI", 0x0088, 0x0200, b"SQ", 0, 0xFFFFFFFF)
    data += _tag(0xFFFE, 0xE000, 0xFFFFFFFF) + item + fragments + _tag(0xFFFE, 0xE00D, 0)
    data += _tag(0xFFFE, 0xE0DD, 0)
    assert scan(bytes(data)) == 1


Tree = list[list["Tree"]]  # a data set: its sequences; a sequence: its items


def _trees() -> st.SearchStrategy[Tree]:
    return st.recursive(
        st.just([]),
        lambda children: st.lists(st.lists(children, max_size=3), max_size=3),
        max_leaves=25,
    )


def _dataset(tree: Tree, undefined: bool) -> Dataset:
    ds = Dataset()
    ds.CodeValue = "X"
    for keyword, items in zip(KEYWORDS, tree, strict=False):
        sequence = Sequence([_dataset(item, undefined) for item in items])
        sequence.is_undefined_length = undefined
        for item in sequence:
            item.is_undefined_length_sequence_item = undefined
        setattr(ds, keyword, sequence)
    return ds


def _true_depth(ds: Dataset, empty_counts: bool) -> int:
    """Nesting as pydicom built it. An empty sequence in Implicit VR is written as a zero
    length (even when an undefined length was asked for): without a dictionary it is no
    sequence, and it nests nothing."""
    depths = [0]
    for element in ds:
        if element.VR == "SQ" and (element.value or empty_counts):
            inner = (_true_depth(item, empty_counts) for item in element.value)
            depths.append(1 + max(inner, default=0))
    return max(depths)


@settings(max_examples=80, deadline=None)
@given(tree=_trees(), explicit=st.booleans(), undefined=st.booleans())
def test_depth_matches_what_pydicom_builds(tree: Tree, explicit: bool, undefined: bool) -> None:
    ds = _dataset(tree, undefined)
    data = encode(ds, not explicit, True)
    assert data is not None
    assert scan(data, explicit=explicit) == _true_depth(ds, explicit)


def _part10(body: bytes, syntax: str = EXPLICIT) -> io.BytesIO:
    return io.BytesIO(part10_header(CT, "1.2.3.4.5", syntax) + body)


@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_read_attributes_refuses_an_over_deep_object(undefined: bool) -> None:
    deep = nested(DEFAULT_MAX_SEQUENCE_DEPTH + 1, undefined=undefined)
    with pytest.raises(UnreadableObject) as refused:
        read_attributes(_part10(deep), command_sop_class=CT, command_sop_instance="1.2.3.4.5")
    assert refused.value.kind == "sequences nested too deep"
    at_limit = nested(DEFAULT_MAX_SEQUENCE_DEPTH, undefined=undefined)
    attributes = read_attributes(
        _part10(at_limit), command_sop_class=CT, command_sop_instance="1.2.3.4.5"
    )
    assert attributes.modality == "X"  # the header was read as usual after the scan
    with pytest.raises(UnreadableObject):
        read_attributes(
            _part10(nested(5, explicit=False), IMPLICIT),
            command_sop_class=CT,
            command_sop_instance="1.2.3.4.5",
            max_sequence_depth=4,
        )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_no_pydicom_test_file_comes_near_the_default_limit() -> None:
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import UID

    checked = 0
    for path in dicomgen.pydicom_test_files():
        with open(path, "rb") as fh:
            try:
                read_preamble(fh, force=False)
                meta = _read_file_meta_info(fh)
                syntax = UID(str(meta.get("TransferSyntaxUID", "")))
                implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
            except Exception:  # not Part 10, or a syntax pydicom does not know
                continue
            if syntax.is_deflated:
                continue
            end = Path(path).stat().st_size
            assert (
                check_sequence_depth(fh, implicit=implicit, little=little, end=end, limit=16) <= 16
            )
            checked += 1
    assert checked > 50
