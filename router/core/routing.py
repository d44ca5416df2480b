"""Routing decisions: which destinations an object goes to, and why. Pure and table-tested.

Rules are built from the configuration by router.config.rules; this module sees only plain
data and never reads files, the network or the clock (``now`` is always passed in).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from router.core.conditions import Condition
from router.core.objects import (
    PRIORITIES,
    ObjectAttributes,
    PlannedDelivery,
    PriorityName,
    SendMode,
    Source,
)


@dataclass(frozen=True)
class Rule:
    """A routing rule as the core sees it (built from the configuration's [[routes]]).

    A rule applies when every condition holds; a rule without conditions matches everything."""

    name: str
    to: tuple[str, ...]
    priority: PriorityName = "routine"
    conditions: tuple[Condition, ...] = ()
    send: SendMode = "object"

    def matches(self, attributes: ObjectAttributes, source: Source, now: datetime) -> bool:
        """Whether this rule applies to the object received from ``source`` at ``now``."""
        return all(c.failure(attributes, source, now) is None for c in self.conditions)

    def failures(self, attributes: ObjectAttributes, source: Source, now: datetime) -> list[str]:
        """Every condition that does not hold, in words (empty: the rule matches)."""
        reasons = (c.failure(attributes, source, now) for c in self.conditions)
        return [reason for reason in reasons if reason is not None]


@dataclass(frozen=True)
class RuleDecision:
    """What one rule decided for one object, for the dry-run.

    ``applied`` is False for a matching rule that was not used because an earlier rule
    matched first (mode "first"); ``reasons`` says why a rule did not match."""

    rule: str
    matched: bool
    applied: bool
    reasons: tuple[str, ...] = ()


def plan(
    rules: Sequence[Rule],
    attributes: ObjectAttributes,
    source: Source,
    *,
    first_match: bool,
    now: datetime,
) -> list[PlannedDelivery]:
    """The deliveries for one object: every matching rule's destinations (or only the first
    matching rule's), each destination once.

    Where several rules name a destination, the most urgent priority wins; at equal priority
    "object" (send now) wins over "study" (wait), then the earlier rule. The winning rule's
    name, priority and send mode are recorded together, so the delivery has one explanation.
    An empty list means unrouted."""
    chosen: dict[str, PlannedDelivery] = {}
    for rule in _applied(rules, attributes, source, first_match=first_match, now=now):
        for destination in rule.to:
            candidate = PlannedDelivery(destination, rule.name, rule.priority, rule.send)
            current = chosen.get(destination)
            if current is None or _rank(candidate) < _rank(current):
                chosen[destination] = candidate
    return list(chosen.values())


def explain(
    rules: Sequence[Rule],
    attributes: ObjectAttributes,
    source: Source,
    *,
    now: datetime,
    first_match: bool,
) -> list[RuleDecision]:
    """One decision per rule, in order: matched or not and why not (every failing condition).
    Unlike plan, every rule is evaluated, so the dry-run shows rules shadowed in mode first."""
    decisions: list[RuleDecision] = []
    applied_one = False
    for rule in rules:
        reasons = tuple(rule.failures(attributes, source, now))
        matched = not reasons
        applied = matched and not (first_match and applied_one)
        applied_one = applied_one or matched
        decisions.append(RuleDecision(rule.name, matched, applied, reasons))
    return decisions


def wanted_keywords(rules: Sequence[Rule]) -> frozenset[str]:
    """The DICOM keywords any rule tests, so ingest decodes only those attributes."""
    return frozenset(k for rule in rules for c in rule.conditions for k in c.keywords)


def _applied(
    rules: Sequence[Rule],
    attributes: ObjectAttributes,
    source: Source,
    *,
    first_match: bool,
    now: datetime,
) -> Iterator[Rule]:
    for rule in rules:
        if rule.matches(attributes, source, now):
            yield rule
            if first_match:
                return


def _rank(delivery: PlannedDelivery) -> tuple[int, int]:
    return PRIORITIES[delivery.priority], 0 if delivery.send == "object" else 1
