"""STOW-RS decisions (router/core/stow.py): the Store Instances Response parser, each
object's verdict from the server's answer, request planning and Retry-After."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from router.core.retry import classify
from router.core.stow import (
    Item,
    StoreResponse,
    outcomes_for,
    parse_store_response,
    plan_requests,
    retry_after_seconds,
    split,
)

A, B, C = "1.2.3.1", "1.2.3.2", "1.2.3.3"
REQUEST = [Item(f"obj-{uid[-1]}", 1000, "1.2.3", uid, 2) for uid in (A, B, C)]


def _sequence(*items: dict[str, object]) -> dict[str, object]:
    return {"vr": "SQ", "Value": list(items)}


def _ref(uid: str, tag: str | None = None, code: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
        "00081190": {"vr": "UR", "Value": [f"https://pacs/studies/1.2.3/instances/{uid}"]},
    }
    if tag:
        item[tag] = {"vr": "US", "Value": [code]}
    return item


def _json(referenced: list[dict[str, object]], failed: list[dict[str, object]]) -> bytes:
    document: dict[str, object] = {"00081190": {"vr": "UR", "Value": ["https://pacs/studies"]}}
    if referenced:
        document["00081199"] = _sequence(*referenced)
    if failed:
        document["00081198"] = _sequence(*failed)
    return json.dumps(document).encode()


_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.1</Value></DicomAttribute>
    </Item>
    <Item number="2">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.2</Value></DicomAttribute>
      <DicomAttribute tag="00081196" vr="US"><Value number="1">45056</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3.3</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">49152</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>
"""

WARNING, FAILURE = "00081196", "00081197"
JSON = "application/dicom+json"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        # 200: everything stored; a WarningReason is still a delivery.
        (200, JSON, _json([_ref(A), _ref(B, WARNING, 0xB000), _ref(C)], []),
         {A: ("delivered", "delivered"), B: ("delivered", "warning 0xB000"),
          C: ("delivered", "delivered")}),
        # 200 with no body at all: the status says all were stored.
        (200, JSON, b"", {A: ("delivered", ""), B: ("delivered", ""), C: ("delivered", "")}),
        # 202 partial success: stored, out of resources (retried), not understood (operator).
        (202, JSON, _json([_ref(A)], [_ref(B, FAILURE, 0xA700), _ref(C, FAILURE, 0xC000)]),
         {A: ("delivered", "delivered"), B: ("transient", "out of storage space"),
          C: ("permanent", "could not understand the image (0xC000)")}),
        # 202: SOP class not supported, data set not matching: permanent; unmentioned: again.
        (202, JSON, _json([], [_ref(A, FAILURE, 0x0122), _ref(B, FAILURE, 0xA900)]),
         {A: ("permanent", "does not support this kind of image"),
          B: ("permanent", "does not match its type (0xA900)"),
          C: ("transient", "did not answer")}),
        # A duplicate SOP Instance (a re-send after a lost answer) is already delivered.
        (409, JSON, _json([], [_ref(A, FAILURE, 0x0111), _ref(B, FAILURE, 0xA7FE)]),
         {A: ("delivered", "held this object already"), B: ("transient", "busy"),
          C: ("permanent", "refused to store the object (HTTP 409")}),
        # 409 with nothing readable: all refused, waiting for an operator.
        (409, "text/html", b"<html>conflict</html>",
         {A: ("permanent", "HTTP 409"), B: ("permanent", "HTTP 409"),
          C: ("permanent", "HTTP 409")}),
        # XML answers are read too.
        (202, "application/dicom+xml", _XML,
         {A: ("delivered", "delivered"), B: ("delivered", "warning 0xB000"),
          C: ("permanent", "0xC000")}),
        # Whole-request answers.
        (503, "text/plain", b"x", {u: ("transient", "busy or having trouble") for u in (A, B, C)}),
        (429, JSON, b"", {u: ("transient", "busy or having trouble") for u in (A, B, C)}),
        (408, JSON, b"", {u: ("transient", "busy or having trouble") for u in (A, B, C)}),
        (507, JSON, b"", {u: ("transient", "out of storage space") for u in (A, B, C)}),
        (401, JSON, b"", {u: ("permanent", "refuses our credentials") for u in (A, B, C)}),
        (403, JSON, b"", {u: ("permanent", "refuses our credentials") for u in (A, B, C)}),
        (413, JSON, b"", {u: ("permanent", "refuses an object this large") for u in (A, B, C)}),
        (400, JSON, b"", {u: ("permanent", "refused the object (HTTP 400") for u in (A, B, C)}),
        (404, JSON, b"", {u: ("permanent", "refused the object (HTTP 404") for u in (A, B, C)}),
        (415, JSON, b"", {u: ("permanent", "refused the object (HTTP 415") for u in (A, B, C)}),
    ],
)  # fmt: skip
def test_each_object_gets_the_servers_verdict(
    status: int, content_type: str, body: bytes, expected: dict[str, tuple[str, str]]
) -> None:
    response = parse_store_response(content_type, body)
    outcomes = outcomes_for(REQUEST, status, response, detail=f"HTTP {status}")
    assert set(outcomes) == {item.object_id for item in REQUEST}
    for item in REQUEST:
        verdict = classify(outcomes[item.object_id], destination="cloud", unit_ae="W", dest_ae="c")
        want_verdict, words = expected[item.instance_uid]
        assert verdict.verdict == want_verdict, (item.instance_uid, verdict)
        assert words in verdict.reason, (item.instance_uid, verdict.reason)
        assert item.instance_uid not in verdict.reason  # no UIDs in reasons people read


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b"null", b'{"00081199": "nonsense"}', b'{"00081199": {"Value": [1, "x"]}}'],
)
def test_an_unreadable_body_never_raises(body: bytes) -> None:
    response = parse_store_response(JSON, body)
    assert response.stored == {} and response.failed == {}
    # Unreadable with 202: nothing is taken as delivered; everything goes again.
    outcomes = outcomes_for(REQUEST, 202, response)
    verdicts = {
        classify(o, destination="d", unit_ae="W", dest_ae="d").verdict for o in outcomes.values()
    }
    assert verdicts <= {"transient"}


