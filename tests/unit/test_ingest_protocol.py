"""The receiver's pure protocol parts: command sets, the Part 10 header, negotiation."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, decode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from router.ingest import commands
from router.ingest.acceptor import REJECT_BUSY, REJECT_CALLING_AE, negotiate
from router.ingest.file_meta import part10_header

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def test_response_command_set_decodes_with_pydicom() -> None:
    raw = commands.response(
        commands.C_STORE_RSP, message_id=7, status=0xA700, sop_class=CT, sop_instance="1.2.3"
    )
    dataset = decode(DicomBytesIO(raw), True, True)
    assert dataset.CommandField == 0x8001
    assert dataset.MessageIDBeingRespondedTo == 7
    assert dataset.Status == 0xA700
    assert dataset.AffectedSOPInstanceUID == "1.2.3"
    assert dataset.CommandGroupLength == len(raw) - 12


def test_request_decoding_reads_what_ingest_needs() -> None:
    raw = commands.response(0x0001, message_id=3, status=0, sop_class=CT, sop_instance="9.8.7")
    # Overwrite the data set type so it reads as a request with a data set.
    raw = raw.replace(
        b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01", b"\x00\x00\x00\x08\x02\x00\x00\x00\x02\x02"
    )
    command = commands.decode(raw)
    assert (command.command_field, command.affected_sop_class) == (1, CT)
    assert command.affected_sop_instance == "9.8.7"
    assert command.has_data_set


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00\x01",  # cut inside an element header
        b"\x08\x00\x00\x01\x02\x00\x00\x00\x01\x00",  # not group 0000
        b"\x00\x00\x00\x01\xff\xff\x00\x00\x01\x00",  # length past the end
        b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00",  # no Command Field
    ],
)
def test_malformed_command_sets_are_refused(raw: bytes) -> None:
    with pytest.raises(commands.CommandError):
        commands.decode(raw)


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
