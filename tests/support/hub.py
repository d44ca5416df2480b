"""Helpers for hub tests: an in-process hub on loopback, a unit spool holding objects, and
raw requests for hostile-input tests."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from router.config.model import Config, HubDestination, SpoolConfig
from router.core.objects import PlannedDelivery, Source
from router.hub.service import Hub
from router.ingest.attributes import read_attributes
from router.spool.spool import HeldObject, Spool

SOURCE = Source("MODALITY", "WAYSTATION", "127.0.0.1")


def hub_config(directory: Path, *, extra: dict[str, Any] | None = None, port: int = 0) -> Config:
    """A hub configuration: plain HTTP on loopback (tests only), its own spool."""
    raw: dict[str, Any] = {
        "spool": {
            "path": str(directory / "hub-spool"),
            "min_free": 0,
            "key_file": str(directory / "hub.keys"),
        },
        "hub": {"listen": f"127.0.0.1:{port}", "insecure_plain_http": True, "request_timeout": 3.0},
    }
    for key, value in (extra or {}).items():
        raw[key] = value
    return Config.model_validate(raw)


def start_hub(config: Config) -> Hub:
    """Start a hub in this process."""
    hub = Hub(config)
    hub.start()
    return hub


def unit_spool(directory: Path) -> Spool:
    """A unit's spool (no daemon)."""
    return Spool(SpoolConfig(path=directory / "unit-spool", min_free=0))


def hold(
    spool: Spool, data: bytes, destination: str = "hub", priority: str = "routine"
) -> HeldObject:
    """Store ``data`` (a Part 10 file) in the unit's spool, routed to ``destination``."""
    incoming = spool.begin()
    incoming.write(data)
    incoming.finish()
    with incoming.reader() as reader:
        attributes = read_attributes(
            reader,  # type: ignore[arg-type]
            command_sop_class="",
            command_sop_instance="",
        )
    result = spool.store(
        incoming,
        attributes,
        SOURCE,
        [PlannedDelivery(destination, "all", priority)],  # type: ignore[arg-type]
    )
    held = spool.get(result.object_id)
    assert held is not None
    return held


def hub_destination(url: str, token_file: Path, **extra: Any) -> HubDestination:
    """A `type = "hub"` destination."""
    plain = {"insecure_plain_http": True} if url.startswith("http://") else {}
    return HubDestination.model_validate(
        {"name": "hub", "type": "hub", "url": url, "token_file": str(token_file), **plain, **extra}
    )


def request(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One raw request to the hub; (status, headers lower-cased, JSON body or {})."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"Tus-Resumable": "1.0.0", "Content-Length": str(len(body)), **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body or None, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
        return response.status, got, (json.loads(raw) if raw else {})
    finally:
        conn.close()


def hub_objects(hub: Hub) -> list[HeldObject]:
    """The objects the hub holds."""
    return list(hub.spool.held_objects(("held",)))


def plaintext(spool: Spool, held: HeldObject) -> bytes:
    """The decrypted bytes of a held object."""
    with spool.open_object(held) as reader:
        return reader.read()


def make_objects(
    directory: Path, count: int, *, size: int = 512, modality: str = "CT", seed: int = 0
) -> list[Path]:
    """``count`` Part 10 files of about ``size`` KiB (random pixels: they do not compress),
    each with its own SOP Instance UID, in one study."""
    import os
    import random

    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    template = dcmread(str(get_testdata_file("CT_small.dcm")))
    rng = random.Random(seed)
    study = generate_uid(entropy_srcs=[f"study-{seed}-{modality}"])
    side = max(16, int((size * 1024 / 2) ** 0.5))
    paths = []
    for index in range(count):
        ds = template.copy()
        ds.Modality = modality
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series-{seed}-{modality}"])
        sop = generate_uid(entropy_srcs=[f"sop-{seed}-{modality}-{index}"])
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.Rows = ds.Columns = side
        ds.PixelData = rng.randbytes(side * side * 2) if size else os.urandom(0)
        path = directory / f"{modality}-{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def hub_destination_toml(port: int, token_file: Path, **extra: object) -> str:
    """A `type = "hub"` ``[[destinations]]`` table for write_config(destinations=...)."""
    lines = [
        'name = "hub"',
        'type = "hub"',
        f'url = "http://127.0.0.1:{port}"',
        "insecure_plain_http = true",
        f'token_file = "{token_file}"',
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    return "\n[[destinations]]\n" + "\n".join(lines) + "\n"


def unit_journal_rows(config: Path, query: str) -> list[tuple[Any, ...]]:
    """Rows from a router's journal, read-only (the router may be running)."""
    import sqlite3

    journal = config.parent / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        return list(conn.execute(query))


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (the certificate is its own CA)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "waystation test hub")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "hub-cert.pem", directory / "hub-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
