"""Storage Commitment (Push Model) decisions. Pure: data in, decisions out, no I/O.

A destination configured with ``storage_commitment`` counts an object delivered only once it
reports, in an N-EVENT-REPORT, that it has committed to keeping it. This module builds the
N-ACTION request's data set, reads the report's, matches the report's references back to
object ids, words failure reasons for people, and decides when to batch and when to give up
waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydicom.dataset import Dataset

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
# The well-known SOP Instance of the Push Model (PS3.4 J.3.5): the N-ACTION's Requested and
# the N-EVENT-REPORT's Affected SOP Instance UID.
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
ACTION_REQUEST_COMMIT = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

# Failure Reason (0008,1197) values, PS3.3 C.14.1.1, in plain words; True: sending the object
# again cannot help (the destination does not commit this kind of object at all).
_FAILURES: dict[int, tuple[str, bool]] = {
    0x0110: ("could not keep it (processing failure)", False),
    0x0112: ("does not have it (no such object)", False),
    0x0119: ("holds it as a different kind of object (class/instance conflict)", False),
    0x0122: ("does not commit this kind of image. Call IT", True),
    0x0131: ("refused a duplicate transaction", False),
    0x0213: ("is out of resources", False),
}


@dataclass(frozen=True)
class Reference:
    """One referenced SOP instance: its class and instance UID (patient-linked: never log)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Report:
    """What an N-EVENT-REPORT says about one transaction."""

    transaction_uid: str
    event_type: int
    committed: tuple[Reference, ...] = ()
    failed: tuple[tuple[Reference, int], ...] = ()


@dataclass(frozen=True)
class Resolution:
    """A report matched to the objects of its transaction."""

    committed: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    not_ours: int = 0  # references that name no object of the transaction


class BadReport(ValueError):
    """An N-EVENT-REPORT that is not a Storage Commitment result this unit can read;
    ``status`` is the N-EVENT-REPORT response status to answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def build_request(transaction_uid: str, references: Iterable[Reference]) -> Dataset:
    """The N-ACTION-RQ's Action Information: Transaction UID and Referenced SOP Sequence."""
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    items = []
    for ref in references:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    dataset.ReferencedSOPSequence = items
    return dataset


def read_report(event_type: int, information: Dataset | None) -> Report:
    """Read an N-EVENT-REPORT's Event Information; raises BadReport when it is unusable."""
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST):
        raise BadReport(f"event type {event_type} is not a Storage Commitment result", 0x0113)
    if information is None or not str(information.get("TransactionUID", "")).strip():
        raise BadReport("the report names no Transaction UID", 0x0115)
    committed = tuple(
        Reference(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        for item in information.get("ReferencedSOPSequence", [])
        if "ReferencedSOPInstanceUID" in item
    )
    failed = tuple(
        (
            Reference(
                str(item.get("ReferencedSOPClassUID", "")), str(item.ReferencedSOPInstanceUID)
            ),
            int(item.get("FailureReason", 0x0110)),
        )
        for item in information.get("FailedSOPSequence", [])
        if "ReferencedSOPInstanceUID" in item
    )
    return Report(str(information.TransactionUID).strip(), event_type, committed, failed)


def resolve(
    report: Report, tag_of: Callable[[str], bytes], items: Mapping[bytes, str]
) -> Resolution:
    """Match the report's references to the transaction's objects.

    ``items`` maps each object's keyed SOP Instance UID tag to its object id; ``tag_of``
    computes that tag for a UID (so no UID is ever held in clear outside the sealed metadata).
    A reference to no object of the transaction is counted, not applied."""
    committed: list[str] = []
    failed: list[tuple[str, int]] = []
    not_ours = 0
    for ref in report.committed:
        object_id = items.get(tag_of(ref.sop_instance_uid))
        if object_id is None:
            not_ours += 1
        else:
            committed.append(object_id)
    for ref, reason in report.failed:
        object_id = items.get(tag_of(ref.sop_instance_uid))
        if object_id is None:
            not_ours += 1
        else:
            failed.append((object_id, reason))
    return Resolution(committed, failed, not_ours)


def failure_words(destination: str, reason: int) -> tuple[str, bool]:
    """A failure reason in plain words, and whether sending again cannot help."""
    words, permanent = _FAILURES.get(reason, ("did not commit it", False))
    text = f"{destination} {words} (0x{reason:04X})."
    if not permanent:
        text += " Sending it again."
    return text, permanent


def batch_due(
    *, count: int, quiet_for: float, waited: float, max_batch: int, linger: float, max_wait: float
) -> bool:
    """Whether to ask for commitment now for ``count`` stored, unrequested objects.

    A batch goes when it is full, when no object has been stored for ``linger`` seconds (the
    series has gone out), or when the oldest has waited ``max_wait`` seconds."""
    if count <= 0:
        return False
    return count >= max_batch or quiet_for >= linger or waited >= max_wait


Expiry = Literal["ask-again", "resend"]


def on_expiry(round_: int) -> Expiry:
    """No result in time: the first request is asked again once; then the objects are sent
    again (a fresh C-STORE, then a fresh request)."""
    return "ask-again" if round_ <= 1 else "resend"
