"""The routing core, table-tested: every condition type, combinations, time windows, first vs
all, priority merging and the dry-run's explanations. Rules are built from ``when`` tables
exactly as the configuration gives them (model -> router.config.rules -> core)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from router.config.model import Route
from router.config.rules import build_rules, rule_from_route
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.core.routing import Rule, explain, plan, wanted_keywords

CT_UID = "1.2.840.10008.5.1.4.1.1.2"
MR_UID = "1.2.840.10008.5.1.4.1.1.4"
ED = Source("ED_CT", "WAYSTATION", "10.0.0.5")
FRI_14 = datetime(2026, 11, 27, 14, 0)  # a Friday


def obj(modality: str = "CT", sop_class: str = CT_UID, **keywords: str) -> ObjectAttributes:
    """An object's attributes; ``keywords`` are the decoded header attributes rules test."""
    return ObjectAttributes(
        sop_class_uid=sop_class,
        sop_instance_uid="1.2.3.4",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        transfer_syntax="1.2.840.10008.1.2.1",
        modality=modality,
        keywords=keywords,
    )


def rule(when: dict[str, Any], name: str = "r", **route: Any) -> Rule:
    """A core rule from a route's ``when`` table, validated as the config loader would."""
    return rule_from_route(
        Route.model_validate({"name": name, "to": route.pop("to", ["pacs"]), "when": when, **route})
    )


def at(day: int, hh: int, mm: int = 0) -> datetime:
    """Local time on the week of 23 Nov 2026: day 0 is Monday the 23rd ... 6 Sunday."""
    return datetime(2026, 11, 23 + day, hh, mm)


MON, TUE, WED, THU, FRI, SAT, SUN = range(7)

