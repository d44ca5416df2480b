"""Hostile peers (RELIABILITY.md's list) against one real router: during each attack the
router stays up, a legitimate sender is still served, its resident memory stays bounded, and
nothing acknowledged is lost. Cases already in tests/integration/test_ingest_protocol.py
(4 GiB PDU, trickled request, idle sockets, oversize P-DATA, protocol violations, cut-off
object) are not repeated here."""

from __future__ import annotations

import io
import sqlite3
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from tests.integration.conftest import router_port
from tests.integration.test_ingest_protocol import _rss_kib
from tests.security.conftest import closed_within
from tests.security.rawpeer import RawPeer
from tests.support import dicomgen
from tests.support.router_proc import RouterProcess, free_port, waystation, write_config
from tests.support.sender import send
from tests.unit.test_ingest_protocol import CT, EXPLICIT, IMPLICIT, _request
from tests.unit.test_sequence_depth import nested

DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_OBJECT = 1024 * 1024
MAX_DEPTH = 32
ACCEPTED, REJECTED, ABORTED = 0x02, 0x03, 0x07


@pytest.fixture(scope="module")
def hostile_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """One router for every attack (so memory growth across them shows): 6 slots, at most 2
    per caller address, objects up to 1 MiB."""
    directory = tmp_path_factory.mktemp("hostile")
    config = write_config(directory, port=free_port())
    config.write_text(
        config.read_text().replace(
            "max_pdu = 262144",
            "max_pdu = 262144\nacse_timeout = 3\nnetwork_timeout = 5\nmax_associations = 6\n"
            f"max_associations_per_peer = 2\nmax_object_size = {MAX_OBJECT}\n"
            f"max_sequence_depth = {MAX_DEPTH}",
        )
    )
    with RouterProcess(config) as proc:
        proc.rss_at_start = _rss_kib(proc)  # type: ignore[attr-defined]
        yield proc
        # Every attack together may not have grown the router by more than 64 MiB.
        grown = _rss_kib(proc) - proc.rss_at_start  # type: ignore[attr-defined]
        assert grown < 64 * 1024, f"resident memory grew by {grown} KiB"


def _served(proc: RouterProcess, tmp_path: Path, name: str) -> None:
    files = dicomgen.make_tiny_objects(tmp_path / name, count=2)
    result = send(files, router_port(proc), timeout=30)
    assert result.error is None and result.acknowledged == files


def _dataset(**attributes: object) -> Dataset:
    warnings.simplefilter("ignore")  # pydicom warns about the hostile values set on purpose
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.Modality = "CT"
    ds.PatientName = "Test^Hostile"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _explicit(ds: Dataset) -> bytes:
    data = encode(ds, False, True)
    assert data is not None
    return data


def _store_one(proc: RouterProcess, syntax: str, data: bytes, instance: str = "1.2.3.4.5") -> int:
    peer = RawPeer(router_port(proc))
    try:
        assert peer.associate([(1, CT, [syntax])])[:1] == bytes([ACCEPTED])
        return peer.store(1, CT, instance, data)
    finally:
        peer.close()


def test_one_address_cannot_take_every_slot(hostile_router: RouterProcess, tmp_path: Path) -> None:
    port = router_port(hostile_router)
    attackers = [RawPeer(port, source="127.0.0.2") for _ in range(6)]
    answers = []
    for peer in attackers:
        try:
            answers.append(peer.associate([(1, CT, [EXPLICIT])])[:1])
        except OSError:
            answers.append(b"")
    # Two associations from 127.0.0.2; its other connections are closed at once.
    assert answers.count(bytes([ACCEPTED])) == 2, answers
    assert answers.count(b"") == 4
    _served(hostile_router, tmp_path, "during")  # from 127.0.0.1, while the attack holds
    for peer in attackers:
        peer.close()


def _even_context_id() -> bytes:
    """A request whose one presentation context has ID 2 (pynetdicom will not build one)."""
    request = bytearray(_request([(1, CT, [EXPLICIT])]))
    application_length = struct.unpack(">H", request[76:78])[0]
    context_item = 74 + 4 + application_length
    assert request[context_item] == 0x20
    request[context_item + 4] = 2
    return bytes(request)


