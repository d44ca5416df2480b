"""Routing decisions: which destinations an object goes to, and why. Pure and table-tested."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.core.objects import ObjectAttributes, PlannedDelivery, PriorityName, Source


@dataclass(frozen=True)
class Rule:
    """A routing rule as the core sees it (built from the configuration's [[routes]])."""

    name: str
    to: tuple[str, ...]
    priority: PriorityName = "routine"

    def matches(self, attributes: ObjectAttributes, source: Source) -> bool:
        """Whether this rule applies to the object. (Match conditions arrive with issue 3's
        rule language; a rule without conditions matches everything.)"""
        del attributes, source
        return True


def plan(
    rules: Sequence[Rule], attributes: ObjectAttributes, source: Source, *, first_match: bool
) -> list[PlannedDelivery]:
    """The deliveries for one object: every matching rule's destinations (or only the first
    matching rule's), each destination once, at the most urgent priority any rule gave it."""
    chosen: dict[str, PlannedDelivery] = {}
    for rule in rules:
        if not rule.matches(attributes, source):
            continue
        for destination in rule.to:
            candidate = PlannedDelivery(destination, rule.name, rule.priority)
            current = chosen.get(destination)
            if current is None or candidate.priority_rank < current.priority_rank:
                chosen[destination] = candidate
        if first_match:
            break
    return list(chosen.values())