# fmt: off
CONDITION_CASES: list[tuple[str, dict[str, Any], ObjectAttributes, Source, datetime, bool]] = [
    # no conditions
    ("empty when", {}, obj(), ED, FRI_14, True),
    # AE titles: a string, or a list meaning one-of; exact
    ("calling ae", {"calling_ae": "ED_CT"}, obj(), ED, FRI_14, True),
    ("calling ae other", {"calling_ae": "CT2"}, obj(), ED, FRI_14, False),
    ("calling ae list", {"calling_ae": ["CT2", "ED_CT"]}, obj(), ED, FRI_14, True),
    ("calling ae case", {"calling_ae": "ed_ct"}, obj(), ED, FRI_14, False),
    ("called ae", {"called_ae": "WAYSTATION"}, obj(), ED, FRI_14, True),
    ("called ae other", {"called_ae": ["ARCHIVE"]}, obj(), ED, FRI_14, False),
    # modality
    ("modality", {"modality": "CT"}, obj(), ED, FRI_14, True),
    ("modality other", {"modality": "MR"}, obj(), ED, FRI_14, False),
    ("modality list", {"modality": ["MR", "CT"]}, obj(), ED, FRI_14, True),
    ("modality missing", {"modality": "CT"}, obj(modality=""), ED, FRI_14, False),
    # SOP class by UID or by keyword
    ("sop class uid", {"sop_class": CT_UID}, obj(), ED, FRI_14, True),
    ("sop class keyword", {"sop_class": "CTImageStorage"}, obj(), ED, FRI_14, True),
    ("sop class other", {"sop_class": ["MRImageStorage"]}, obj(), ED, FRI_14, False),
    # equals
    ("equals", {"attributes": {"StationName": {"equals": "ED1"}}}, obj(StationName="ED1"),
     ED, FRI_14, True),
    ("equals is case sensitive", {"attributes": {"StationName": {"equals": "ED1"}}},
     obj(StationName="ed1"), ED, FRI_14, False),
    ("equals ignore_case", {"attributes": {"StationName": {"equals": "ED1", "ignore_case": True}}},
     obj(StationName="ed1"), ED, FRI_14, True),
    ("equals is whole value", {"attributes": {"StationName": {"equals": "ED"}}},
     obj(StationName="ED1"), ED, FRI_14, False),
    ("equals missing", {"attributes": {"StationName": {"equals": "ED1"}}}, obj(), ED, FRI_14,
     False),
    ("equals empty value", {"attributes": {"StationName": {"equals": "ED1"}}},
     obj(StationName=""), ED, FRI_14, False),
    ("equals a number", {"attributes": {"SeriesNumber": {"equals": 3}}}, obj(SeriesNumber="3"),
     ED, FRI_14, True),
    # one_of
    ("one_of", {"attributes": {"BodyPartExamined": {"one_of": ["HEAD", "NECK"]}}},
     obj(BodyPartExamined="NECK"), ED, FRI_14, True),
    ("one_of other", {"attributes": {"BodyPartExamined": {"one_of": ["HEAD", "NECK"]}}},
     obj(BodyPartExamined="CHEST"), ED, FRI_14, False),
    ("one_of ignore_case",
     {"attributes": {"BodyPartExamined": {"one_of": ["HEAD"], "ignore_case": True}}},
     obj(BodyPartExamined="Head"), ED, FRI_14, True),
    ("one_of missing", {"attributes": {"BodyPartExamined": {"one_of": ["HEAD"]}}}, obj(), ED,
     FRI_14, False),
    # regex: re.search, anywhere unless anchored
    ("regex anywhere", {"attributes": {"StudyDescription": {"regex": "HEAD"}}},
     obj(StudyDescription="CT HEAD W/O"), ED, FRI_14, True),
    ("regex anchored", {"attributes": {"StudyDescription": {"regex": "^HEAD"}}},
     obj(StudyDescription="CT HEAD W/O"), ED, FRI_14, False),
    ("regex case", {"attributes": {"StudyDescription": {"regex": "head"}}},
     obj(StudyDescription="CT HEAD"), ED, FRI_14, False),
    ("regex ignore_case",
     {"attributes": {"StudyDescription": {"regex": "head", "ignore_case": True}}},
     obj(StudyDescription="CT HEAD"), ED, FRI_14, True),
    ("regex full", {"attributes": {"AccessionNumber": {"regex": "^ED[0-9]+$"}}},
     obj(AccessionNumber="ED123"), ED, FRI_14, True),
    ("regex missing", {"attributes": {"StudyDescription": {"regex": ".*"}}}, obj(), ED, FRI_14,
     False),
    # present / absent; empty counts as absent
    ("present", {"attributes": {"RequestedProcedurePriority": {"present": True}}},
     obj(RequestedProcedurePriority="STAT"), ED, FRI_14, True),
    ("present but missing", {"attributes": {"RequestedProcedurePriority": {"present": True}}},
     obj(), ED, FRI_14, False),
    ("present but empty", {"attributes": {"RequestedProcedurePriority": {"present": True}}},
     obj(RequestedProcedurePriority=""), ED, FRI_14, False),
    ("absent", {"attributes": {"RequestedProcedurePriority": {"present": False}}}, obj(), ED,
     FRI_14, True),
    ("absent but there", {"attributes": {"RequestedProcedurePriority": {"present": False}}},
     obj(RequestedProcedurePriority="STAT"), ED, FRI_14, False),
    # combinations: every condition must hold
    ("all hold",
     {"calling_ae": "ED_CT", "modality": "CT", "attributes": {"StationName": {"equals": "ED1"}},
      "hours": "08:00-17:00"}, obj(StationName="ED1"), ED, FRI_14, True),
    ("one fails (attribute)",
     {"calling_ae": "ED_CT", "modality": "CT", "attributes": {"StationName": {"equals": "ED2"}}},
     obj(StationName="ED1"), ED, FRI_14, False),
    ("one fails (time)", {"modality": "CT", "hours": "08:00-12:00"}, obj(), ED, FRI_14, False),
    ("two attributes",
     {"attributes": {"StationName": {"equals": "ED1"}, "PatientID": {"present": False}}},
     obj(StationName="ED1"), ED, FRI_14, True),
]
# fmt: on


