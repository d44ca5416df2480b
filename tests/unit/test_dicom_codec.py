"""The upper layer's codecs without a network: DIMSE command sets (checked against
pynetdicom's own encoding), P-DATA fragmentation at the peer's maximum PDU length and
reassembly, and finding a Part 10 file's data set."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import dimse_primitives
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, N_ACTION_RQ, N_EVENT_REPORT_RQ
from pynetdicom.dsutils import encode as pynetdicom_encode

from router.dicom import commands, pdata
from router.dicom.errors import ProtocolError
from router.dicom.part10 import NotPart10, read_file_meta
from tests.support import dicomgen

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.1234567"  # odd length: padded with a NUL
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def _pynetdicom_command(message: object) -> bytes:
    command_set: Dataset = message.command_set  # type: ignore[attr-defined]
    encoded = pynetdicom_encode(command_set, True, True)
    assert encoded is not None
    return encoded


def test_c_store_rq_is_byte_identical_to_pynetdicoms() -> None:
    primitive = dimse_primitives.C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = INSTANCE
    primitive.Priority = 1
    primitive.DataSet = io.BytesIO(b"\0\0")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    assert commands.c_store_rq(7, CT, INSTANCE, 1) == _pynetdicom_command(message)


def test_commitment_requests_are_byte_identical_to_pynetdicoms() -> None:
    action = dimse_primitives.N_ACTION()
    action.MessageID = 3
    action.RequestedSOPClassUID = COMMITMENT
    action.RequestedSOPInstanceUID = COMMITMENT_INSTANCE
    action.ActionTypeID = 1
    action.ActionInformation = io.BytesIO(b"\0\0")
    message = N_ACTION_RQ()
    message.primitive_to_message(action)
    ours = commands.n_action_rq(3, COMMITMENT, COMMITMENT_INSTANCE, 1, has_dataset=True)
    assert ours == _pynetdicom_command(message)

    report = dimse_primitives.N_EVENT_REPORT()
    report.MessageID = 9
    report.AffectedSOPClassUID = COMMITMENT
    report.AffectedSOPInstanceUID = COMMITMENT_INSTANCE
    report.EventTypeID = 2
    report.EventInformation = io.BytesIO(b"\0\0")
    message = N_EVENT_REPORT_RQ()
    message.primitive_to_message(report)
    ours = commands.n_event_report_rq(9, COMMITMENT, COMMITMENT_INSTANCE, 2, has_dataset=True)
    assert ours == _pynetdicom_command(message)


def test_decodes_a_pynetdicom_c_store_rsp_with_error_comment() -> None:
    primitive = dimse_primitives.C_STORE()
    primitive.MessageIDBeingRespondedTo = 12
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = INSTANCE
    primitive.Status = 0xA900
    primitive.ErrorComment = "does not match"
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    decoded = commands.decode(_pynetdicom_command(message))
    assert decoded.field == commands.C_STORE_RSP
    assert decoded.name == "C-STORE-RSP"
    assert decoded.is_response and not decoded.has_dataset
    assert (decoded.responding_to, decoded.status) == (12, 0xA900)
    assert decoded.affected_sop_instance == INSTANCE  # NUL padding stripped
    assert decoded.error_comment == "does not match"


@pytest.mark.parametrize(
    ("encoded", "checks"),
    [
        (commands.c_echo_rq(5), {"field": commands.C_ECHO_RQ, "message_id": 5}),
        (commands.c_echo_rsp(5, 0x0000), {"responding_to": 5, "status": 0}),
        (
            commands.c_store_rsp(65535, CT, INSTANCE, 0xB000),
            {"field": commands.C_STORE_RSP, "status": 0xB000, "responding_to": 65535},
        ),
        (
            commands.n_action_rsp(4, COMMITMENT, COMMITMENT_INSTANCE, 0, action_type=1),
            {"field": commands.N_ACTION_RSP, "action_type": 1, "has_dataset": False},
        ),
        (
            commands.n_event_report_rsp(8, COMMITMENT, COMMITMENT_INSTANCE, 0, event_type=1),
            {"field": commands.N_EVENT_REPORT_RSP, "event_type": 1, "responding_to": 8},
        ),
        (
            commands.n_action_rq(2, COMMITMENT, COMMITMENT_INSTANCE, 1, has_dataset=True),
            {"requested_sop_class": COMMITMENT, "has_dataset": True, "is_response": False},
        ),
    ],
)
def test_builders_round_trip(encoded: bytes, checks: dict[str, object]) -> None:
    decoded = commands.decode(encoded)
    for name, value in checks.items():
        assert getattr(decoded, name) == value, name
    # The group length counts every byte after its own element.
    assert struct.unpack_from("<I", encoded, 8)[0] == len(encoded) - 12


def test_generic_encode_handles_tags_text_and_unknown_elements() -> None:
    encoded = commands.encode(
        {
            commands.COMMAND_FIELD: 0x0120,
            commands.ATTRIBUTE_LIST: (0x00100010, 0x00100020),
            commands.MOVE_ORIGINATOR_AE: "MODALITY",
            0x5555: b"\x01\x02",
        }
    )
    decoded = commands.decode(encoded)
    assert decoded.elements[commands.ATTRIBUTE_LIST] == (0x00100010, 0x00100020)
    assert decoded.elements[commands.MOVE_ORIGINATOR_AE] == "MODALITY"
    assert decoded.elements[0x5555] == b"\x01\x02"
    with pytest.raises(TypeError):
        commands.encode({commands.MESSAGE_ID: "seven"})


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (struct.pack("<HHIH", 0x0008, 0x0100, 2, 1), "group 0008"),
        (struct.pack("<HHIH", 0x0000, 0x0100, 40, 1), "runs past the end"),
        (struct.pack("<HHI", 0x0000, 0x0110, 2)[:6], "inside an element header"),
        (struct.pack("<HHIH", 0x0000, 0x0110, 2, 1), "no Command Field"),
        (struct.pack("<HHIHH", 0x0000, 0x0100, 4, 1, 1), "US of length 4"),
    ],
)
def test_malformed_command_sets_are_refused(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        commands.decode(raw)


def _pdus(stream: bytes) -> list[tuple[int, bytes]]:
    """Split a byte stream into (type, body) PDUs."""
    out = []
    offset = 0
    while offset < len(stream):
        pdu_type, length = struct.unpack_from(">BxI", stream, offset)
        out.append((pdu_type, stream[offset + 6 : offset + 6 + length]))
        offset += 6 + length
    assert offset == len(stream)
    return out


def _wire(dataset: bytes | io.BytesIO, length: int | None, peer_max: int) -> bytes:
    command = commands.c_store_rq(1, CT, INSTANCE)
    batches = pdata.message_batches(3, command, dataset, length, peer_max)
    return b"".join(b"".join(bytes(memoryview(b)) for b in batch) for batch in batches)


@pytest.mark.parametrize("peer_max", [4096, 4097, 16384, 0])
@pytest.mark.parametrize("streamed", [False, True])
def test_fragments_respect_the_peers_maximum_and_reassemble(peer_max: int, streamed: bool) -> None:
    fragment = pdata.fragment_size(peer_max)
    assert fragment % 2 == 0
    sizes = [
        0,
        1,
        fragment - 1,
        fragment,
        fragment + 1,
        3 * fragment + 7,
        pdata.READ_SIZE + 3,
        2 * pdata.READ_SIZE + 2 * fragment + 1,
    ]
    for size in sizes:
        data = bytes(i % 251 for i in range(size))
        source: bytes | io.BytesIO = io.BytesIO(data) if streamed else data
        stream = _wire(source, size, peer_max)
        assembler = pdata.MessageAssembler(max_dataset=1 << 26)
        for pdu_type, body in _pdus(stream):
            assert pdu_type == 0x04
            assert peer_max == 0 or len(body) <= peer_max, (size, len(body))
            pdvs = list(pdata.iter_pdvs(body))
            assert len(pdvs) == 1  # one PDV per PDU
            assembler.feed(body)
        [message] = assembler.ready
        assert message.context_id == 3
        assert message.command.affected_sop_instance == INSTANCE
        assert message.dataset == data, size
        expected_pdus = 1 + max(1, -(-size // fragment))
        assert len(_pdus(stream)) == expected_pdus


def test_a_small_maximum_splits_the_command_set_too() -> None:
    command = commands.c_store_rq(1, CT, INSTANCE)
    stream = _wire(b"\0\0", 2, 64)
    pdus = _pdus(stream)
    assert all(len(body) <= 64 for _, body in pdus)
    flags = [pdata_flags(body) for _, body in pdus]
    command_pdus = -(-len(command) // pdata.fragment_size(64))
    assert flags == [1] * (command_pdus - 1) + [3, 2]


def pdata_flags(body: bytes) -> int:
    [(_, control, _)] = pdata.iter_pdvs(body)
    return control


def test_a_source_that_ends_early_is_an_error_not_a_short_message() -> None:
    with pytest.raises(ValueError, match="ended after 10 of 20 bytes"):
        _wire(io.BytesIO(b"x" * 10), 20, 16384)


def test_peer_maximum_too_small_to_carry_data_is_refused() -> None:
    with pytest.raises(ProtocolError):
        pdata.fragment_size(7)


def _pdv(context: int, control: int, value: bytes) -> bytes:
    return struct.pack(">IBB", len(value) + 2, context, control) + value


@pytest.mark.parametrize(
    ("pdvs", "words"),
    [
        ([_pdv(1, 0x02, b"ab")], "before its command set"),
        ([_pdv(1, 0x01, b"ab"), _pdv(3, 0x03, b"cd")], "two presentation contexts"),
        ([_pdv(1, 0x43, b"ab")], "reserved message control bits"),
        ([struct.pack(">IBB", 1, 1, 3)], "claims 1 bytes"),
        ([struct.pack(">IBB", 90, 1, 3) + b"ab"], "claims 90 bytes"),
        ([b"\0\0\0"], "cut off"),
    ],
)
def test_pdvs_out_of_order_or_malformed_are_protocol_errors(pdvs: list[bytes], words: str) -> None:
    assembler = pdata.MessageAssembler(max_dataset=100)
    with pytest.raises(ProtocolError, match=words):
        assembler.feed(b"".join(pdvs))


def test_command_fragment_while_a_data_set_is_expected_is_refused() -> None:
    assembler = pdata.MessageAssembler(max_dataset=100)
    assembler.feed(_pdv(1, 0x03, commands.c_store_rq(1, CT, INSTANCE)))
    assert not assembler.ready and not assembler.idle
    with pytest.raises(ProtocolError, match="command fragment arrived while a data set"):
        assembler.feed(_pdv(1, 0x03, commands.c_echo_rq(2)))


def test_in_memory_data_sets_are_capped_and_sinks_take_any_size() -> None:
    command = commands.c_store_rq(1, CT, INSTANCE)
    assembler = pdata.MessageAssembler(max_dataset=10)
    assembler.feed(_pdv(1, 0x03, command))
    with pytest.raises(ProtocolError, match="larger than 10 bytes"):
        assembler.feed(_pdv(1, 0x00, b"x" * 8) + _pdv(1, 0x02, b"y" * 4))
    sink = io.BytesIO()
    assembler = pdata.MessageAssembler(max_dataset=10, sink_factory=lambda cmd, cx: sink)
    assembler.feed(_pdv(1, 0x03, command) + _pdv(1, 0x00, b"x" * 8) + _pdv(1, 0x02, b"y" * 4))
    [message] = assembler.ready
    assert message.sink is sink and message.dataset is None
    assert sink.getvalue() == b"x" * 8 + b"y" * 4


def test_two_messages_in_one_pdu_are_both_delivered() -> None:
    assembler = pdata.MessageAssembler(max_dataset=100)
    assembler.feed(_pdv(1, 0x03, commands.c_echo_rq(1)) + _pdv(1, 0x03, commands.c_echo_rq(2)))
    assert [m.command.message_id for m in assembler.ready] == [1, 2]


def test_file_meta_gives_the_data_set_offset(tmp_path: Path) -> None:
    [path] = dicomgen.make_tiny_objects(tmp_path, count=1)
    with path.open("rb") as fh:
        meta = read_file_meta(fh)
        assert fh.tell() == meta.dataset_offset
    assert meta.dataset_offset == dicomgen.dataset_offset(path)
    assert meta.sop_instance and meta.sop_class and meta.transfer_syntax


def test_not_a_part10_file_is_refused() -> None:
    with pytest.raises(NotPart10):
        read_file_meta(io.BytesIO(b"\0" * 200))
    with pytest.raises(NotPart10):
        read_file_meta(io.BytesIO(b"\0" * 128 + b"DICM" + b"\x02\x00"))


def test_a_reused_send_buffer_gives_the_same_bytes() -> None:
    buffer = bytearray(pdata.READ_SIZE + 16384)
    command = commands.c_store_rq(1, CT, INSTANCE)
    for size in (3 * pdata.READ_SIZE + 5, 10, 2 * pdata.READ_SIZE):
        data = bytes(i % 239 for i in range(size))
        reused = pdata.message_batches(1, command, io.BytesIO(data), size, 16384, buffer)
        fresh = pdata.message_batches(1, command, io.BytesIO(data), size, 16384)
        for a, b in zip(reused, fresh, strict=True):
            assert b"".join(bytes(memoryview(x)) for x in a) == b"".join(
                bytes(memoryview(x)) for x in b
            )
