"""The receiver's pure protocol parts: the Part 10 header it writes, association negotiation."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from router.dicom.part10 import part10_header
from router.ingest.acceptor import REJECT_BUSY, REJECT_CALLING_AE, negotiate

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT, "1.2.840.10008.1.2.4.50"])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34", "1." + "2" * 62])
def test_part10_header_is_what_pynetdicom_writes(syntax: str, instance: str) -> None:
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(
        meta,
        create_file_meta(
            sop_class_uid=UID(CT), sop_instance_uid=UID(instance), transfer_syntax=UID(syntax)
        ),
        enforce_standard=True,
    )
    assert part10_header(CT, instance, syntax) == b"\x00" * 128 + b"DICM" + meta.getvalue()


def _request(contexts: list[tuple[int, str, list[str]]], calling: str = "MODALITY") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "WAYSTATION"
    items = []
    for context_id, abstract, syntaxes in contexts:
        context = build_context(abstract, syntaxes)
        context.context_id = context_id
        items.append(context)
    primitive.presentation_context_definition_list = items
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _decide(request: bytes, *, allowed: tuple[str, ...] = (), busy: bool = False):  # type: ignore[no-untyped-def]
    return negotiate(
        request, ae_title="WAYSTATION", max_pdu=262144, allowed_callers=allowed, busy=busy
    )


def test_storage_contexts_are_accepted_in_the_first_syntax_offered() -> None:
    result = _decide(_request([(1, CT, [IMPLICIT, EXPLICIT]), (3, "1.2.3.4.5", [EXPLICIT])]))
    assert result.accepted and result.peer_max_pdu == 16384
    assert result.contexts == {1: (CT, IMPLICIT), 3: ("1.2.3.4.5", EXPLICIT)}
    answer = A_ASSOCIATE_AC()
    answer.decode(result.answer)
    assert answer.to_primitive().maximum_length_received == 262144


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"allowed": ("CT1",)}, REJECT_CALLING_AE), ({"busy": True}, REJECT_BUSY)],
)
def test_rejections_carry_the_standard_reason(kwargs: dict, reason: tuple[int, int, int]) -> None:  # type: ignore[type-arg]
    result = _decide(_request([(1, CT, [EXPLICIT])]), **kwargs)
    assert not result.accepted and result.reject == reason
    answer = A_ASSOCIATE_RJ()
    answer.decode(result.answer)
    primitive = answer.to_primitive()
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == reason


def _with_context_ids(request: bytes, ids: list[int]) -> bytes:
    """Rewrite the presentation context IDs of an encoded request (pynetdicom refuses to
    build bad ones, which is what a hostile peer sends)."""
    data = bytearray(request)
    offset, found = 74, 0  # PDU header (6) + fixed fields (68)
    while offset < len(data):
        item_type, length = data[offset], int.from_bytes(data[offset + 2 : offset + 4], "big")
        if item_type == 0x20:
            data[offset + 4] = ids[found]
            found += 1
        offset += 4 + length
    assert found == len(ids)
    return bytes(data)


@pytest.mark.parametrize(
    "request_bytes",
    [
        _with_context_ids(_request([(1, CT, [EXPLICIT])]), [2]),  # even ID
        _with_context_ids(_request([(1, CT, [EXPLICIT]), (3, CT, [IMPLICIT])]), [5, 5]),
        _request([]),  # no presentation context at all
    ],
)
def test_requests_breaking_the_standard_are_refused(request_bytes: bytes) -> None:
    _decide(_request([(1, CT, [EXPLICIT])]))  # the unaltered request is accepted
    with pytest.raises(ValueError, match="context"):
        _decide(request_bytes)
