"""The hub protocol's pure parts: metadata, lengths, checksums, tokens; chunk sizing; how a
hub's HTTP answers are classified."""

from __future__ import annotations

import base64
import hashlib

import pytest

from router.core.retry import Outcome, classify
from router.hub import protocol as p
from router.hub.tokens import mint, token_hash
from router.wan.chunking import ChunkSizer

META = p.UploadMetadata("1.2.3.4", "1.2.3", "1.2.3.5", "ab" * 32)


def test_metadata_round_trips_and_the_envelope_is_named() -> None:
    assert p.parse_metadata(META.header()) == META
    enveloped = p.UploadMetadata(*list(META.__dict__.values())[:4], encoding=p.ENVELOPE)
    assert p.parse_metadata(enveloped.header()).encoding == "wsev1"


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (None, "is required"),
        ("sop MS4y", "lacks study, series, sha256"),
        ("sop !!!,study MQ==,series MQ==,sha256 MQ==", "not base64"),
        (META.header().replace("sop ", "sop Li4v,x "), "not a valid DICOM UID"),
        (META.header() + ",encoding " + base64.b64encode(b"gzip").decode(), "encoding"),
    ],
)
def test_bad_metadata_is_refused_in_words(header: str | None, words: str) -> None:
    with pytest.raises(p.ProtocolError, match=words):
        p.parse_metadata(header)


def test_uids_are_never_paths() -> None:
    for bad in ("../1", "1/2", "1.2\x00", "1" * 65, "", "1..2"):
        with pytest.raises(p.ProtocolError):
            p.check_uid(bad, "sop")
    assert p.check_uid("1.2.840.10008", "sop") == "1.2.840.10008"


def test_lengths_are_bounded_decimal_integers() -> None:
    assert p.parse_length("42", "Upload-Length", 100) == 42
    for bad in (None, "-1", "1e3", " 4", "0x10", "9" * 30):
        with pytest.raises(p.ProtocolError):
            p.parse_length(bad, "Upload-Length", 10**40)
    with pytest.raises(p.ProtocolError, match="over the limit"):
        p.parse_length("101", "Upload-Length", 100)


def test_checksums_tokens_and_retry_after() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert p.parse_checksum(p.checksum_header(digest)) == digest
    assert p.parse_checksum(None) is None
    with pytest.raises(p.ProtocolError, match="only sha256"):
        p.parse_checksum("md5 AAAA")
    assert p.bearer_token("Bearer abc") == "abc"
    assert p.bearer_token("Basic abc") is None
    assert p.bearer_token(None) is None
    assert p.retry_after_seconds("30") == 30.0
    assert p.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    token = mint()
    assert token.startswith("wst_") and len(token) > 40 and mint() != token
    assert token_hash(token) == hashlib.sha256(token.encode()).digest()


def test_chunks_are_about_eight_seconds_of_link_within_bounds() -> None:
    sizer = ChunkSizer(256 * 1024, 8 * 1024 * 1024)
    assert sizer.next_size() == 256 * 1024  # unknown link: the minimum
    sizer.observe(250_000, 1.0)  # 2 Mbit/s
    assert sizer.next_size() == 2_000_000 // 65536 * 65536
    for _ in range(50):
        sizer.observe(100_000_000, 1.0)  # a LAN
    assert sizer.next_size() == 8 * 1024 * 1024
    for _ in range(50):
        sizer.observe(1_000, 1.0)  # a dying link
    assert sizer.next_size() == 256 * 1024


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "delivered"), (408, "transient"), (429, "transient"), (500, "transient"),
     (503, "transient"), (507, "transient"), (400, "permanent"), (413, "permanent"),
     (422, "permanent")],
)  # fmt: skip
def test_hub_answers_are_classified(status: int, verdict: str) -> None:
    outcome = Outcome("http", status=status, detail="the hub's words")
    found = classify(outcome, destination="hub", unit_ae="U", dest_ae="hub")
    assert found.verdict == verdict
    if verdict != "delivered":
        assert "the hub's words" in found.reason


def test_a_refused_token_says_what_to_do() -> None:
    outcome = Outcome("hub-token", status=403, detail="this unit's token was revoked")
    found = classify(outcome, destination="hub", unit_ae="U", dest_ae="hub")
    assert found.verdict == "permanent"
    assert "revoked" in found.reason and "enrol the unit again" in found.reason


def test_the_console_words_a_hub_link_and_its_receipts() -> None:
    from router.control.schema import DestinationView
    from tui.wording import hub_link

    view = DestinationView(
        name="provider", kind="hub", state="down", since=0.0, link="down", at_hub=2,
        at_provider=1,
    )  # fmt: skip
    assert hub_link(view) == (
        "Link down. 1 object delivered to the provider; 2 at the hub, not yet at the "
        "provider's PACS."
    )
    assert hub_link(view.model_copy(update={"kind": "dimse"})) == ""
