"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles) for both roles: contexts, identities, expiry.

Both contexts allow TLS 1.2 and 1.3 only (1.3 is chosen whenever the peer has it), and for
TLS 1.2 only forward-secret AEAD suites (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305): no
RC4, 3DES, CBC, static RSA key exchange or anonymous suites. Compression and renegotiation
are off (Python's defaults). Certificates, keys and CA files are paths, so the certificate
made at commissioning (appliance/) is used by pointing the configuration at it.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

# TLS 1.2 suites allowed (TLS 1.3's own suites are all AEAD and forward secret).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(
    cert: Path, key: Path, ca: Path | None = None, *, require_client_cert: bool = False
) -> ssl.SSLContext:
    """The receiver's context. With ``ca`` a client certificate is verified when offered;
    with ``require_client_cert`` a caller without one is refused in the handshake.

    Raises OSError or ssl.SSLError for unreadable or mismatched files."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    verify: bool = True,
) -> ssl.SSLContext:
    """The sender's context: the server's certificate and name verified against ``ca`` (or
    the system's CAs) unless ``verify`` is False; ``cert``/``key`` for mutual TLS."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if verify:
        if ca is not None:
            context.load_verify_locations(cafile=ca)
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def peer_identities(sock: ssl.SSLSocket) -> frozenset[str]:
    """The verified peer certificate as the identities ``ae_certificates`` may name:
    ``CN=<common name>`` for each common name and ``sha256:<hex fingerprint>``. Empty when
    the peer sent no certificate."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return frozenset()
    identities = {"sha256:" + hashlib.sha256(der).hexdigest()}
    for attribute in x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    ):
        identities.add(f"CN={attribute.value!s}")
    return frozenset(identities)


def identity_allowed(identities: frozenset[str], allowed: Iterable[str]) -> bool:
    """True when one of the peer's identities is among ``allowed`` (fingerprints compared
    without colons and case)."""
    wanted = {_normalise(entry) for entry in allowed}
    return any(_normalise(identity) in wanted for identity in identities)


def _normalise(identity: str) -> str:
    if identity.lower().startswith("sha256:"):
        return "sha256:" + identity[7:].replace(":", "").lower()
    return identity


def days_to_expiry(cert: Path, now: datetime.datetime | None = None) -> float:
    """Days until the (first) certificate in ``cert`` expires; negative once expired.

    Raises OSError or ValueError when the file cannot be read as a PEM certificate."""
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    current = now or datetime.datetime.now(datetime.UTC)
    return (certificate.not_valid_after_utc - current).total_seconds() / 86400