@pytest.mark.parametrize(
    "request_pdu",
    [
        _request([(2 * (i % 128) + 1, CT, [EXPLICIT]) for i in range(300)]),
        _request([(1, CT, [EXPLICIT]), (1, CT, [IMPLICIT])]),
        _even_context_id(),
    ],
    ids=["300-contexts", "duplicate-ids", "even-id"],
)
def test_bad_presentation_contexts_are_refused(
    hostile_router: RouterProcess, tmp_path: Path, request_pdu: bytes
) -> None:
    peer = RawPeer(router_port(hostile_router))
    answer = peer.send_request(request_pdu)
    closed, _ = closed_within(peer.sock, 5)
    peer.close()
    assert answer[:1] in (bytes([REJECTED]), bytes([ABORTED])) and closed, answer[:10]
    _served(hostile_router, tmp_path, "after")


@pytest.mark.parametrize(
    ("offset", "title"),
    [
        (26, b"\x00" * 16),
        (26, b"\xff" * 16),
        (26, b"CT\\1" + b" " * 12),
        (26, b" " * 16),
        (10, b"WAY\x07STATION" + b" " * 5),
    ],
    ids=["calling-nul", "calling-8bit", "calling-backslash", "calling-blank", "called-bell"],
)
def test_bad_ae_titles_are_rejected(
    hostile_router: RouterProcess, tmp_path: Path, offset: int, title: bytes
) -> None:
    request = bytearray(_request([(1, CT, [EXPLICIT])]))
    request[offset : offset + 16] = title
    peer = RawPeer(router_port(hostile_router))
    answer = peer.send_request(bytes(request))
    peer.close()
    assert answer[:1] in (bytes([REJECTED]), bytes([ABORTED])), answer[:10]
    if answer[:1] == bytes([REJECTED]):
        assert answer[7:10] in (bytes([1, 1, 3]), bytes([1, 1, 7]))
    _served(hostile_router, tmp_path, "after")


def _bytes_with_meta_of_another_syntax() -> bytes:
    """A whole Part 10 file (preamble, DICM, file meta saying Implicit VR) sent as the data
    set of an Explicit VR context, its body encoded Implicit."""
    body = encode(_dataset(), True, True)
    assert body is not None
    meta = struct.pack("<HH2sHI", 0x0002, 0x0010, b"UI", 0, 0)  # contradicting file meta
    return b"\x00" * 128 + b"DICM" + meta + body


def _deep_sequence(depth: int) -> bytes:
    head = _explicit(_dataset())
    nest = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return head + nest * depth + close * depth


def _element(group: int, element: int, vr: bytes, length: int, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, length) + value


@pytest.mark.parametrize(
    ("syntax", "data"),
    [
        (EXPLICIT, encode(_dataset(), True, True)),  # Implicit bytes on an Explicit context
        (EXPLICIT, _bytes_with_meta_of_another_syntax()),
        (EXPLICIT, _deep_sequence(5000)),
        # an undefined length on an element that cannot have one
        (
            EXPLICIT,
            _explicit(_dataset()) + struct.pack("<HH2sHI", 0x0010, 0x1000, b"UN", 0, 2**32 - 1),
        ),
        # a value length running past the end of the data set
        (EXPLICIT, _explicit(_dataset()) + _element(0x0010, 0x1001, b"LO", 0x7000, b"x" * 9)),
    ],
    ids=[
        "implicit-as-explicit",
        "contradicting-meta",
        "deep-nesting",
        "undefined-length",
        "overrun",
    ],
)
def test_malformed_data_sets_are_refused_and_nothing_is_kept(
    hostile_router: RouterProcess, tmp_path: Path, syntax: str, data: bytes
) -> None:
    before = _held(hostile_router)
    status = _store_one(hostile_router, syntax, data)
    assert status in (0xC210, -1), hex(status)  # refused (or aborted): never acknowledged
    assert _held(hostile_router) == before
    _served(hostile_router, tmp_path, "after")


@pytest.mark.parametrize(
    ("syntax", "undefined"),
    [(EXPLICIT, False), (EXPLICIT, True), (IMPLICIT, False), (IMPLICIT, True)],
    ids=["explicit-defined", "explicit-undefined", "implicit-defined", "implicit-undefined"],
)
def test_sequences_nested_over_the_limit_are_refused_and_the_association_goes_on(
    hostile_router: RouterProcess, syntax: str, undefined: bool
) -> None:
    explicit = syntax == EXPLICIT

    def deep(instance: str, depth: int) -> bytes:
        head = encode(_dataset(SOPInstanceUID=instance), not explicit, True)
        assert head is not None
        return head + nested(depth, explicit=explicit, undefined=undefined, lead=False)

    before = _held(hostile_router)
    base = f"1.2.3.4.20.{int(explicit)}{int(undefined)}"
    peer = RawPeer(router_port(hostile_router))
    try:
        assert peer.associate([(1, CT, [syntax])])[:1] == bytes([ACCEPTED])
        assert peer.store(1, CT, base + ".1", deep(base + ".1", MAX_DEPTH + 1)) == 0xC210
        # Defined lengths once went through (pydicom reads those lazily): 2000 deep.
        assert peer.store(1, CT, base + ".2", deep(base + ".2", 2000)) == 0xC210
        # The same association goes on; an object at the limit is stored.
        assert peer.store(1, CT, base + ".3", deep(base + ".3", MAX_DEPTH)) == 0x0000
    finally:
        peer.close()
    assert _held(hostile_router) == before + 1
    assert hostile_router.log_shows("could not be decoded (sequences nested too deep)")


