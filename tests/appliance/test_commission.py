"""Commissioning: keys, certificate, C-ECHO per destination, and the report (HTML + text)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.commission import commission, load
from router.config import load_config
from router.spool import keys
from tests.support.peers import free_port
from tests.support.router_proc import destination_toml, waystation


@pytest.fixture
def echo_scp() -> Iterator[int]:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    yield port
    server.shutdown()


def _config(tmp_path: Path, good_port: int) -> Path:
    path = tmp_path / "state" / "waystation.toml"
    path.parent.mkdir()
    path.write_text(
        f"""
[unit]
name = "clinic-a"
ae_title = "CLINIC_A_WS"
[ingest]
listen = "127.0.0.1:{free_port()}"
[spool]
path = "spool"
[delivery]
connect_timeout = "2 s"
response_timeout = "2 s"
{destination_toml("pacs", "PACS", good_port)}
{destination_toml("archive", "ARCHIVE", free_port())}
"""
    )
    return path


def test_commissioning_report(tmp_path: Path, echo_scp: int) -> None:
    path = _config(tmp_path, echo_scp)
    report = commission(path)
    config = load_config(path)
    # The keys the router will use, and a certificate with its private key kept 0600.
    keyring = keys.load(config.spool.resolved_key_file, "aes-256-gcm")
    assert report.key_fingerprint == keys.fingerprint(keyring)
    assert (config.state_dir / "tls" / "unit.key").stat().st_mode & 0o077 == 0
    assert len(report.certificate_fingerprint.split(":")) == 32
    results = {t.name.split(" (")[0]: t for t in report.tests}
    assert results["C-ECHO pacs"].passed
    assert not results["C-ECHO archive"].passed
    assert "no success" in results["C-ECHO archive"].detail
    assert all(t.started_at <= t.finished_at for t in report.tests)
    assert not report.passed

    directory = config.state_dir / "commissioning"
    text = (directory / "report.txt").read_text()
    html = (directory / "report.html").read_text()
    for document in (text, html):
        assert "clinic-a" in document and "CLINIC_A_WS" in document
        assert report.config_fingerprint in document
        assert report.key_fingerprint in document
        assert report.certificate_fingerprint in document
        assert "Signature" in document
    assert "[PASS] C-ECHO pacs" in text and "[FAIL] C-ECHO archive" in text
    assert "SOME TESTS FAILED" in text
    assert "<script" not in html
    # No secret ever reaches the report.
    secret = json.loads(config.spool.resolved_key_file.read_text())["index_secret"]
    assert secret not in text and secret not in html
    assert load(directory) == report


def test_commission_cli_and_report_again(tmp_path: Path, echo_scp: int) -> None:
    path = _config(tmp_path, echo_scp)
    first = waystation("commission", "--config", str(path))
    assert first.returncode == 1  # the archive does not answer
    assert "[PASS] C-ECHO pacs" in first.stdout
    again = waystation("commission", "--config", str(path), "--report")
    assert again.returncode == 0
    assert again.stdout.startswith("WAYSTATION COMMISSIONING REPORT")
    assert "report.html" in again.stdout
    # Commissioning again keeps the keys and the certificate peers have pinned.
    before = load(path.parent / "commissioning")
    waystation("commission", "--config", str(path))
    after = load(path.parent / "commissioning")
    assert after.key_fingerprint == before.key_fingerprint
    assert after.certificate_fingerprint == before.certificate_fingerprint


def test_report_before_commissioning_says_so(tmp_path: Path, echo_scp: int) -> None:
    path = _config(tmp_path, echo_scp)
    result = waystation("commission", "--config", str(path), "--report")
    assert result.returncode == 1 and "not commissioned yet" in result.stderr
