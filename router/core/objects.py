"""What the router knows about a received object, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PriorityName = Literal["stat", "urgent", "routine", "bulk"]
PRIORITIES: dict[PriorityName, int] = {"stat": 0, "urgent": 1, "routine": 2, "bulk": 3}
# "object": deliver each object as it arrives; "study": once its study is complete (quiet).
SendMode = Literal["object", "study"]


@dataclass(frozen=True)
class Source:
    """Who sent an object: the association's AE titles and the peer's address."""

    calling_ae: str
    called_ae: str
    peer: str


@dataclass(frozen=True)
class ObjectAttributes:
    """Attributes read from a received object's header.

    The ``phi`` fields are patient data: they are only ever stored sealed (encrypted).
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: str
    modality: str
    phi: dict[str, str] = field(default_factory=dict)
    # Every other top-level attribute by keyword, as text, for routing rules (never stored).
    keywords: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedDelivery:
    """One destination an object must reach, the rule that sent it there, its priority, and
    whether it goes as soon as it arrives or once its study is complete."""

    destination: str
    rule: str
    priority: PriorityName = "routine"
    send: SendMode = "object"

    @property
    def priority_rank(self) -> int:
        """0 for STAT (sent first) to 3 for bulk."""
        return PRIORITIES[self.priority]
