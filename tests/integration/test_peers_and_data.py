"""The test data generators and the real peers (DCMTK storescp/storescu, Orthanc) work together."""

from __future__ import annotations

import collections
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests.support import dicomgen, peers
from tests.support.dicomgen import (
    cached_dataset,
    dataset_bytes,
    make_ct_series,
    make_tiny_objects,
    pydicom_test_files,
    random_patient,
    sha256_file,
    transfer_syntaxes_covered,
)
from tests.support.peers import (
    LOOPBACK,
    REQUIRE_PEERS_ENV,
    Orthanc,
    Storescp,
    listening_sockets,
    require,
    storescu,
)

# pydicom test files that DCMTK's storescu cannot send, with the reason. They stay in
# pydicom_test_files() because the router itself should cope with them.
DCMTK_CANNOT_SEND = {
    # Explicit VR file whose attributes (SOP Class/Instance UID included) are encoded with VR UN;
    # storescu reports "No SOP Class or Instance UID in file" and skips it.
    "rtdose_rle.dcm": "attributes encoded as UN, storescu finds no SOP UIDs",
}


def _assert_gone(pid: int) -> None:
    """The process was stopped and reaped (no zombie, nothing left behind)."""
    assert not Path(f"/proc/{pid}").exists(), f"process {pid} left behind"


@pytest.mark.dcmtk
def test_ct_series_arrives_byte_exact_at_storescp(tmp_path: Path) -> None:
    patient = random_patient(11)
    files = make_ct_series(tmp_path / "ct", 20, seed=11, patient=patient)
    assert len(files) == 20
    assert all(500_000 < f.stat().st_size < 540_000 for f in files)
    ds = pydicom.dcmread(files[7])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (512, 512, 16, 1)
    assert ds.InstanceNumber == 8 and float(ds.ImagePositionPatient[2]) == -8.75
    assert (ds.PatientName, ds.PatientID, ds.AccessionNumber) == (
        patient.name,
        patient.patient_id,
        patient.accession,
    )
    raw = files[0].read_bytes()
    assert patient.name.encode() in raw and patient.patient_id.encode() in raw
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}) == 20
    # Deterministic: the same arguments give byte-identical files.
    again = make_ct_series(tmp_path / "again", 20, seed=11, patient=patient)
    assert [sha256_file(f) for f in again] == [sha256_file(f) for f in files]

    with Storescp(tmp_path / "received") as scp:
        assert scp.proc is not None
        pid = scp.proc.pid
        assert listening_sockets(pid) == {("127.0.0.1", scp.port)}
        result = storescu(files, port=scp.port, aec=scp.aet)
        assert result.ok, result.stderr[-2000:]
        assert (result.succeeded, result.failed) == (20, 0)
        received = scp.files()
    _assert_gone(pid)
    assert len(received) == 20
    # storescp rewrote the file meta; the data sets must be the bytes that were sent.
    assert collections.Counter(dataset_bytes(f) for f in received) == collections.Counter(
        dataset_bytes(f) for f in files
    )


def test_tiny_objects_arrive_in_orthanc(tmp_path: Path) -> None:
    source = cached_dataset("tiny-2000-seed2", lambda d: make_tiny_objects(d, 2000, seed=2))
    files = sorted(source.glob("*.dcm"))
    assert len(files) == 2000
    assert all(3_000 < f.stat().st_size < 7_000 for f in files[:50])
    assert cached_dataset("tiny-2000-seed2", lambda d: pytest.fail("rebuilt")) == source

    sink = Storescp(tmp_path / "sink", aet="SINK")
    modalities = {"sink": ("SINK", LOOPBACK, sink.port)}
    with sink, Orthanc(tmp_path / "orthanc", modalities=modalities) as orthanc:
        assert orthanc.proc is not None
        pid = orthanc.proc.pid
        assert {addr for addr, _ in listening_sockets(pid)} == {"127.0.0.1"}
        result = storescu(files, port=orthanc.dicom_port, aec=orthanc.aet)
        assert result.ok, result.stderr[-2000:]
        assert result.succeeded == 2000
        assert orthanc.wait_for_instances(2000, timeout=30) == 2000
        assert len(orthanc.instances()) == 2000
        stats = orthanc.rest("GET", "/statistics")
        assert isinstance(stats, dict) and stats["CountStudies"] == 4
        first = orthanc.lookup(str(read_file_meta_info(files[0]).MediaStorageSOPInstanceUID))
        stored = tmp_path / "stored.dcm"
        stored.write_bytes(orthanc.instance_file(str(first[0]["ID"])))
        assert dataset_bytes(stored) == dataset_bytes(files[0])
        # DicomModalities works: Orthanc C-STOREs the instance on to the storescp sink.
        job = orthanc.rest(
            "POST", "/modalities/sink/store", {"Resources": [first[0]["ID"]], "Synchronous": True}
        )
        assert isinstance(job, dict) and job["InstancesCount"] == 1
        assert job["FailedInstancesCount"] == 0
        assert [dataset_bytes(f) for f in sink.files()] == [dataset_bytes(files[0])]
    _assert_gone(pid)


