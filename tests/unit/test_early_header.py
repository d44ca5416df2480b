"""Reading an object's header from its first bytes (read_attributes_early): whenever it
answers, the answer is exactly what reading the whole object gives; whenever the first bytes
cannot tell, it answers None and the whole object decides (errors included)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from router.config.model import SpoolConfig
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.dicom.part10 import part10_header
from router.ingest.attributes import UnreadableObject, read_attributes, read_attributes_early
from router.ingest.store import ObjectStore
from router.spool.incoming import IncomingObject
from router.spool.spool import Spool
from tests.support import dicomgen

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
INSTANCE = "1.2.3.4.5"
KEYWORDS = frozenset({"BodyPartExamined", "StationName", "Modality"})


def _full(data: bytes) -> object:
    return read_attributes(
        io.BytesIO(data),
        command_sop_class=CT,
        command_sop_instance=INSTANCE,
        wanted_keywords=KEYWORDS,
    )


def _early(prefix: bytes) -> object:
    return read_attributes_early(
        prefix, command_sop_class=CT, command_sop_instance=INSTANCE, wanted_keywords=KEYWORDS
    )


def _encoded(ds: Dataset, syntax: str = EXPLICIT) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return part10_header(CT, INSTANCE, syntax) + out.getvalue()


def _pixel_data_at(data: bytes) -> int:
    """Offset of the top-level Pixel Data element's tag (explicit VR little endian)."""
    return data.rindex(b"\xe0\x7f\x10\x00OW")


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("ct")
    (path,) = dicomgen.make_ct_series(out, 1, rows=64, cols=64)
    return Path(path).read_bytes()


def test_every_prefix_gives_none_or_exactly_the_full_answer(ct_slice: bytes) -> None:
    full = _full(ct_slice)
    header_end = _pixel_data_at(ct_slice) + 12  # tag, VR, reserved, 4-byte length
    answered = []
    for length in range(0, header_end + 64):
        early = _early(ct_slice[:length])
        assert early is None or early == full, length
        if early is not None:
            answered.append(length)
    # Once the Pixel Data element's header is in, the prefix always tells.
    assert answered and answered[0] <= header_end
    assert all(length in answered for length in range(header_end, header_end + 64))
    assert _early(ct_slice) == full


def test_an_object_without_pixel_data_is_left_to_the_full_read() -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT, INSTANCE, "SR"
    data = _encoded(ds)
    assert _early(data) is None  # cannot know that nothing follows
    assert _full(data).modality == "SR"  # type: ignore[attr-defined]


def test_a_long_value_before_the_pixel_data_is_waited_for() -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT, INSTANCE, "CT"
    ds.EncapsulatedDocument = b"x" * (200 * 1024)  # longer than the parser's deferral size
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00" * 4096
    data = _encoded(ds)
    header_end = _pixel_data_at(data) + 12
    assert _early(data[: 100 * 1024]) is None  # cut inside the long value
    assert _early(data[:header_end]) == _full(data)


@pytest.mark.parametrize(
    "body",
    [b"\x00" * 4096, b"\xff" * 4096, b"\x08\x00\x60\x00CS\xff\xff" + b"A" * 64],
    ids=["zeros", "ones", "overlong"],
)
def test_junk_is_never_answered_early(body: bytes) -> None:
    data = part10_header(CT, INSTANCE, EXPLICIT) + body
    assert _early(data) is None
    with pytest.raises(UnreadableObject):
        _full(data)


def test_a_deflated_header_is_read_from_the_whole_object(ct_slice: bytes) -> None:
    header = part10_header(CT, INSTANCE, DeflatedExplicitVRLittleEndian)
    assert _early(header + b"\x00" * 1024) is None


def test_the_store_reads_the_bytes_received_so_far(tmp_path: Path, ct_slice: bytes) -> None:
    """ObjectStore over a real spool: read_early sees the plaintext received so far (the
    first chunk once later ones are sealed), and the object stored with the early answer
    is routed and recorded as the full read would have it."""
    spool = Spool(SpoolConfig(path=tmp_path / "spool", min_free=0))
    planned: list[ObjectAttributes] = []

    def planner(attributes: ObjectAttributes, source: Source) -> list[PlannedDelivery]:
        planned.append(attributes)
        return []

    store = ObjectStore(
        spool, planner=planner, alarm=lambda code, text: None, wanted_keywords=KEYWORDS
    )
    try:
        incoming = store.begin()
        header_end = _pixel_data_at(ct_slice) + 12
        incoming.write(ct_slice[: header_end - 1])
        assert store.read_early(incoming, sop_class=CT, sop_instance=INSTANCE) is None
        incoming.write(ct_slice[header_end - 1 :])
        early = store.read_early(incoming, sop_class=CT, sop_instance=INSTANCE)
        assert early is not None and early == _full(ct_slice)
        source = Source(calling_ae="MODALITY", called_ae="WAYSTATION", peer="127.0.0.1")
        status = store.complete(
            incoming, sop_class=CT, sop_instance=INSTANCE, source=source, early=early
        )
        assert status == 0x0000
        assert planned == [early]
        (held,) = spool.held_objects()
        assert spool.metadata(held)["sop_instance_uid"] == early.sop_instance_uid
        with spool.open_object(held) as reader:
            assert reader.read() == ct_slice  # what was stored is every byte received
    finally:
        spool.close()


def test_a_prefix_past_the_first_chunk_is_that_chunk(tmp_path: Path, ct_slice: bytes) -> None:
    incoming = IncomingObject(tmp_path, data_key=bytes(32), cipher="aes-256-gcm", chunk_size=4096)
    incoming.write(ct_slice)  # several chunks sealed by now
    assert incoming.received_prefix() == ct_slice[:4096]
    incoming.finish()
    incoming.discard()