@pytest.mark.parametrize(
    ("when", "attributes", "source", "now", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CONDITION_CASES],
)
def test_conditions(
    when: dict[str, Any],
    attributes: ObjectAttributes,
    source: Source,
    now: datetime,
    expected: bool,
) -> None:
    built = rule(when)
    assert built.matches(attributes, source, now) is expected
    assert (not built.failures(attributes, source, now)) is expected


# fmt: off
TIME_CASES: list[tuple[str, dict[str, Any], datetime, bool]] = [
    # a day window: start included, end excluded
    ("day start", {"hours": "08:00-17:00"}, at(WED, 8), True),
    ("day last minute", {"hours": "08:00-17:00"}, at(WED, 16, 59), True),
    ("day end", {"hours": "08:00-17:00"}, at(WED, 17), False),
    ("day before", {"hours": "08:00-17:00"}, at(WED, 7, 59), False),
    ("until midnight", {"hours": "18:00-24:00"}, at(WED, 23, 59), True),
    ("until midnight, at midnight", {"hours": "18:00-24:00"}, at(WED, 0), False),
    # wrapping past midnight
    ("night start", {"hours": "22:00-06:00"}, at(WED, 22), True),
    ("night before midnight", {"hours": "22:00-06:00"}, at(WED, 23, 59), True),
    ("night midnight", {"hours": "22:00-06:00"}, at(WED, 0), True),
    ("night last minute", {"hours": "22:00-06:00"}, at(WED, 5, 59), True),
    ("night end", {"hours": "22:00-06:00"}, at(WED, 6), False),
    ("night at noon", {"hours": "22:00-06:00"}, at(WED, 12), False),
    # days alone: the calendar day
    ("day listed", {"days": ["fri"]}, at(FRI, 0), True),
    ("day listed, late", {"days": "fri"}, at(FRI, 23, 59), True),
    ("day not listed", {"days": ["fri"]}, at(SAT, 0), False),
    ("weekdays", {"days": ["mon", "tue", "wed", "thu", "fri"]}, at(SUN, 12), False),
    ("days any case", {"days": ["Sun"]}, at(SUN, 12), True),
    # working hours on working days
    ("working hours", {"hours": "08:00-17:00", "days": ["mon", "fri"]}, at(MON, 9), True),
    ("working hours, wrong day", {"hours": "08:00-17:00", "days": ["mon", "fri"]}, at(TUE, 9),
     False),
    ("working hours, right day, late", {"hours": "08:00-17:00", "days": ["fri"]}, at(FRI, 18),
     False),
    # a night window belongs to the day it starts on
    ("fri night, fri", {"hours": "22:00-06:00", "days": ["fri"]}, at(FRI, 23), True),
    ("fri night, sat early", {"hours": "22:00-06:00", "days": ["fri"]}, at(SAT, 2), True),
    ("fri night, fri early is thu's", {"hours": "22:00-06:00", "days": ["fri"]}, at(FRI, 2),
     False),
    ("fri night, sat night", {"hours": "22:00-06:00", "days": ["fri"]}, at(SAT, 23), False),
    ("sun night, mon early (week wraps)", {"hours": "22:00-06:00", "days": ["sun"]},
     at(MON, 3), True),
    ("mon night, mon early is sun's", {"hours": "22:00-06:00", "days": ["mon"]}, at(MON, 3),
     False),
]
# fmt: on


@pytest.mark.parametrize(
    ("when", "now", "expected"), [pytest.param(*case[1:], id=case[0]) for case in TIME_CASES]
)
def test_time_windows(when: dict[str, Any], now: datetime, expected: bool) -> None:
    assert rule(when).matches(obj(), ED, now) is expected