def test_multiframe_generator_streams_with_small_rss(tmp_path: Path) -> None:
    out = tmp_path / "multiframe.dcm"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tests.support.dicomgen import make_multiframe
        make_multiframe(Path({str(out)!r}), 210)
        status = Path("/proc/self/status").read_text()
        print(next(line for line in status.splitlines() if line.startswith("VmHWM")))
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            cwd=dicomgen.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        peak_kib = int(proc.stdout.split()[-2])
        size = out.stat().st_size
        assert size >= 210 * 2**20
        assert peak_kib * 1024 < 150 * 2**20, f"peak RSS {peak_kib} KiB"
        header = pydicom.dcmread(out, stop_before_pixels=True)
        frame_bytes = header.Rows * header.Columns * header.BitsAllocated // 8
        length = dicomgen.pixel_data_length(out)
        assert length is not None and length == int(header.NumberOfFrames) * frame_bytes
        # Pixel Data is the last element: its 12-byte OW header sits right before the frames.
        with open(out, "rb") as fh:
            fh.seek(size - length - 12)
            element = fh.read(12)
        assert element == struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
        assert not list(tmp_path.glob("*.partial"))
    finally:
        out.unlink(missing_ok=True)


@pytest.mark.dcmtk
def test_pydicom_test_files_cover_transfer_syntaxes_and_pass_storescp(tmp_path: Path) -> None:
    files = pydicom_test_files()
    assert files == sorted(files)
    names = {f.name for f in files}
    assert {"chrH31.dcm", "chrX1.dcm", "chrRuss.dcm", "CT_small.dcm"} <= names
    uids = [str(read_file_meta_info(f).MediaStorageSOPInstanceUID) for f in files]
    assert len(uids) == len(set(uids))
    covered = transfer_syntaxes_covered(files)
    assert len(covered) >= 8
    assert {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        RLELossless,
    } <= covered

    sendable = [f for f in files if f.name not in DCMTK_CANNOT_SEND]
    with Storescp(tmp_path / "received") as scp:
        result = storescu(sendable, port=scp.port, aec=scp.aet)
        failures = {p.name: why for p, why in result.failed_files.items()}
        assert result.ok, failures
        assert result.succeeded + result.warnings == len(sendable)
        received = scp.files()
    assert len(received) == len(sendable)
    # Every object arrived in the transfer syntax it was stored in (storescu did not convert).
    sent_ts = {
        uid: str(read_file_meta_info(f).TransferSyntaxUID)
        for uid, f in zip(uids, files, strict=True)
    }
    for path in received:
        meta = read_file_meta_info(path)
        assert str(meta.TransferSyntaxUID) == sent_ts[str(meta.MediaStorageSOPInstanceUID)]
    # No byte-exact check here: storescu parses and re-encodes each data set, which changes
    # pydicom files with undefined-length sequences/items or group length elements (about 20 of
    # them). Generated data (test above) has neither and goes through byte-exact.


@pytest.mark.dcmtk
def test_storescu_splits_associations_and_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend an association holds only 3 presentation contexts to exercise the batching.
    monkeypatch.setattr(peers, "_MAX_PRESENTATION_CONTEXTS", 3)
    files = [f for f in pydicom_test_files() if f.name not in DCMTK_CANNOT_SEND][:40]
    pairs = {
        (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
        for m in map(read_file_meta_info, files)
    }
    not_dicom = tmp_path / "not-dicom.txt"
    not_dicom.write_text("hello")
    with Storescp(tmp_path / "received") as scp:
        result = storescu([*files, files[0], not_dicom], port=scp.port)
        received = scp.files()
    assert len(result.commands) >= len(pairs) / 3
    assert result.succeeded + result.warnings == len(files) + 1  # files[0] went twice
    assert result.failed == 1 and set(result.failed_files) == {not_dicom}
    assert not result.ok
    assert len(received) == len(files) + 1


def test_require_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require("sh")
    monkeypatch.delenv(REQUIRE_PEERS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require("waystation-no-such-binary")
    monkeypatch.setenv(REQUIRE_PEERS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_PEERS_ENV):
        require("waystation-no-such-binary")
    assert os.environ[REQUIRE_PEERS_ENV] == "1"
