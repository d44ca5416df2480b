"""DICOM TLS settings, contexts, certificate identities and the expiry health item."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from router.config import load_config
from router.control.certificates import certificate_health
from router.dicom import tls
from router.errors import ConfigError
from tests.support.certs import TestCA


def _config(tmp_path: Path, ingest_tls: str = "", destination_tls: str = "") -> Path:
    path = tmp_path / "waystation.toml"
    path.write_text(
        f"""
[ingest]
listen = "127.0.0.1:11112"
{ingest_tls}

[spool]
path = "spool"

[[destinations]]
name = "pacs"
type = "dimse"
ae_title = "PACS"
host = "127.0.0.1"
port = 104
{destination_tls}
"""
    )
    return path


def test_tls_files_resolve_against_the_configuration_folder(tmp_path: Path) -> None:
    config = load_config(
        _config(
            tmp_path,
            '[ingest.tls]\ncert = "tls/unit.crt"\nkey = "tls/unit.key"\nca = "tls/ca.pem"\n'
            'require_client_cert = true\nae_certificates = { CT1 = ["CN=ct1"] }',
            'tls = { ca = "tls/pacs-ca.pem", server_name = "pacs.local" }',
        )
    )
    assert config.ingest.tls is not None
    assert config.ingest.tls.cert == tmp_path / "tls" / "unit.crt"
    assert config.ingest.tls.expiry_warning_days == 30
    destination_tls = config.destinations[0].tls
    assert destination_tls is not None and destination_tls.verify
    assert destination_tls.ca == tmp_path / "tls" / "pacs-ca.pem"


@pytest.mark.parametrize(
    ("ingest_tls", "destination_tls", "expected"),
    [
        ('[ingest.tls]\ncert = "a"\nkey = "b"\nrequire_client_cert = true', "", "need ca"),
        (
            '[ingest.tls]\ncert = "a"\nkey = "b"\nca = "c"\nae_certificates = { CT1 = ["ct1"] }',
            "",
            "neither",
        ),
        ('[ingest.tls]\ncert = "a"\nkey = "b"\ncrl = "c"', "", "need ca"),
        ("", 'tls = { cert = "a" }', "cert and key go together"),
        ("", 'tls = { server_nam = "x" }', "server_name"),
    ],
)
def test_bad_tls_settings_are_explained(
    tmp_path: Path, ingest_tls: str, destination_tls: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, ingest_tls, destination_tls))
    assert expected in str(caught.value)


def test_contexts_allow_tls12_and_13_only(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    unit = ca.issue("unit")
    server = tls.server_context(unit.cert, unit.key, ca.cert, require_client_cert=True)
    client = tls.client_context(ca.cert)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        suites = {c["name"] for c in context.get_ciphers()}
        assert not any("CBC" in s or "RC4" in s or "3DES" in s or "SHA1" in s for s in suites)
        assert all(
            c["protocol"] == "TLSv1.3" or c["kea"] in ("kx-ecdhe", "kx-dhe")
            for c in context.get_ciphers()
        )
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_identity_matching_accepts_common_names_and_fingerprints() -> None:
    identities = frozenset({"CN=ct1", "sha256:abcdef01"})
    assert tls.identity_allowed(identities, ["CN=ct1"])
    assert tls.identity_allowed(identities, ["sha256:AB:CD:EF:01"])
    assert not tls.identity_allowed(identities, ["CN=ct2", "sha256:abcdef02"])
    assert not tls.identity_allowed(frozenset(), ["CN=ct1"])


def test_certificate_expiry_is_a_health_item_warned_weeks_ahead(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    soon = ca.issue("soon", days=10)
    later = ca.issue("later", days=200)
    path = _config(
        tmp_path,
        f'[ingest.tls]\ncert = "{soon.cert}"\nkey = "{soon.key}"\nexpiry_warning_days = 14',
        f'tls = {{ ca = "{ca.cert}", cert = "{later.cert}", key = "{later.key}" }}',
    )
    items = {item.name: item for item in certificate_health(load_config(path))}
    assert items["tls certificate"].state == "warn"
    assert "expires in 9 days" in items["tls certificate"].detail
    assert items["tls certificate (pacs)"].state == "ok"

    in_a_year = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    expired = {i.name: i for i in certificate_health(load_config(path), in_a_year)}
    assert expired["tls certificate"].state == "fault"
    assert "expired" in expired["tls certificate"].detail

    later.cert.write_text("not a certificate")
    broken = {i.name: i for i in certificate_health(load_config(path))}
    assert broken["tls certificate (pacs)"].state == "fault"


def test_the_revocation_list_is_a_health_item_warned_before_it_falls_due(
    tmp_path: Path,
) -> None:
    ca = TestCA(tmp_path)
    unit = ca.issue("unit")
    crl = ca.crl([], next_update_days=3)
    path = _config(
        tmp_path,
        f'[ingest.tls]\ncert = "{unit.cert}"\nkey = "{unit.key}"\nca = "{ca.cert}"\ncrl = "{crl}"',
    )
    now = datetime.datetime.now(datetime.UTC)

    def item(at: datetime.datetime) -> tuple[str, str]:
        [found] = [i for i in certificate_health(load_config(path), at) if "revocation" in i.name]
        return found.state, found.detail

    assert item(now) == ("ok", "next update due in 3.0 days")
    state, detail = item(now + datetime.timedelta(days=2.5))
    assert state == "warn" and "falls due in 12 hours" in detail
    state, detail = item(now + datetime.timedelta(days=4))
    assert state == "fault" and "every TLS caller is refused" in detail
    crl.write_text("not a list")
    assert item(now)[0] == "fault"


def test_a_revocation_list_is_enforced_and_a_bad_one_refused_at_start(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    unit = ca.issue("unit")
    context = tls.server_context(unit.cert, unit.key, ca.cert, crl=ca.crl([]))
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    (tmp_path / "junk.pem").write_text("not a list")
    with pytest.raises(ValueError):
        tls.server_context(unit.cert, unit.key, ca.cert, crl=tmp_path / "junk.pem")


def test_a_replacement_list_that_cannot_be_loaded_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    ca = TestCA(tmp_path)
    unit = ca.issue("unit")
    crl = ca.crl([])
    built = []

    def build() -> ssl.SSLContext:
        context = tls.server_context(unit.cert, unit.key, ca.cert, crl=crl)
        built.append(context)
        return context

    reloading = tls.ReloadingContext(build, crl)
    first = reloading.current()
    crl.write_text("half a file")
    reloading._checked -= 2  # as if a second had passed
    assert reloading.current() is first and len(built) == 1
    ca.crl([ca.issue("gone")])
    reloading._checked -= 2
    assert reloading.current() is not first and len(built) == 2


def test_no_tls_no_certificate_items(tmp_path: Path) -> None:
    assert certificate_health(load_config(_config(tmp_path))) == []
