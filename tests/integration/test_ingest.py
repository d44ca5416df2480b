"""Ingest over real sockets: DCMTK and pynetdicom senders, every status the SCP can answer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.integration.conftest import router_port
from tests.support import dicomgen
from tests.support.router_proc import RouterProcess, free_port, waystation, write_config
from tests.support.sender import send


@pytest.fixture(autouse=True)
def stream_from_files() -> None:
    # Send each file's bytes as they are on disk (no decode and re-encode by the sender),
    # so the spool's copy can be compared byte for byte.
    _config.STORE_SEND_CHUNKED_DATASET = True


def export_all(proc: RouterProcess, out: Path, *extra: str) -> dict[str, Path]:
    done = waystation("spool", "export", "--config", str(proc.config), "--out", str(out), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.stem: p for p in out.rglob("*.dcm")}


def verify_ok(proc: RouterProcess) -> str:
    done = waystation("spool", "verify", "--config", str(proc.config))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_pydicom_test_files_in_many_syntaxes_are_held_byte_exact(
    router: RouterProcess, tmp_path: Path
) -> None:
    files = dicomgen.pydicom_test_files()
    assert len(dicomgen.transfer_syntaxes_covered(files)) >= 8
    result = send(files, router_port(router))
    assert result.error is None
    assert result.acknowledged == files, {p.name: hex(s) for p, s in result.statuses.items()}
    exported = export_all(router, tmp_path / "out")
    for path in files:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dicomgen.dataset_bytes(exported[uid]) == dicomgen.dataset_bytes(path), path.name
    assert f"{len(files)} objects checked" in verify_ok(router)


@pytest.mark.dcmtk
def test_dcmtk_storescu_ct_series(router: RouterProcess, tmp_path: Path) -> None:
    series = dicomgen.make_ct_series(tmp_path / "ct", count=40)
    env = {**os.environ, "TCP_NODELAY": "1"}
    done = subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            "CT01",
            "-aec",
            "WAYSTATION",
            "127.0.0.1",
            str(router_port(router)),
            *map(str, series),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Received Store Response (Success)") == len(series)
    exported = export_all(router, tmp_path / "out")
    assert len(exported) == len(series)
    for path in series:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dcmread(exported[uid]).PixelData == dcmread(path).PixelData


def test_echo_and_allowed_callers(tmp_path: Path) -> None:
    config = write_config(tmp_path, port=free_port(), allowed_callers=("CT01",))
    with RouterProcess(config) as proc:
        port = router_port(proc)
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="WAYSTATION")
        assert assoc.is_rejected and not assoc.is_established
        ae = AE(ae_title="CT01")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="WAYSTATION")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()


def test_undecodable_data_set_is_answered_c210_and_not_held(
    router: RouterProcess, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    from pydicom.filewriter import write_file_meta_info

    with open(bad, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta)
        # (0008,0016) UI with a length far past the end of the data: not a data set.
        f.write(b"\x08\x00\x16\x00UI\xff\x7f" + b"1.2.3")
    result = send([bad], router_port(router))
    assert result.statuses[bad] == 0xC210
    good = dicomgen.pydicom_test_files()[:1]
    assert send(good, router_port(router)).acknowledged == good  # still serving
    assert "1 objects checked" in verify_ok(router)


def test_spool_below_min_free_refuses_with_a700_and_alarm(tmp_path: Path) -> None:
    config = write_config(tmp_path, port=free_port(), min_free="1000000 TiB")
    with RouterProcess(config) as proc:
        files = dicomgen.pydicom_test_files()[:2]
        result = send(files, router_port(proc))
        assert set(result.statuses.values()) == {0xA700}
    assert proc.log_shows("ALARM spool-full")
    assert not list((tmp_path / "spool" / "blobs").rglob("*.*"))


def test_resent_study_is_held_once(router: RouterProcess, tmp_path: Path) -> None:
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=20)
    port = router_port(router)
    assert send(files, port).acknowledged == files
    assert send(files, port).acknowledged == files
    assert "20 objects checked" in verify_ok(router)


def test_no_patient_data_in_plaintext_anywhere_on_the_unit(tmp_path: Path) -> None:
    patient = dicomgen.random_patient(seed=77)
    series = dicomgen.make_ct_series(tmp_path / "ct", count=5, patient=patient)
    tiny = dicomgen.make_tiny_objects(tmp_path / "tiny", count=10, patient=patient)
    config = (
        write_config(tmp_path / "unit", port=free_port())
        if (tmp_path / "unit").mkdir() is None
        else None
    )
    assert config is not None
    with RouterProcess(config) as proc:
        assert send(series + tiny, router_port(proc)).acknowledged == series + tiny
    needles = {patient.name.split("^")[0], patient.patient_id, patient.accession}
    uids = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in series}
    scanned = 0
    for path in (tmp_path / "unit").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            scanned += 1
            for needle in needles | uids:
                assert needle.encode() not in content, f"{needle} in plaintext in {path}"
    names = {p.name for p in (tmp_path / "unit").rglob("*") if p.is_file()}
    assert {"journal.sqlite", "unit.keys", "router.log"} <= names
    assert scanned == len(names)
    assert (tmp_path / "unit" / "router.log").stat().st_size > 0
