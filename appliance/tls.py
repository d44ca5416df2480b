"""The unit's TLS identity for DICOM TLS and the hub: a self-signed ECDSA P-256 certificate.

Self-signed on purpose: a clinic has no CA; the hub and PACS pin the certificate's
fingerprint, which the commissioning report prints."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from router.spool.fsio import atomic_write, make_dirs

VALID_DAYS = 3650


def ensure_certificate(directory: Path, unit_name: str, addresses: list[str]) -> Path:
    """Create ``unit.key`` (0600) and ``unit.crt`` in ``directory`` unless both exist; returns
    the certificate's path. An existing pair is kept: peers have pinned it."""
    key_path, cert_path = directory / "unit.key", directory / "unit.crt"
    if key_path.exists() and cert_path.exists():
        return cert_path
    make_dirs(directory, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_name)])
    alternatives: list[x509.GeneralName] = [x509.DNSName(unit_name)]
    for address in addresses:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            alternatives.append(x509.DNSName(address))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path


def certificate_fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate (DER), colon-separated as browsers and openssl print it."""
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
