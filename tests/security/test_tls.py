"""DICOM TLS against real peers: pynetdicom and DCMTK into the router, the router into DCMTK
storescp; downgrades, plaintext callers, untrusted certificates and AE-title binding refused,
with the service going on for legitimate callers."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import router_port
from tests.security.conftest import closed_within
from tests.support import dicomgen
from tests.support.certs import Issued, TestCA
from tests.support.peers import Storescp, storescu
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    destination_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)
from tests.support.sender import send
from tests.unit.test_ingest_protocol import CT, EXPLICIT, _request

ACSE_TIMEOUT = 3.0


@dataclass
class Pki:
    ca: TestCA
    unit: Issued
    ct1: Issued
    ct2: Issued
    rogue: Issued  # "ct1" again, signed by a CA the router does not trust

    def client(self, who: Issued | None, *, trust: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(trust or self.ca.cert))
        if who is not None:
            context.load_cert_chain(who.cert, who.key)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCA(tmp_path / "pki")
    rogue_ca = TestCA(tmp_path / "rogue", name="Rogue CA")
    return Pki(ca, ca.issue("waystation"), ca.issue("ct1"), ca.issue("ct2"), rogue_ca.issue("ct1"))


def _tls_table(pki: Pki, warning_days: int = 30) -> str:
    return (
        f'\n[ingest.tls]\ncert = "{pki.unit.cert}"\nkey = "{pki.unit.key}"\nca = "{pki.ca.cert}"\n'
        f"require_client_cert = true\nexpiry_warning_days = {warning_days}\n"
        'ae_certificates = { CT1 = ["CN=ct1"] }\n'
    )


@pytest.fixture
def tls_router(tmp_path: Path, pki: Pki) -> Iterator[RouterProcess]:
    config = write_config(tmp_path, port=free_port())
    text = config.read_text().replace(
        "max_pdu = 262144", f"max_pdu = 262144\nacse_timeout = {ACSE_TIMEOUT}"
    )
    # Certificate valid for 365 days, warned 400 days ahead: the health item must warn.
    config.write_text(text.replace("[spool]", _tls_table(pki, 400) + "\n[spool]"))
    with RouterProcess(config) as proc:
        yield proc


def _files(tmp_path: Path, name: str, count: int = 3) -> list[Path]:
    return dicomgen.make_tiny_objects(tmp_path / name, count=count)


def test_mutual_tls_from_pynetdicom_stores_and_shows_expiry(
    tls_router: RouterProcess, pki: Pki, tmp_path: Path
) -> None:
    files = _files(tmp_path, "a")
    result = send(files, router_port(tls_router), calling_ae="CT1", tls=pki.client(pki.ct1))
    assert result.error is None and result.acknowledged == files
    # A caller not bound in ae_certificates may use any certificate the CA signed.
    other = _files(tmp_path, "b")
    result = send(other, router_port(tls_router), calling_ae="CT2", tls=pki.client(pki.ct2))
    assert result.acknowledged == other
    health = {item.name: item for item in tls_router.client().status().health}
    assert health["tls certificate"].state == "warn"
    assert "expires in 364 days" in health["tls certificate"].detail


def test_tls_13_is_preferred_and_12_still_accepted(tls_router: RouterProcess, pki: Pki) -> None:
    port = router_port(tls_router)
    for maximum, expected in ((None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
        context = pki.client(pki.ct1)
        if maximum is not None:
            context.maximum_version = maximum
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        ) as sock:
            assert sock.version() == expected
            cipher = sock.cipher()
            assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])


def test_tls_11_downgrade_is_refused(tls_router: RouterProcess, pki: Pki, tmp_path: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.load_cert_chain(pki.ct1.cert, pki.ct1.key)
    raw = socket.create_connection(("127.0.0.1", router_port(tls_router)), timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        context.wrap_socket(raw)
    raw.close()
    assert tls_router.log_shows("TLS handshake with 127.0.0.1 refused")
    files = _files(tmp_path, "after")
    assert send(files, router_port(tls_router), calling_ae="CT1", tls=pki.client(pki.ct1))
    assert (
        send(files, router_port(tls_router), calling_ae="CT1", tls=pki.client(pki.ct1)).acknowledged
        == files
    )


def test_plaintext_client_is_refused_and_service_continues(
    tls_router: RouterProcess, pki: Pki, tmp_path: Path
) -> None:
    port = router_port(tls_router)
    # A plaintext DICOM caller: its A-ASSOCIATE-RQ is not a TLS ClientHello.
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_request([(1, CT, [EXPLICIT])]))
    closed, answer = closed_within(sock, ACSE_TIMEOUT + 5)
    sock.close()
    assert closed and not answer.startswith(b"\x02")  # never an A-ASSOCIATE-AC
    # pynetdicom without TLS gets no association either.
    files = _files(tmp_path, "plain")
    assert send(files, port, calling_ae="CT1", timeout=10).error is not None
    # A silent connection (nothing sent, not even a ClientHello) is cut at the ACSE deadline.
    started = time.monotonic()
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    closed, _ = closed_within(idle, ACSE_TIMEOUT + 10)
    idle.close()
    assert closed and time.monotonic() - started < ACSE_TIMEOUT + 8
    good = _files(tmp_path, "good")
    result = send(good, port, calling_ae="CT1", tls=pki.client(pki.ct1))
    assert result.acknowledged == good


def test_untrusted_or_missing_client_certificate_is_refused(
    tls_router: RouterProcess, pki: Pki, tmp_path: Path
) -> None:
    port = router_port(tls_router)
    files = _files(tmp_path, "x")
    for context in (pki.client(pki.rogue), pki.client(None)):
        result = send(files, port, calling_ae="CT2", tls=context, timeout=10)
        assert result.error is not None and not result.acknowledged
    good = _files(tmp_path, "good")
    assert send(good, port, calling_ae="CT1", tls=pki.client(pki.ct1)).acknowledged == good


def test_ae_title_is_bound_to_its_certificate(tls_router: RouterProcess, pki: Pki) -> None:
    port = router_port(tls_router)
    context = pki.client(pki.ct2)  # trusted, but not the certificate bound to CT1
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
    ) as sock:
        sock.sendall(_request([(1, CT, [EXPLICIT])], calling="CT1"))
        answer = sock.recv(64)
    assert answer[0] == 0x03, "expected A-ASSOCIATE-RJ"
    assert tuple(answer[7:10]) == (1, 1, 3)  # permanent, service user, calling AE not recognised
    assert tls_router.log_shows("its certificate is not one bound to that AE title")


def test_revoked_certificates_are_refused_and_a_new_list_applies_without_restart(
    tmp_path: Path, pki: Pki
) -> None:
    crl = pki.ca.crl([pki.ct2])
    config = write_config(tmp_path, port=free_port())
    table = _tls_table(pki) + f'crl = "{crl}"\n'
    config.write_text(config.read_text().replace("[spool]", table + "\n[spool]"))
    with RouterProcess(config) as router:
        port = router_port(router)
        files = _files(tmp_path, "ok")
        assert send(files, port, calling_ae="CT1", tls=pki.client(pki.ct1)).acknowledged == files
        refused = send(_files(tmp_path, "revoked"), port, calling_ae="CT2", tls=pki.client(pki.ct2))
        assert refused.error is not None and not refused.acknowledged
        assert router.log_shows("TLS handshake with 127.0.0.1 refused")
        health = {item.name: item for item in router.client().status().health}
        assert health["tls revocation list"].state == "ok"
        assert "next update due in 7.0 days" in health["tls revocation list"].detail
        # The CA publishes a new list that also revokes ct1: no restart needed.
        pki.ca.crl([pki.ct1, pki.ct2])
        time.sleep(1.5)  # the file is looked at once a second at most
        later = send(_files(tmp_path, "later"), port, calling_ae="CT1", tls=pki.client(pki.ct1))
        assert later.error is not None and not later.acknowledged
        # A list left out of date refuses everyone (fail closed) and the console says so.
        pki.ca.crl([], next_update_days=-0.5)
        time.sleep(1.5)
        stale = send(_files(tmp_path, "stale"), port, calling_ae="CT1", tls=pki.client(pki.ct1))
        assert stale.error is not None and not stale.acknowledged
        health = {item.name: item for item in router.client().status().health}
        assert health["tls revocation list"].state == "fault"
        assert "every TLS caller is refused" in health["tls revocation list"].detail
        # A fresh list: service again.
        pki.ca.crl([])
        time.sleep(1.5)
        back = _files(tmp_path, "back")
        assert send(back, port, calling_ae="CT1", tls=pki.client(pki.ct1)).acknowledged == back


def test_dcmtk_storescu_over_mutual_tls(
    tls_router: RouterProcess, pki: Pki, tmp_path: Path
) -> None:
    files = _files(tmp_path, "dcmtk", count=5)
    result = storescu(
        files,
        port=router_port(tls_router),
        aet="CT1",
        aec="WAYSTATION",
        extra_args=["+tls", str(pki.ct1.key), str(pki.ct1.cert), "+cf", str(pki.ca.cert)],
    )
    assert result.ok, result.stdout + result.stderr
    assert result.succeeded == 5


def test_router_delivers_to_storescp_over_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    files = _files(tmp_path, "out", count=4)
    scp_cert = pki.ca.issue("pacs")
    tls_args = ["+tls", str(scp_cert.key), str(scp_cert.cert), "+cf", str(pki.ca.cert)]
    with Storescp(tmp_path / "scp", extra_args=tls_args) as scp:
        tls = (
            f'{{ ca = "{pki.ca.cert}", cert = "{pki.unit.cert}", key = "{pki.unit.key}", '
            'server_name = "localhost" }'
        )
        config = write_config(
            tmp_path,
            port=free_port(),
            destinations=destination_toml("pacs", "STORESCP", scp.port, tls=tls)
            + route_toml("all", "pacs"),
        )
        with RouterProcess(config) as proc:
            assert send(files, router_port(proc)).acknowledged == files
            assert wait_for(lambda: delivery_states(config).get("delivered", 0) == len(files))
            assert len(scp.wait_for_files(len(files))) == len(files)


def test_router_refuses_a_destination_whose_certificate_it_does_not_trust(
    tmp_path: Path, pki: Pki
) -> None:
    rogue = TestCA(tmp_path / "rogue-pacs", name="Other CA").issue("pacs")
    tls_args = ["+tls", str(rogue.key), str(rogue.cert), "+cf", str(pki.ca.cert)]
    with Storescp(tmp_path / "scp", extra_args=tls_args) as scp:
        tls = f'{{ ca = "{pki.ca.cert}", server_name = "localhost" }}'
        config = write_config(
            tmp_path,
            port=free_port(),
            destinations=destination_toml("pacs", "STORESCP", scp.port, tls=tls)
            + route_toml("all", "pacs"),
        )
        with RouterProcess(config) as proc:
            echo = proc.client(timeout=60).echo("pacs")
            assert not echo.ok
            assert "TLS certificate not trusted" in echo.message, echo.message
            assert scp.files() == []
