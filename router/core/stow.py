"""DICOMweb STOW-RS decisions (PS3.18 10.5): how objects are grouped into requests and what
the server's answer means for each object. Pure: no I/O, no clock (``now`` is passed in).

The per-object results are Outcomes for :func:`router.core.retry.classify`: a stored object
is kind "stored" (``status`` its WarningReason, if any); a failed one is kind "status" with
its FailureReason, so 0xA7xx is transient and 0xA9xx, 0xCxxx and 0x0122 are permanent, as
for C-STORE. A request the server refused as a whole is one outcome for all its objects.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from router.core.retry import Outcome

# PS3.18 Table 10.5.3-1 and PS3.6: the attributes of a Store Instances Response.
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
OTHER_FAILURES_SEQUENCE = "0008119A"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
# PS3.7 C-STORE status 0x0111 (Duplicate SOP Instance): the server holds this UID already.
# A re-send after a lost answer is exactly that, so it counts as delivered.
DUPLICATE_SOP_INSTANCE = 0x0111
_MAX_RETRY_AFTER = 86_400.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class Item:
    """One object to send: its id, size in bytes, study and SOP Instance UIDs, priority."""

    object_id: str
    size: int
    study_uid: str
    instance_uid: str
    priority: int


@dataclass(frozen=True)
class StoreResponse:
    """What a Store Instances Response body says, by SOP Instance UID."""

    stored: dict[str, int | None] = field(default_factory=dict)  # UID -> WarningReason
    failed: dict[str, int] = field(default_factory=dict)  # UID -> FailureReason
    readable: bool = True  # False: the body was missing or not understood


def plan_requests(
    items: Sequence[Item], *, max_bytes: int, max_instances: int, per_study: bool
) -> list[list[Item]]:
    """Group objects into requests, keeping the given order of first appearance (most urgent
    first). Per study when ``per_study``; a request stays within ``max_bytes`` and
    ``max_instances``; an object larger than ``max_bytes`` goes alone. A SOP Instance UID
    appears at most once per request, so every answer maps to one object."""
    groups: dict[tuple[int, str], list[Item]] = {}
    for item in items:
        # Never mix priorities: a bulk object must not ride (and delay) a STAT request.
        key = (item.priority, item.study_uid if per_study else "")
        groups.setdefault(key, []).append(item)
    requests: list[list[Item]] = []
    for group in groups.values():
        current: list[Item] = []
        size = 0
        for item in group:
            full = len(current) >= max_instances or (current and size + item.size > max_bytes)
            repeated = any(other.instance_uid == item.instance_uid for other in current)
            if current and (full or repeated):
                requests.append(current)
                current, size = [], 0
            current.append(item)
            size += item.size
        if current:
            requests.append(current)
    return requests


def split(request: Sequence[_T]) -> tuple[list[_T], list[_T]]:
    """Two halves of a request the server found too large (HTTP 413)."""
    half = max(1, len(request) // 2)
    return list(request[:half]), list(request[half:])


def parse_store_response(content_type: str, body: bytes) -> StoreResponse:
    """Read a Store Instances Response (application/dicom+json, or application/dicom+xml).

    Never raises: an empty or unreadable body gives ``readable=False``."""
    kind = content_type.split(";")[0].strip().lower()
    if not body.strip():
        return StoreResponse(readable=False)
    try:
        if kind.endswith("xml"):
            return _from_xml(body)
        return _from_json(body)
    except (ValueError, TypeError, KeyError, AttributeError, ElementTree.ParseError):
        return StoreResponse(readable=False)


def _from_json(body: bytes) -> StoreResponse:
    document = json.loads(body)
    if isinstance(document, list):  # some servers wrap the data set in an array
        document = document[0] if document else {}
    if not isinstance(document, dict):
        raise ValueError("not a DICOM JSON data set")
    response = StoreResponse()
    for entry in _json_items(document, REFERENCED_SOP_SEQUENCE):
        uid = _json_text(entry, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            response.stored[uid] = _json_int(entry, WARNING_REASON)
    for entry in _json_items(document, FAILED_SOP_SEQUENCE):
        uid = _json_text(entry, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            response.failed[uid] = _json_int(entry, FAILURE_REASON) or 0x0110
    return response


def _json_items(document: dict[str, object], tag: str) -> list[dict[str, object]]:
    element = document.get(tag) or document.get(tag.lower())
    if not isinstance(element, dict):
        return []
    value = element.get("Value") or []
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _json_text(entry: dict[str, object], tag: str) -> str:
    element = entry.get(tag)
    if not isinstance(element, dict) or not isinstance(element.get("Value"), list):
        return ""
    values = element["Value"]
    return str(values[0]).strip() if values else ""


def _json_int(entry: dict[str, object], tag: str) -> int | None:
    text = _json_text(entry, tag)
    return _as_int(text) if text else None


def _as_int(text: str) -> int:
    text = text.strip()
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def _from_xml(body: bytes) -> StoreResponse:
    root = ElementTree.fromstring(body)
    response = StoreResponse()
    for attribute in _xml_children(root):
        tag = attribute.get("tag", "").upper()
        if tag not in (REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE):
            continue
        for item in (child for child in attribute if _local(child.tag) == "Item"):
            values = {
                a.get("tag", "").upper(): _xml_value(a)
                for a in item
                if _local(a.tag) == "DicomAttribute"
            }
            uid = values.get(REFERENCED_SOP_INSTANCE_UID, "")
            if not uid:
                continue
            if tag == REFERENCED_SOP_SEQUENCE:
                warning = values.get(WARNING_REASON)
                response.stored[uid] = _as_int(warning) if warning else None
            else:
                reason = values.get(FAILURE_REASON)
                response.failed[uid] = _as_int(reason) if reason else 0x0110
    return response


def _xml_children(root: ElementTree.Element) -> list[ElementTree.Element]:
    return [child for child in root if _local(child.tag) == "DicomAttribute"]


def _xml_value(attribute: ElementTree.Element) -> str:
    for value in attribute:
        if _local(value.tag) == "Value":
            return (value.text or "").strip()
    return ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def outcomes_for(
    request: Sequence[Item],
    http_status: int,
    response: StoreResponse,
    *,
    detail: str = "",
    retry_after: float | None = None,
) -> dict[str, Outcome]:
    """Each object's outcome from the server's answer to ``request``.

    200 stores everything the body does not list as failed; 202 (some stored) and 409 (none)
    follow the body per object. An object a 202 leaves unmentioned is sent again later (a
    bounded duplicate at worst); on 409 it shares the request's refusal. Any other status is
    one outcome for all (see :func:`request_outcome`)."""
    if http_status == 202 and not response.readable:
        # Some were stored, but which? Sending all again costs at most this request's
        # duplicates; taking all as stored could lose some.
        again = Outcome("no-response", detail="the partial-success answer could not be read")
        return {item.object_id: again for item in request}
    if http_status not in (200, 202, 409) or (http_status == 409 and not response.readable):
        whole = request_outcome(http_status, detail, retry_after)
        return {item.object_id: whole for item in request}
    result: dict[str, Outcome] = {}
    for item in request:
        uid = item.instance_uid
        if uid in response.failed:
            reason = response.failed[uid]
            if reason == DUPLICATE_SOP_INSTANCE:
                result[item.object_id] = Outcome("stored", detail="it held this object already")
            else:
                result[item.object_id] = Outcome("status", status=reason)
        elif uid in response.stored:
            result[item.object_id] = Outcome("stored", status=response.stored[uid])
        elif http_status == 200:
            result[item.object_id] = Outcome("stored")
        elif http_status == 202:
            result[item.object_id] = Outcome(
                "no-response", detail="the answer did not mention this object"
            )
        else:
            result[item.object_id] = request_outcome(409, detail, None)
    return result


def request_outcome(http_status: int, detail: str, retry_after: float | None) -> Outcome:
    """The outcome of a request the server answered as a whole: 401/403 refuse our
    credentials (the destination waits for a person); others are classified by status."""
    if http_status in (401, 403):
        return Outcome("http-auth", status=http_status, detail=detail)
    return Outcome("http", status=http_status, detail=detail, retry_after=retry_after)


def retry_after_seconds(value: str | None, now: dt.datetime) -> float | None:
    """Retry-After as seconds from ``now``: delay-seconds or an HTTP-date (RFC 9110 10.2.3);
    None when absent or unreadable; capped at a day, never negative."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max(0.0, (when - now).total_seconds()), _MAX_RETRY_AFTER)
