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
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

log = logging.getLogger("waystation.tls")

# TLS 1.2 suites allowed (TLS 1.3's own suites are all AEAD and forward secret).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(
    cert: Path,
    key: Path,
    ca: Path | None = None,
    *,
    require_client_cert: bool = False,
    crl: Path | None = None,
) -> ssl.SSLContext:
    """The receiver's context. With ``ca`` a client certificate is verified when offered;
    with ``require_client_cert`` a caller without one is refused in the handshake. With
    ``crl`` (PEM, from the CA that signs callers' certificates) a revoked caller's certificate
    is refused too - and so is every caller's once that list is out of date (fail closed).

    Raises OSError or ssl.SSLError for unreadable or mismatched files."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    if crl is not None:
        x509.load_pem_x509_crl(crl.read_bytes())  # a clear error for a file that is not one
        context.load_verify_locations(cafile=crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


class ReloadingContext:
    """A context built again whenever a watched file changes (the revocation list, which a
    CA publishes anew every few days): the file is looked at, at most once a second, when a
    caller connects, so replacing it takes effect without a restart. A replacement that
    cannot be loaded keeps the last good context and says so in the log."""

    def __init__(self, build: Callable[[], ssl.SSLContext], watched: Path | None) -> None:
        self._build = build
        self._watched = watched
        self._seen = _signature(watched)
        self._context = build()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> ssl.SSLContext:
        """The context for the next handshake."""
        if self._watched is None:
            return self._context
        with self._lock:
            now = time.monotonic()
            if now - self._checked < 1.0:
                return self._context
            self._checked = now
            seen = _signature(self._watched)
            if seen != self._seen:
                self._seen = seen
                try:
                    self._context = self._build()
                    log.info("TLS: %s changed; loaded again", self._watched.name)
                except (OSError, ValueError, ssl.SSLError) as exc:
                    log.error(
                        "TLS: %s changed but cannot be loaded (%s); the previous one stays "
                        "in force",
                        self._watched.name,
                        type(exc).__name__,
                    )
            return self._context


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return (0, 0, 0)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def crl_days_left(crl: Path, now: datetime.datetime | None = None) -> float:
    """Days until the revocation list in ``crl`` is due to be replaced (its next update);
    negative once out of date.

    Raises OSError or ValueError when the file cannot be read as a PEM CRL."""
    revocations = x509.load_pem_x509_crl(crl.read_bytes())
    due = revocations.next_update_utc
    if due is None:
        return float("inf")
    current = now or datetime.datetime.now(datetime.UTC)
    return (due - current).total_seconds() / 86400


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