CT_STAT = rule({"modality": "CT"}, "ct-stat", to=["pacs", "hub"], priority="stat")
ALL_BULK = rule({}, "archive-all", to=["archive", "pacs"], priority="bulk", send="study")
MR_ONLY = rule({"modality": "MR"}, "mr", to=["pacs"])
ROUTINE_STUDY = rule({}, "pacs-study", to=["pacs"], send="study")
ROUTINE_OBJECT = rule({}, "pacs-object", to=["pacs"])

# fmt: off
PLAN_CASES: list[tuple[str, list[Rule], bool, str, set[tuple[str, str, str, str]]]] = [
    ("all: both rules", [CT_STAT, ALL_BULK], False, "CT",
     {("pacs", "ct-stat", "stat", "object"), ("hub", "ct-stat", "stat", "object"),
      ("archive", "archive-all", "bulk", "study")}),
    ("all: most urgent wins, in any order", [ALL_BULK, CT_STAT], False, "CT",
     {("pacs", "ct-stat", "stat", "object"), ("hub", "ct-stat", "stat", "object"),
      ("archive", "archive-all", "bulk", "study")}),
    ("first: only the first match", [CT_STAT, ALL_BULK], True, "CT",
     {("pacs", "ct-stat", "stat", "object"), ("hub", "ct-stat", "stat", "object")}),
    ("first: a non-matching rule is skipped", [MR_ONLY, ALL_BULK, CT_STAT], True, "CT",
     {("archive", "archive-all", "bulk", "study"), ("pacs", "archive-all", "bulk", "study")}),
    ("all: only the catch-all matches", [CT_STAT, ALL_BULK], False, "US",
     {("archive", "archive-all", "bulk", "study"), ("pacs", "archive-all", "bulk", "study")}),
    ("equal priority: per object beats per study", [ROUTINE_STUDY, ROUTINE_OBJECT], False, "CT",
     {("pacs", "pacs-object", "routine", "object")}),
    ("equal everything: the earlier rule", [ROUTINE_OBJECT, MR_ONLY], False, "MR",
     {("pacs", "pacs-object", "routine", "object")}),
    ("unrouted", [CT_STAT, MR_ONLY], False, "US", set()),
    ("no rules", [], False, "CT", set()),
]
# fmt: on


@pytest.mark.parametrize(
    ("rules", "first_match", "modality", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in PLAN_CASES],
)
def test_plan(
    rules: list[Rule], first_match: bool, modality: str, expected: set[tuple[str, str, str, str]]
) -> None:
    planned = plan(rules, obj(modality), ED, first_match=first_match, now=FRI_14)
    assert len(planned) == len({d.destination for d in planned}), "each destination once"
    assert {(d.destination, d.rule, d.priority, d.send) for d in planned} == expected


def test_planned_delivery_keeps_its_defaults() -> None:
    assert PlannedDelivery("pacs", "everything").send == "object"
    assert plan([Rule("everything", ("pacs",))], obj(), ED, first_match=False, now=FRI_14) == [
        PlannedDelivery("pacs", "everything", "routine", "object")
    ]


