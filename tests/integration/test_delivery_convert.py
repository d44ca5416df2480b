"""Lossless conversion when a destination does not accept an object's transfer syntax, a clear
permanent failure when conversion would not be lossless, and governed tag changes."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import _config

from tests.support import dicomgen
from tests.support.router_proc import (
    RouterProcess,
    destination_toml,
    free_port,
    route_toml,
    wait_for,
    waystation,
    write_config,
)
from tests.support.scripted_scp import ScriptedSCP
from tests.support.sender import send


def journal_rows(config: Path, query: str) -> list[tuple[object, ...]]:
    journal = config.parent / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        return list(conn.execute(query))


def unit(tmp_path: Path, pacs_port: int, changes: str = "") -> tuple[Path, int]:
    port = free_port()
    (tmp_path / "unit").mkdir()
    config = write_config(
        tmp_path / "unit",
        port=port,
        destinations=destination_toml("pacs", "PACS", pacs_port)
        + changes
        + route_toml("all", "pacs"),
    )
    return config, port


def test_converted_losslessly_when_the_original_syntax_is_refused(tmp_path: Path) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    ct = dicomgen.make_ct_series(tmp_path / "ct", count=3)  # Explicit VR Little Endian
    jpeg = Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    with ScriptedSCP(ae_title="PACS", transfer_syntaxes=[ImplicitVRLittleEndian]) as pacs:
        config, port = unit(tmp_path, pacs.port)
        with RouterProcess(config):
            assert send([*ct, jpeg], port).acknowledged == [*ct, jpeg]
            assert wait_for(
                lambda: (
                    len(
                        journal_rows(
                            config,
                            "SELECT 1 FROM deliveries WHERE state IN ('delivered', 'failed')",
                        )
                    )
                    == 4
                )
            )
        received = pacs.received()
        for path in ct:
            original = dcmread(path)
            item = received[str(original.SOPInstanceUID)]
            assert item.transfer_syntax == ImplicitVRLittleEndian
            copy = dcmread(io.BytesIO(item.data), force=True)
            copy.file_meta = original.file_meta.copy()
            copy.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            assert copy.PixelData == original.PixelData
            assert copy.PatientID == original.PatientID
        [(state, error)] = journal_rows(
            config,
            "SELECT d.state, d.last_error FROM deliveries d JOIN objects o ON o.id = d.object_id"
            " WHERE o.transfer_syntax LIKE '1.2.840.10008.1.2.4.%'",
        )
        assert state == "failed"
        assert "only as Little Endian" in str(error) and "not supported" in str(error)
        details = [
            json.loads(str(r[0]))
            for r in journal_rows(config, "SELECT detail FROM history WHERE event = 'delivered'")
        ]
        assert all(d["converted_to"] == ImplicitVRLittleEndian for d in details)


def test_tag_changes_apply_to_the_copy_sent_and_are_recorded(tmp_path: Path) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    ct = dicomgen.make_ct_series(tmp_path / "ct", count=2)
    changes = """
[destinations.changes]
set = { InstitutionName = "Hill Clinic" }
remove = ["ReferringPhysicianName"]
map.Modality = { "CT" = "OT" }
"""
    with ScriptedSCP(ae_title="PACS") as pacs:
        config, port = unit(tmp_path, pacs.port, changes)
        with RouterProcess(config):
            assert send(ct, port).acknowledged == ct
            assert wait_for(lambda: len(pacs.received()) == 2)
        for path in ct:
            original = dcmread(path)
            copy = dcmread(
                io.BytesIO(pacs.received()[str(original.SOPInstanceUID)].data), force=True
            )
            assert copy.InstitutionName == "Hill Clinic"
            assert "ReferringPhysicianName" not in copy
            assert copy.Modality == "OT"
            assert copy.PixelData == original.PixelData
        details = [
            json.loads(str(r[0]))
            for r in journal_rows(config, "SELECT detail FROM history WHERE event = 'delivered'")
        ]
        assert all(
            d["changed"] == ["InstitutionName", "ReferringPhysicianName", "Modality"]
            for d in details
        )
        out = tmp_path / "export"
        done = waystation("spool", "export", "--config", str(config), "--out", str(out))
        assert done.returncode == 0
        exported = {p.stem: p for p in out.rglob("*.dcm")}
        for path in ct:  # the spool keeps the original bytes
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert dicomgen.dataset_sha256(exported[uid]) == dicomgen.dataset_sha256(path)