def test_a_json_array_wrapper_and_hex_codes_are_accepted() -> None:
    body = json.dumps([{"00081198": _sequence({
        "00081155": {"vr": "UI", "Value": [A]}, "00081197": {"vr": "US", "Value": ["0xA700"]}
    })}]).encode()  # fmt: skip
    assert parse_store_response(JSON, body) == StoreResponse(failed={A: 0xA700})


def _items(spec: list[tuple[str, int, int]]) -> list[Item]:
    """(study, size, priority) per object, UIDs numbered."""
    return [
        Item(f"o{i}", size, study, f"9.{i}", prio) for i, (study, size, prio) in enumerate(spec)
    ]


def test_requests_are_per_study_within_the_limits() -> None:
    items = _items([("S1", 100, 2), ("S2", 100, 2), ("S1", 100, 2), ("S1", 100, 2),
                    ("S2", 900, 2), ("S1", 5000, 2), ("S1", 100, 2)])  # fmt: skip
    plan = plan_requests(items, max_bytes=1000, max_instances=3, per_study=True)
    ids = [[item.object_id for item in request] for request in plan]
    # S1: three fit; the 5000-byte object goes alone; the last follows. S2: 100 + 900 fit.
    assert ids == [["o0", "o2", "o3"], ["o5"], ["o6"], ["o1", "o4"]]


def test_priorities_never_share_a_request_and_the_most_urgent_goes_first() -> None:
    items = _items([("S1", 10, 0), ("S1", 10, 0), ("S1", 10, 3), ("S2", 10, 3)])
    plan = plan_requests(items, max_bytes=1000, max_instances=10, per_study=False)
    assert [[i.object_id for i in r] for r in plan] == [["o0", "o1"], ["o2", "o3"]]


def test_a_repeated_instance_uid_goes_in_another_request() -> None:
    items = [Item("a", 10, "S", "9.9", 2), Item("b", 10, "S", "9.9", 2)]
    plan = plan_requests(items, max_bytes=1000, max_instances=10, per_study=True)
    assert [[i.object_id for i in r] for r in plan] == [["a"], ["b"]]


def test_split_halves_a_request() -> None:
    assert split([1, 2, 3, 4, 5]) == ([1, 2], [3, 4, 5])
    assert split([1]) == ([1], [])


NOW = dt.datetime(2026, 11, 28, 1, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Sat, 28 Nov 2026 01:00:30 GMT", 30.0),
        ("Sat, 28 Nov 2026 00:59:00 GMT", 0.0),  # in the past: at once
        ("999999999", 86_400.0),  # capped at a day
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_in_seconds_or_as_a_date(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, NOW) == seconds