# fmt: off
EXPLAIN_CASES: list[tuple[str, dict[str, Any], ObjectAttributes, datetime, list[str]]] = [
    ("modality", {"modality": "CT"}, obj("MR", MR_UID), FRI_14, ["modality MR is not one of CT"]),
    ("no modality", {"modality": ["CT", "MR"]}, obj(""), FRI_14,
     ["modality (none) is not one of CT, MR"]),
    ("calling ae", {"calling_ae": ["CT1", "CT2"]}, obj(), FRI_14,
     ["calling AE title ED_CT is not one of CT1, CT2"]),
    ("sop class by name", {"sop_class": "CTImageStorage"}, obj("MR", MR_UID), FRI_14,
     ["SOP class MR Image Storage is not one of CT Image Storage"]),
    ("code string value shown", {"attributes": {"BodyPartExamined": {"equals": "HEAD"}}},
     obj(BodyPartExamined="CHEST"), FRI_14, ["BodyPartExamined 'CHEST' is not 'HEAD'"]),
    ("other values never shown", {"attributes": {"PatientName": {"one_of": ["A^B", "C^D"]}}},
     obj(PatientName="DOE^JANE"), FRI_14, ["PatientName is not one of 'A^B', 'C^D'"]),
    ("regex", {"attributes": {"PatientID": {"regex": "^X", "ignore_case": True}}},
     obj(PatientID="SECRET-123"), FRI_14,
     ["PatientID does not match regex '^X' (ignoring case)"]),
    ("missing", {"attributes": {"StationName": {"regex": "ED"}}}, obj(), FRI_14,
     ["StationName is missing"]),
    ("present", {"attributes": {"StationName": {"present": False}}}, obj(StationName="X"),
     FRI_14, ["StationName is present"]),
    ("hours", {"hours": "08:00-17:00"}, obj(), at(SAT, 18, 30),
     ["Sat 18:30 is outside hours 08:00-17:00"]),
    ("days", {"days": ["mon", "tue"]}, obj(), at(SAT, 10),
     ["Sat 10:00: Sat is not one of Mon, Tue"]),
    ("night belongs to its start day", {"hours": "22:00-06:00", "days": ["fri"]}, obj(),
     at(FRI, 3), ["Fri 03:00 is in Thu's 22:00-06:00 window and Thu is not one of Fri"]),
    ("every failing condition", {"modality": "MR", "calling_ae": "X"}, obj(), FRI_14,
     ["calling AE title ED_CT is not one of X", "modality CT is not one of MR"]),
]
# fmt: on


@pytest.mark.parametrize(
    ("when", "attributes", "now", "reasons"),
    [pytest.param(*case[1:], id=case[0]) for case in EXPLAIN_CASES],
)
def test_explain_says_why_not(
    when: dict[str, Any], attributes: ObjectAttributes, now: datetime, reasons: list[str]
) -> None:
    [decision] = explain([rule(when)], attributes, ED, now=now, first_match=False)
    assert (decision.matched, decision.applied, list(decision.reasons)) == (False, False, reasons)
    assert "DOE" not in str(decision) and "SECRET" not in str(decision)


def test_explain_shows_rules_shadowed_in_first_mode() -> None:
    rules = [MR_ONLY, CT_STAT, ALL_BULK]
    first = explain(rules, obj(), ED, now=FRI_14, first_match=True)
    assert [(d.rule, d.matched, d.applied) for d in first] == [
        ("mr", False, False),
        ("ct-stat", True, True),
        ("archive-all", True, False),
    ]
    every = explain(rules, obj(), ED, now=FRI_14, first_match=False)
    assert [d.applied for d in every] == [False, True, True]


def test_wanted_keywords_are_only_the_attributes_rules_test() -> None:
    rules = [
        rule({"modality": "CT", "attributes": {"StationName": {"equals": "A"}}}),
        rule({"attributes": {"BodyPartExamined": {"present": True}}, "hours": "08:00-09:00"}),
        CT_STAT,
    ]
    assert wanted_keywords(rules) == {"StationName", "BodyPartExamined"}
    assert wanted_keywords([]) == frozenset()


def test_build_rules_keeps_file_order_and_settings() -> None:
    routes = [
        Route.model_validate({"name": "a", "to": ["x"], "priority": "stat", "send": "study"}),
        Route.model_validate({"name": "b", "to": ["y", "z"]}),
    ]
    built = build_rules(routes)
    assert [(r.name, r.to, r.priority, r.send, r.conditions) for r in built] == [
        ("a", ("x",), "stat", "study", ()),
        ("b", ("y", "z"), "routine", "object", ()),
    ]
