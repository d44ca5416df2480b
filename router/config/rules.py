"""Turn the validated ``[[routes]]`` into the routing core's rules.

The core (router.core) depends on nothing; this adapter is the one place that knows both the
configuration model and the core's condition types.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from router.config.dicom_names import is_code_string, sop_class_name
from router.config.model import AttributeCondition, Route, When
from router.config.units import parse_hours
from router.core.conditions import (
    AttributeIsOneOf,
    AttributeMatches,
    AttributePresent,
    Condition,
    Fact,
    FactIsOneOf,
    TimeWindow,
)
from router.core.routing import Rule

_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def build_rules(routes: Sequence[Route]) -> list[Rule]:
    """The core's rules, in the order of the configuration file."""
    return [rule_from_route(route) for route in routes]


def rule_from_route(route: Route) -> Rule:
    """One route's rule: its destinations, priority, send mode and conditions."""
    return Rule(
        name=route.name,
        to=tuple(route.to),
        priority=route.priority,
        conditions=conditions_of(route.when),
        send=route.send,
    )


def conditions_of(when: When) -> tuple[Condition, ...]:
    """The conditions of a ``when`` table, cheapest first."""
    conditions: list[Condition] = []
    facts: list[tuple[Fact, list[str] | None]] = [
        ("calling_ae", when.calling_ae),
        ("called_ae", when.called_ae),
        ("modality", when.modality),
        ("sop_class", when.sop_class),
    ]
    for fact, values in facts:
        if values is not None:
            describe = sop_class_name if fact == "sop_class" else str
            conditions.append(FactIsOneOf(fact, tuple(values), describe))
    if when.hours is not None or when.days is not None:
        hours = parse_hours(when.hours) if when.hours is not None else None
        days = frozenset(_DAYS[d] for d in when.days) if when.days is not None else None
        conditions.append(TimeWindow(hours, days))
    conditions.extend(_attribute(k, c) for k, c in when.attributes.items())
    return tuple(conditions)


def _attribute(keyword: str, condition: AttributeCondition) -> Condition:
    show = is_code_string(keyword)
    if condition.present is not None:
        return AttributePresent(keyword, condition.present)
    if condition.regex is not None:
        flags = re.IGNORECASE if condition.ignore_case else 0
        return AttributeMatches(keyword, re.compile(condition.regex, flags), show)
    values = [condition.equals] if condition.equals is not None else condition.one_of or []
    return AttributeIsOneOf(keyword, tuple(values), condition.ignore_case, show)
