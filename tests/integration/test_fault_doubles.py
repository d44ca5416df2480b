"""The fault doubles work: every FaultProxy fault and every ScriptedSCP action, seen by a sender.

Senders are plain pynetdicom SCUs (and DCMTK storescu for two cases); everything is on
127.0.0.1. These tests pin down how each fault surfaces to a C-STORE sender, which is what the
delivery engine's retry classification relies on.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE

from tests.support.dicomgen import dataset_bytes
from tests.support.faultproxy import FaultProxy
from tests.support.peers import Storescp, storescu
from tests.support.scripted_scp import (
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_CONGESTION,
    REJECT_LOCAL_LIMIT,
    REJECT_TRANSIENT,
    Abort,
    NoAnswer,
    Reject,
    Respond,
    ScriptedSCP,
)

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
VERIFICATION = "1.2.840.10008.1.1"


def make_object(directory: Path, pixel_bytes: int, seed: int) -> Path:
    """A Secondary Capture object with ``pixel_bytes`` of seeded noise, Explicit VR LE."""
    rows = max(1, pixel_bytes // 1024)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"fault-doubles-{seed}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["fault-doubles-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["fault-doubles-series"])
    ds.PatientID, ds.Modality, ds.ConversionType = "FAULT", "OT", "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = random.Random(seed).randbytes(rows * 1024)
    path = directory / f"obj{seed}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def objects(tmp_path: Path) -> list[Path]:
    """Five small (8 KiB) objects."""
    return [make_object(tmp_path, 8192, seed) for seed in range(5)]


@pytest.fixture
def big_object(tmp_path: Path) -> Path:
    """One object of 1 MiB pixel data."""
    return make_object(tmp_path, MIB, 100)


@pytest.fixture
def scp() -> Iterator[ScriptedSCP]:
    """A ScriptedSCP accepting everything."""
    with ScriptedSCP() as dest:
        yield dest


def associate(
    port: int,
    *,
    timeout: float = 5.0,
    dimse_timeout: float | None = None,
    calling: str = "SENDER",
    called: str = "PACS",
    syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,),
) -> Association:
    """A pynetdicom SCU association (storage of Secondary Capture, and Verification)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = timeout
    ae.dimse_timeout = timeout if dimse_timeout is None else dimse_timeout
    ae.add_requested_context(SecondaryCaptureImageStorage, list(syntaxes))
    ae.add_requested_context(VERIFICATION)
    return ae.associate("127.0.0.1", port, ae_title=called)


def finish(assoc: Association) -> None:
    """Release if still established; never leaves the association thread running."""
    if assoc.is_established:
        assoc.release()
    if assoc.ident is not None:  # a refused connection never starts the thread
        assoc.join(10)


def store(
    port: int, path: Path, *, dimse_timeout: float = 5.0
) -> tuple[Dataset, Association, float]:
    """One C-STORE on a new association: (status dataset, association, seconds for the store)."""
    assoc = associate(port, dimse_timeout=dimse_timeout)
    assert assoc.is_established
    ds = dcmread(path)
    started = time.monotonic()
    status = assoc.send_c_store(ds)
    elapsed = time.monotonic() - started
    finish(assoc)
    return status, assoc, elapsed


def echo_ok(assoc: Association) -> bool:
    """True if a C-ECHO on ``assoc`` succeeds (False once the association is gone)."""
    return assoc.is_established and assoc.send_c_echo().get("Status") == 0


def rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the requestor received."""
    rsp = assoc.acceptor.primitive
    assert isinstance(rsp, A_ASSOCIATE) and assoc.is_rejected
    return (int(rsp.result or 0), int(rsp.result_source or 0), int(rsp.diagnostic or 0))


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --------------------------------------------------------------------------------------------
# FaultProxy
# --------------------------------------------------------------------------------------------


def test_proxy_forwards_bytes_exactly_and_counts(scp: ScriptedSCP, big_object: Path) -> None:
    with FaultProxy(scp.port) as proxy:
        status, _, _ = store(proxy.port, big_object)
        stats = proxy.statistics()
    assert status.Status == 0x0000
    assert scp.received()[uid_of(big_object)].data == dataset_bytes(big_object)
    assert stats.connections == 1
    assert stats.forwarded["up"] > MIB and stats.forwarded["down"] > 0
    assert stats.dropped == {"up": 0, "down": 0} and stats.resets == 0


def test_latency_and_jitter_delay_each_way_and_keep_order(
    scp: ScriptedSCP, big_object: Path
) -> None:
    with FaultProxy(scp.port) as proxy:
        assoc = associate(proxy.port)
        proxy.latency(0.15)
        started = time.monotonic()
        assert assoc.send_c_echo().Status == 0
        round_trip = time.monotonic() - started
        proxy.latency(0.02, jitter=0.08)  # reordering would corrupt the object
        status = assoc.send_c_store(dcmread(big_object))
        finish(assoc)
    assert 0.3 <= round_trip < 0.6
    assert status.Status == 0
    assert scp.received()[uid_of(big_object)].data == dataset_bytes(big_object)


def test_rate_cap_within_30_percent_for_1_mib(scp: ScriptedSCP, big_object: Path) -> None:
    cap = 2_000_000
    with FaultProxy(scp.port) as proxy:
        proxy.rate(cap, "up")
        status, _, elapsed = store(proxy.port, big_object)
    assert status.Status == 0
    size = len(dataset_bytes(big_object))
    assert 0.7 * cap <= size / elapsed <= 1.3 * cap, f"{size / elapsed:.0f} B/s for cap {cap}"


def test_dimse_timeout_shorter_than_transfer_fails_although_object_arrives(
    scp: ScriptedSCP, big_object: Path
) -> None:
    # pynetdicom starts the DIMSE timeout once the request is queued, not once it is sent:
    # over a slow link the sender gives up (empty status, A-ABORT) while the data, queued in
    # front of the A-ABORT, still reaches the destination.
    with FaultProxy(scp.port) as proxy:
        proxy.rate(2_000_000)
        status, assoc, elapsed = store(proxy.port, big_object, dimse_timeout=0.2)
        assert "Status" not in status and assoc.is_aborted
        assert elapsed < 0.45  # about 0.5 s of data still in flight
        got = scp.wait_for(1, timeout=5)  # before the proxy closes (which RSTs everything)
    assert got[uid_of(big_object)].data == dataset_bytes(big_object)


def test_reset_after_n_bytes_surfaces_as_prompt_abort(scp: ScriptedSCP, big_object: Path) -> None:
    with FaultProxy(scp.port) as proxy:
        assoc = associate(proxy.port, dimse_timeout=10)
        proxy.reset_after(200_000, "up", times=1)
        started = time.monotonic()
        status = assoc.send_c_store(dcmread(big_object))
        elapsed = time.monotonic() - started
        finish(assoc)
        stats = proxy.statistics()
        # times=1: the next connection goes through untouched
        again, _, _ = store(proxy.port, big_object)
    assert "Status" not in status and assoc.is_aborted and not assoc.is_established
    assert elapsed < 5, "a reset must not wait for the DIMSE timeout"
    assert stats.resets == 1
    assert 200_000 <= stats.forwarded["up"] < 300_000
    assert again.Status == 0 and scp.receive_count(uid_of(big_object)) == 1


def test_blackhole_accepts_but_never_answers(scp: ScriptedSCP, objects: list[Path]) -> None:
    with FaultProxy(scp.port) as proxy:
        proxy.blackhole()
        started = time.monotonic()
        assoc = associate(proxy.port, timeout=0.5)
        elapsed = time.monotonic() - started
        finish(assoc)
        stats = proxy.statistics()
        proxy.normal()
        status, _, _ = store(proxy.port, objects[0])
    assert not assoc.is_established and assoc.is_aborted and not assoc.is_rejected
    assert 0.5 <= elapsed < 2
    assert stats.connections == 1 and stats.forwarded["up"] == 0 and stats.dropped["up"] > 0
    assert status.Status == 0
    assert scp.statistics().associations == 1  # only the one after normal()


def test_lose_responses_sender_times_out_while_destination_has_object(
    scp: ScriptedSCP, objects: list[Path]
) -> None:
    with FaultProxy(scp.port) as proxy:
        assoc = associate(proxy.port, dimse_timeout=0.5)
        proxy.lose_responses()
        status = assoc.send_c_store(dcmread(objects[0]))
        finish(assoc)
        assert proxy.statistics().dropped["down"] > 0
        proxy.normal()
        resent, _, _ = store(proxy.port, objects[0])  # the retry a router would make
    uid = uid_of(objects[0])
    assert "Status" not in status and assoc.is_aborted
    assert resent.Status == 0
    assert scp.receive_count(uid) == 2  # the duplicate a lost response costs


def test_refuse_then_accept_on_the_same_port(scp: ScriptedSCP, objects: list[Path]) -> None:
    with FaultProxy(scp.port) as proxy:
        port = proxy.port
        proxy.refuse()
        started = time.monotonic()
        refused = associate(port)
        elapsed = time.monotonic() - started
        finish(refused)
        proxy.accept()
        status, _, _ = store(port, objects[0])
        assert proxy.port == port
    assert not refused.is_established and not refused.is_rejected
    assert elapsed < 1
    assert status.Status == 0 and scp.statistics().associations == 1


def test_stall_up_holds_the_request_and_resume_delivers_it_late(
    scp: ScriptedSCP, objects: list[Path]
) -> None:
    with FaultProxy(scp.port) as proxy:
        assoc = associate(proxy.port, dimse_timeout=0.5)
        up_before = proxy.statistics().forwarded["up"]
        proxy.stall("up")
        status = assoc.send_c_store(dcmread(objects[0]))
        finish(assoc)  # the sender aborts and closes; its bytes wait in the socket buffers
        time.sleep(0.2)
        held = (scp.statistics().c_stores, proxy.statistics().forwarded["up"])
        proxy.normal()
        deadline = time.monotonic() + 5
        while proxy.statistics().forwarded["up"] - up_before < 8192 and time.monotonic() < deadline:
            time.sleep(0.02)
        late = proxy.statistics().forwarded["up"] - up_before
    assert "Status" not in status and assoc.is_aborted
    assert held == (0, up_before)
    # The request the sender gave up on still reaches the destination (which normally stores
    # it before it reads the A-ABORT behind it): a sender's failure is not "not delivered".
    assert late > 8192


def test_flap_alternates_refusal_and_resets_on_schedule(scp: ScriptedSCP) -> None:
    with FaultProxy(scp.port) as proxy:
        before = associate(proxy.port, dimse_timeout=1)
        assert before.is_established
        proxy.flap(0.6, 0.6, cycles=2)  # up 0-0.6, down 0.6-1.2, up 1.2-1.8, down 1.8-2.4
        start = time.monotonic()

        def at(t: float) -> None:
            time.sleep(max(0.0, start + t - time.monotonic()))

        at(0.3)
        assert echo_ok(before)
        at(0.9)
        assert not echo_ok(before)  # reset when the link went down
        refused = associate(proxy.port)
        at(1.5)
        during_up = associate(proxy.port)
        assert during_up.is_established
        deadline = time.monotonic() + 5
        while proxy.flapping and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not echo_ok(during_up)  # reset by the second down phase
        stats = proxy.statistics()
        after = associate(proxy.port)
        after_ok = echo_ok(after)  # stays up after the last cycle
        for assoc in (before, refused, during_up, after):
            finish(assoc)
    assert not refused.is_established and after_ok
    assert stats.down_phases == 2 and stats.resets == 2


# --------------------------------------------------------------------------------------------
# ScriptedSCP
# --------------------------------------------------------------------------------------------


def test_scripted_statuses_in_order_then_default(scp: ScriptedSCP, objects: list[Path]) -> None:
    codes = [0xA700, 0xA900, 0xC000, 0x0122, 0xB000]
    scp.script(Respond(code) for code in codes)
    assoc = associate(scp.port)
    got = [int(assoc.send_c_store(dcmread(p)).Status) for p in objects]
    got.append(int(assoc.send_c_store(dcmread(objects[0])).Status))
    finish(assoc)
    assert got == [*codes, 0x0000]
    stats = scp.statistics()
    assert stats.c_stores == 6 and stats.statuses == {**dict.fromkeys(codes, 1), 0: 1}
    # kept: the warning (0xB000) and the final success only
    assert set(scp.received()) == {uid_of(objects[4]), uid_of(objects[0])}


def test_script_for_one_object_and_duplicate_counting(
    scp: ScriptedSCP, objects: list[Path]
) -> None:
    a, b = objects[0], objects[1]
    scp.script_for(uid_of(b), [Respond(0xA700)])
    scp.script([Respond(0xC000)])  # used by a; b's own script comes first
    assoc = associate(scp.port)
    got = [int(assoc.send_c_store(dcmread(p)).Status) for p in (b, a, b, a, a)]
    finish(assoc)
    assert got == [0xA700, 0xC000, 0, 0, 0]
    assert scp.receive_count(uid_of(a)) == 2 and scp.receive_count(uid_of(b)) == 1


def test_abort_action_aborts_without_response(scp: ScriptedSCP, objects: list[Path]) -> None:
    scp.script([Abort()])
    status, assoc, elapsed = store(scp.port, objects[0], dimse_timeout=10)
    again, _, _ = store(scp.port, objects[0])
    assert "Status" not in status and assoc.is_aborted
    assert elapsed < 2
    assert again.Status == 0 and scp.statistics().aborts == 1


def test_no_answer_is_bounded_and_ends_when_sender_gives_up(
    scp: ScriptedSCP, objects: list[Path]
) -> None:
    scp.script([NoAnswer(seconds=20)])
    status, assoc, elapsed = store(scp.port, objects[0], dimse_timeout=0.5)
    assert "Status" not in status and assoc.is_aborted
    assert 0.5 <= elapsed < 1.5
    deadline = time.monotonic() + 3  # the held handler notices the sender's A-ABORT
    while scp.statistics().unanswered < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scp.statistics().unanswered == 1 and scp.received() == {}

    scp.script([NoAnswer(seconds=0.3)])  # sender more patient than the SCP: SCP aborts
    status, assoc, elapsed = store(scp.port, objects[1], dimse_timeout=10)
    assert "Status" not in status and assoc.is_aborted and elapsed < 2


def test_slow_answer(scp: ScriptedSCP, objects: list[Path]) -> None:
    scp.script([Respond(delay=0.5), Respond(delay=1.0)])
    patient, _, slow = store(scp.port, objects[0], dimse_timeout=5)
    hasty, assoc, _ = store(scp.port, objects[1], dimse_timeout=0.3)
    assert patient.Status == 0 and slow >= 0.5
    assert "Status" not in hasty and assoc.is_aborted
    scp.wait_for(2)  # kept before the (late or never sent) answer: "failed" but stored


@pytest.mark.parametrize(
    ("reject", "result_str"),
    [
        (REJECT_TRANSIENT, "Rejected Transient"),
        (REJECT_CONGESTION, "Rejected Transient"),
        (REJECT_LOCAL_LIMIT, "Rejected Transient"),
        (REJECT_CALLING_AE, "Rejected Permanent"),
        (REJECT_CALLED_AE, "Rejected Permanent"),
    ],
)
def test_scripted_rejection_result_and_reason_reach_sender(
    scp: ScriptedSCP, reject: Reject, result_str: str
) -> None:
    scp.script_associations([reject])
    rejected = associate(scp.port)
    finish(rejected)
    accepted = associate(scp.port)  # the script is used up: back to normal
    accepted_ok = echo_ok(accepted)
    finish(accepted)
    assert rejected.is_rejected and not rejected.is_established and not rejected.is_aborted
    assert rejection(rejected) == (reject.result, reject.source, reject.reason)
    primitive = rejected.acceptor.primitive
    assert isinstance(primitive, A_ASSOCIATE) and primitive.result_str == result_str
    assert accepted_ok
    assert scp.statistics().associations == 2 and scp.statistics().rejected == 1


def test_builtin_rejections_calling_ae_and_association_limit() -> None:
    with ScriptedSCP(require_calling_aet=["MODALITY"], maximum_associations=1) as scp:
        stranger = associate(scp.port, calling="STRANGER")
        finish(stranger)
        first = associate(scp.port, calling="MODALITY")
        second = associate(scp.port, calling="MODALITY")  # while first is open
        first_ok = echo_ok(first)
        finish(second)
        finish(first)
        stats = scp.statistics()
    assert rejection(stranger) == (1, 1, 3)  # permanent, calling AE title not recognised
    assert first_ok
    assert rejection(second) == (2, 3, 2)  # transient, local limit exceeded
    assert stats.rejected == 2


def test_transfer_syntax_and_sop_class_restriction(objects: list[Path]) -> None:
    with ScriptedSCP(sop_classes=[CTImageStorage]) as scp:
        no_sc = associate(scp.port)
        no_sc_rejected = [(cx.abstract_syntax, cx.result) for cx in no_sc.rejected_contexts]
        finish(no_sc)
    assert no_sc_rejected == [(SecondaryCaptureImageStorage, 0x03)]  # abstract syntax
    with ScriptedSCP(transfer_syntaxes=[ImplicitVRLittleEndian]) as scp:
        # Verification is accepted, so the association stands, but storage is not possible.
        explicit_only = associate(scp.port)
        rejected = [(cx.abstract_syntax, cx.result) for cx in explicit_only.rejected_contexts]
        with pytest.raises(ValueError, match="No presentation context"):
            explicit_only.send_c_store(dcmread(objects[0]))
        finish(explicit_only)
        both = associate(scp.port, syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian))
        status = both.send_c_store(dcmread(objects[0]))  # pynetdicom converts the encoding
        finish(both)
        received = scp.received()[uid_of(objects[0])]
    assert rejected == [(SecondaryCaptureImageStorage, 0x04)]  # transfer syntaxes not supported
    assert status.Status == 0 and received.transfer_syntax == ImplicitVRLittleEndian


@pytest.mark.parametrize("chunked", [False, True])
def test_records_bytes_with_and_without_chunked_receive(
    monkeypatch: pytest.MonkeyPatch, scp: ScriptedSCP, big_object: Path, chunked: bool
) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", chunked)
    status, _, _ = store(scp.port, big_object)
    got = scp.received()[uid_of(big_object)]
    assert status.Status == 0
    assert got.data == dataset_bytes(big_object)
    assert got.transfer_syntax == ExplicitVRLittleEndian and got.calling_ae == "SENDER"


# --------------------------------------------------------------------------------------------
# DCMTK storescu as the sender
# --------------------------------------------------------------------------------------------


@pytest.mark.dcmtk
def test_storescu_lost_response_to_storescp(tmp_path: Path, objects: list[Path]) -> None:
    args = ["-td", "1", "-ta", "1"]
    with Storescp(tmp_path / "in") as dest, FaultProxy(dest.port) as proxy:
        # storescu is one process: to lose only the C-STORE response, let the A-ASSOCIATE-AC
        # through. Its length is what a first, fully dropped attempt loses.
        proxy.lose_responses()
        no_association = storescu(objects[:1], port=proxy.port, extra_args=args)
        ac_length = proxy.statistics().dropped["down"]
        proxy.normal()
        proxy.lose_responses(after_bytes=ac_length)
        result = storescu(objects[:1], port=proxy.port, extra_args=args)
        files = dest.wait_for_files(1, timeout=10)
    assert "Association Request Failed" in no_association.stderr + no_association.stdout
    assert 0 < ac_length < 1024
    assert result.failed == 1 and result.succeeded == 0
    assert "DIMSE" in result.stderr + result.stdout
    assert len(files) == 1 and dataset_bytes(files[0]) == dataset_bytes(objects[0])


@pytest.mark.dcmtk
def test_storescu_sees_scripted_status_and_rejection(objects: list[Path]) -> None:
    with ScriptedSCP() as scp:
        scp.script([Respond(0xA700)])
        refused = storescu(objects[:2], port=scp.port)
        scp.script_associations([REJECT_CALLING_AE])
        rejected = storescu(objects[2:3], port=scp.port)
    assert refused.succeeded == 1 and refused.failed == 1
    assert "Refused: OutOfResources" in next(iter(refused.failed_files.values()))
    assert rejected.returncode != 0 and rejected.failed == 1
    assert "Rejected Permanent" in rejected.stdout + rejected.stderr


def test_doubles_leave_no_threads_behind(objects: list[Path]) -> None:
    before = set(threading.enumerate())
    with ScriptedSCP() as scp, FaultProxy(scp.port) as proxy:
        scp.script([NoAnswer(seconds=30)])
        assoc = associate(proxy.port, dimse_timeout=30)
        sender = threading.Thread(target=assoc.send_c_store, args=(dcmread(objects[0]),))
        sender.start()
        time.sleep(0.3)  # the SCP holds the answer; close both doubles under it
    sender.join(10)
    assoc.join(10)
    time.sleep(0.2)
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not sender.is_alive() and leftover == []
