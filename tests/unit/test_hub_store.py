"""The hub's store and configuration without the network: schema migration, recovery of
segments past the durable offset, configuration checks, the CLI's enrol and revoke."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from router.config.model import Config, HubDestination, HubServerConfig, SpoolConfig
from router.hub.protocol import UploadMetadata
from router.hub.store import HubStore, OffsetConflict, TooLarge
from router.spool.journal import Journal
from router.spool.spool import Spool

CT = Path(str(get_testdata_file("CT_small.dcm")))
REPO = Path(__file__).resolve().parents[2]


def _spool(tmp_path: Path) -> Spool:
    return Spool(SpoolConfig(path=tmp_path / "spool", min_free=0))


def _meta(data: bytes) -> UploadMetadata:
    from pydicom import dcmread

    ds = dcmread(CT)
    return UploadMetadata(
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        hashlib.sha256(data).hexdigest(),
    )


def test_a_version_3_journal_is_migrated_to_4(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        for table in ("hub_uploads", "hub_units", "hub_incoming", "hub_commits", "hub_manifests"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE journal_meta SET value = '3' WHERE key = 'schema'")
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM journal_meta WHERE key='schema'").fetchone() == (
            "4",
        )
        conn.execute("SELECT object_id, url, confirmed, state FROM hub_uploads").fetchall()
        conn.execute("SELECT sop_tag, digest FROM hub_commits").fetchall()


def test_segments_past_the_durable_offset_are_dropped_at_start(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    store = HubStore(spool, planner=lambda a, s: [])
    data = CT.read_bytes()
    upload = store.create("CLINIC1", len(data), _meta(data)).upload
    assert store.append("CLINIC1", upload.id, 0, data[:1000], None) == 1000
    # A crash after a segment's rename, before the journal recorded its offset:
    stray = store.root / upload.id / f"{1000:020d}.seg"
    stray.write_bytes(b"never confirmed")
    (store.root / ("0" * 32)).mkdir()  # an upload the journal does not know
    store.recover()
    assert not stray.exists() and not (store.root / ("0" * 32)).exists()
    assert (store.root / upload.id / f"{0:020d}.seg").exists()
    with pytest.raises(OffsetConflict) as conflict:
        store.append("CLINIC1", upload.id, 2000, data[2000:3000], None)
    assert conflict.value.offset == 1000
    with pytest.raises(TooLarge):
        store.append("CLINIC1", upload.id, 1000, data[1000:] + b"extra", None)
    store.append("CLINIC1", upload.id, 1000, data[1000:], None)
    committed = store.commit("CLINIC1", upload.id, "127.0.0.1")
    assert not committed.already
    assert not (store.root / upload.id).exists()  # segments gone once committed
    held = spool.get(committed.object_id)
    assert held is not None
    with spool.open_object(held) as reader:
        assert reader.read() == data
    spool.close()


def test_hub_configuration_is_checked() -> None:
    with pytest.raises(ValidationError, match="tls_cert and tls_key"):
        HubServerConfig()
    assert HubServerConfig(insecure_plain_http=True).port == 8443
    hub = HubDestination.model_validate(
        {"name": "hub", "type": "hub", "url": "https://hub.example.org:8443",
         "token_file": "hub.token", "max_chunk": "4 MiB", "rate": {"cap": "2 Mbit/s"}}
    )  # fmt: skip
    # One delivery thread per upload stream; 8 streams unless configured.
    assert hub.max_chunk == 4 * 1024 * 1024 and hub.associations == hub.streams == 8
    with pytest.raises(ValidationError):
        HubDestination.model_validate(
            {"name": "hub", "type": "hub", "url": "https://hub.example.org:8443",
             "token_file": "hub.token", "streams": 0}
        )  # fmt: skip
    with pytest.raises(ValidationError):
        HubDestination.model_validate(
            {"name": "hub", "type": "hub", "url": "https://hub/path", "token_file": "t"}
        )
    # Plain HTTP only when the destination says so, in words that name the switch.
    with pytest.raises(ValidationError, match="insecure_plain_http = true"):
        HubDestination.model_validate(
            {"name": "hub", "type": "hub", "url": "http://127.0.0.1:1", "token_file": "t"}
        )
    config = Config.model_validate(
        {"destinations": [{"name": "hub", "type": "hub", "url": "http://127.0.0.1:1",
                           "insecure_plain_http": True, "token_file": "hub.token"}]}
    ).resolve_paths(Path("/etc/waystation"))  # fmt: skip
    [resolved] = config.destinations
    assert isinstance(resolved, HubDestination)
    assert resolved.token_file == Path("/etc/waystation/hub.token")


def test_hub_enrol_revoke_and_list_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[spool]\npath = "{tmp_path / "spool"}"\nmin_free = 0\n'
        f'key_file = "{tmp_path / "hub.keys"}"\n'
        '[hub]\nlisten = "127.0.0.1:0"\ninsecure_plain_http = true\n'
    )

    def hub(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "router.cli", "hub", "--config", str(config), *args],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    enrolled = hub("enroll", "CLINIC1")
    assert enrolled.returncode == 0, enrolled.stderr
    token = enrolled.stdout.strip()
    assert token.startswith("wst_") and "shown only this once" in enrolled.stderr
    assert hub("enroll", "../x").returncode != 0
    assert hub("revoke", "CLINIC1").returncode == 0
    assert hub("revoke", "NOBODY").returncode == 1
    listed = hub("units")
    assert "CLINIC1" in listed.stdout and "revoked" in listed.stdout
    status = hub("status")
    assert status.returncode == 0, status.stderr
    assert "CLINIC1" in status.stdout and "0 announced" in status.stdout
    with sqlite3.connect(tmp_path / "spool" / "journal.sqlite") as conn:
        stored = conn.execute("SELECT token_hash FROM hub_units").fetchone()[0]
    assert token.encode() not in stored and stored == hashlib.sha256(token.encode()).digest()