def test_odd_value_length_is_tolerated_or_refused_never_crashes(
    hostile_router: RouterProcess, tmp_path: Path
) -> None:
    data = _explicit(_dataset()) + _element(0x0010, 0x1002, b"LO", 3, b"abc")
    status = _store_one(hostile_router, EXPLICIT, data, instance="1.2.3.4.6")
    assert status in (0x0000, 0xC210), hex(status)
    _served(hostile_router, tmp_path, "after")


def test_a_deflate_bomb_is_held_compressed_and_inflated_only_in_part(
    hostile_router: RouterProcess, tmp_path: Path
) -> None:
    # 1 GiB of zeros in Pixel Data behind a valid header: about 1 MiB on the wire.
    header = _explicit(_dataset(SOPInstanceUID="1.2.3.4.7"))
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = io.BytesIO()
    stream.write(
        deflater.compress(header + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 2**30))
    )
    zeros = bytes(16 * 1024 * 1024)
    for _ in range(64):
        stream.write(deflater.compress(zeros))
    stream.write(deflater.flush())
    bomb = stream.getvalue()
    assert len(bomb) < MAX_OBJECT
    rss_before = _rss_kib(hostile_router)
    status = _store_one(hostile_router, DEFLATED, bomb, instance="1.2.3.4.7")
    assert status == 0x0000, hex(status)  # held as sent (compressed); header read in part
    assert _rss_kib(hostile_router) - rss_before < 128 * 1024
    # Zeros all the way: no header at all within the inflation limit.
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    nothing = b"".join(deflater.compress(zeros) for _ in range(16)) + deflater.flush()
    assert _store_one(hostile_router, DEFLATED, nothing) in (0xC210, -1)
    assert _rss_kib(hostile_router) - rss_before < 128 * 1024
    _served(hostile_router, tmp_path, "after")


def test_an_object_over_max_object_size_is_refused_and_the_association_goes_on(
    hostile_router: RouterProcess,
) -> None:
    before = _held(hostile_router)
    big = (
        _explicit(_dataset(SOPInstanceUID="1.2.3.4.8"))
        + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 2 * MAX_OBJECT)
        + bytes(2 * MAX_OBJECT)
    )
    peer = RawPeer(router_port(hostile_router))
    try:
        assert peer.associate([(1, CT, [EXPLICIT])])[:1] == bytes([ACCEPTED])
        assert peer.store(1, CT, "1.2.3.4.8", big) == 0xA700
        small = _explicit(_dataset(SOPInstanceUID="1.2.3.4.9"))
        assert peer.store(1, CT, "1.2.3.4.9", small) == 0x0000
    finally:
        peer.close()
    assert _held(hostile_router) == before + 1
    spool = hostile_router.config.parent / "spool"
    assert not list(spool.rglob("*.part"))


@pytest.mark.parametrize(
    "uid",
    ["../../../../tmp/evil", "/etc/passwd", "1.2.3\x00/../x", "1." + "2" * 70],
    ids=["dotdot", "absolute", "nul", "over-64"],
)
def test_hostile_uids_never_become_paths(
    hostile_router: RouterProcess, tmp_path: Path, uid: str
) -> None:
    data = _explicit(_dataset(SOPInstanceUID=uid, StudyInstanceUID=uid))
    status = _store_one(hostile_router, EXPLICIT, data, instance=uid)
    assert status in (0x0000, 0xC210), hex(status)
    spool = hostile_router.config.parent / "spool"
    names = [p.name for p in spool.rglob("*")]
    assert not any("evil" in n or "passwd" in n or "222222" in n for n in names)
    out = tmp_path / "export"
    result = waystation(
        "spool", "export", "--config", str(hostile_router.config), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        assert "evil" not in path.name and "passwd" not in path.name and "\x00" not in path.name
    assert not Path("/tmp/evil").exists()


def _held(proc: RouterProcess) -> int:
    journal = proc.config.parent / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM objects").fetchone()[0])
