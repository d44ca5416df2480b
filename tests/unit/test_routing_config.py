"""The routing configuration: the documented examples load, every mistake in a rule is reported
with its line and a suggestion, durations parse, and ``waystation route test`` works on real
files without printing patient data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from router.config import load_config
from router.config.units import parse_duration, parse_hours
from router.errors import ConfigError
from tests.support.router_proc import REPO, waystation

CT = str(get_testdata_file("CT_small.dcm"))
MR = str(get_testdata_file("MR_small.dcm"))
DESTINATIONS = "".join(
    f'[[destinations]]\nname = "{name}"\ntype = "dimse"\nae_title = "{name.upper()}"\n'
    f'host = "127.0.0.1"\nport = {port}\n\n'
    for name, port in (("pacs", 11113), ("telerad", 11114), ("archive", 11115))
)
# Line 1 is [[routes]], so a problem on the N-th line of a `when` below is reported at line N.
ROUTE = """\
[[routes]]
name = "r"
to = ["pacs"]
{when}
"""


def write(tmp_path: Path, text: str, name: str = "waystation.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, when: str) -> list[str]:
    path = write(tmp_path, ROUTE.format(when=when) + "\n" + DESTINATIONS)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def _doc_blocks() -> list[str]:
    text = (REPO / "docs" / "routing.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("block", _doc_blocks())
def test_every_example_in_the_routing_doc_loads(tmp_path: Path, block: str) -> None:
    text = block if "[[destinations]]" in block else DESTINATIONS + block
    config = load_config(write(tmp_path, text))
    assert config.routes


def test_the_main_example_means_what_the_doc_says(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, _doc_blocks()[0]))
    assert config.routing.mode == "all"
    assert config.routing.study_quiet_period == 300.0
    stat, mr, archive = config.routes
    assert stat.when.calling_ae == ["ED_CT1", "ED_CT2"] and stat.priority == "stat"
    assert mr.when.hours == "08:00-17:00" and mr.when.days == ["mon", "tue", "wed", "thu", "fri"]
    assert (archive.send, archive.priority, archive.when.modality) == ("study", "bulk", None)


def test_a_sub_table_when_is_the_same_as_dotted_keys(tmp_path: Path) -> None:
    dotted = ROUTE.format(when='when.modality = "CT"\nwhen.attributes.StationName = {present=true}')
    table = ROUTE.format(
        when='[routes.when]\nmodality = "CT"\n'
        "[routes.when.attributes]\nStationName = {present=true}"
    )
    first = load_config(write(tmp_path, dotted + DESTINATIONS, "a.toml")).routes[0]
    second = load_config(write(tmp_path, table + DESTINATIONS, "b.toml")).routes[0]
    assert first == second
    assert first.when.sop_class is None and first.when.attributes["StationName"].present is True


@pytest.mark.parametrize(
    ("when", "line", "key", "expected"),
    [
        (
            "when.attributes.StationNme = { equals = 'X' }",
            4,
            "routes[0].when.attributes.StationNme",
            "unknown DICOM keyword 'StationNme' (did you mean 'StationName'?)",
        ),
        (
            "when.attributes.patientname = { present = true }",
            4,
            "routes[0].when.attributes.patientname",
            "(did you mean 'PatientName'?)",
        ),
        (
            "when.modality = 'CT'\nwhen.attributes.StudyDescription = { regex = 'stroke(' }",
            5,
            "routes[0].when.attributes.StudyDescription.regex",
            "'stroke(' is not a valid regular expression: missing ), unterminated subpattern",
        ),
        ("when.hours = '8am-5pm'", 4, "routes[0].when.hours", "is not a time window"),
        ("when.hours = '08:00-25:00'", 4, "routes[0].when.hours", "is not a time window"),
        ("when.hours = '08:00'", 4, "routes[0].when.hours", "is not a time window"),
        ("when.hours = '08:00-08:00'", 4, "routes[0].when.hours", "00:00-24:00"),
        ("when.days = ['mon', 'fry']", 4, "routes[0].when.days[1]", "'mon', 'tue'"),
        ("when.days = []", 4, "routes[0].when.days", "at least 1"),
        ("when.modality = 'ct'", 4, "routes[0].when.modality[0]", "did you mean 'CT'?"),
        (
            "when.sop_class = 'CTImageStorag'",
            4,
            "routes[0].when.sop_class[0]",
            "did you mean 'CTImageStorage'?",
        ),
        ("when.calling_ae = 'A_VERY_LONG_AE_TITLE'", 4, "routes[0].when.calling_ae[0]", "1 to 16"),
        (
            "when.attributes.StationName = { equal = 'X' }",
            4,
            "routes[0].when.attributes.StationName.equal",
            "did you mean 'equals'?",
        ),
        (
            "when.attributes.StationName = { equals = 'X', regex = 'Y' }",
            4,
            "routes[0].when.attributes.StationName",
            "exactly one of equals, one_of, regex or present (found: equals, regex)",
        ),
        (
            "when.attributes.StationName = { ignore_case = true }",
            4,
            "routes[0].when.attributes.StationName",
            "(found: none)",
        ),
        (
            "when.attributes.StationName = { present = true, ignore_case = true }",
            4,
            "routes[0].when.attributes.StationName",
            "not to present",
        ),
        (
            "when.attributes.StationName = { equals = '' }",
            4,
            "routes[0].when.attributes.StationName.equals",
            "present = false",
        ),
        (
            "when.attributes.PixelData = { present = true }",
            4,
            "routes[0].when.attributes.PixelData",
            "not in the data set header",
        ),
        (
            "when.attributes.TransferSyntaxUID = { present = true }",
            4,
            "routes[0].when.attributes.TransferSyntaxUID",
            "not in the data set header",
        ),
        ("when.modalty = 'CT'", 4, "routes[0].when.modalty", "did you mean 'modality'?"),
        ("send = 'series'", 4, "routes[0].send", "'object' or 'study'"),
    ],
)
def test_mistakes_in_rules_name_line_key_and_fix(
    tmp_path: Path, when: str, line: int, key: str, expected: str
) -> None:
    found = problems_of(tmp_path, when)
    assert any(f"waystation.toml:{line}: {key}: " in p and expected in p for p in found), found


def test_every_mistake_in_a_rule_is_reported_at_once(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "when.modality = 'mr'\nwhen.hours = '9-5'\n"
        "when.attributes.BodyPartExamind = {present=true}",
    )
    assert len(found) == 3, found


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 300.0), ('study_quiet_period = "90 s"', 90.0), ("study_quiet_period = 60", 60.0)],
)
def test_study_quiet_period(tmp_path: Path, text: str, expected: float) -> None:
    config = load_config(write(tmp_path, f"[routing]\n{text}\n"))
    assert config.routing.study_quiet_period == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [('"soon"', "is not a duration"), ('"0 s"', '"1 s" and "7 d"'), ('"8 d"', '"1 s" and "7 d"')],
)
def test_bad_study_quiet_period(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, f"[routing]\nmode = 'first'\nstudy_quiet_period = {text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert ":3: routing.study_quiet_period:" in problem and expected in problem


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90 s", 90.0),
        ("90s", 90.0),
        ("5 min", 300.0),
        ("2 h", 7200.0),
        ("1.5 hours", 5400.0),
        ("1 d", 86400.0),
        ("45", 45.0),
        (12, 12.0),
        (0.5, 0.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 fortnights", "-1 s", "s", True, -3])
def test_bad_durations(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("08:00-17:00", (480, 1020)),
        ("8:30 - 17:15", (510, 1035)),
        ("22:00-06:00", (1320, 360)),
        ("18:00-24:00", (1080, 1440)),
        ("00:00-24:00", (0, 1440)),
    ],
)
def test_hours(text: str, window: tuple[int, int]) -> None:
    assert parse_hours(text) == window


CLI_CONFIG = """
[unit]
ae_title = "WAYSTATION"

[[routes]]
name = "ed-ct-stat"
to = ["pacs", "telerad"]
priority = "stat"
when.calling_ae = "ED_CT1"
when.modality = "CT"

[[routes]]
name = "mr-working-hours"
to = ["pacs"]
when.modality = "MR"
when.hours = "08:00-17:00"
when.days = ["mon", "tue", "wed", "thu", "fri"]

[[routes]]
name = "ct-archive"
to = ["archive"]
priority = "bulk"
send = "study"
when.sop_class = "CTImageStorage"
"""


def test_route_test_prints_rules_and_destinations_and_never_patient_data(tmp_path: Path) -> None:
    config = write(tmp_path, CLI_CONFIG + DESTINATIONS)
    junk = write(tmp_path, "not dicom", "notes.txt")
    done = waystation(
        "route", "test", "--config", str(config), "--calling-ae", "ED_CT1",
        "--at", "2026-11-28 10:00", CT, MR,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "at Sat 2026-11-28 10:00; calling AE ED_CT1, called AE WAYSTATION" in out
    ct, mr = out.split("\n\n")[1:3]
    assert ct.startswith(f"{CT}: modality CT, CT Image Storage")
    assert "  rule ed-ct-stat: matched" in ct
    assert "  -> pacs: stat, send per object (rule ed-ct-stat)" in ct
    assert "  -> telerad: stat, send per object (rule ed-ct-stat)" in ct
    assert "  -> archive: bulk, send per study (rule ct-archive)" in ct
    assert mr.startswith(f"{MR}: modality MR, MR Image Storage")
    assert "rule mr-working-hours: no: Sat 10:00: Sat is not one of Mon, Tue, Wed" in mr
    assert "SOP class MR Image Storage is not one of CT Image Storage" in mr
    assert mr.rstrip().endswith("UNROUTED: no rule matched")
    # The test files' patients: CompressedSamples^CT1 / 1CT1 and CompressedSamples^MR1 / 4MR1.
    for secret in ("CompressedSamples", "1CT1", "4MR1"):
        assert secret not in out + done.stderr

    weekday = waystation("route", "test", "--config", str(config), "--at", "2026-11-27 09:00", MR)
    assert "  -> pacs: routine, send per object (rule mr-working-hours)" in weekday.stdout

    unreadable = waystation(
        "route", "test", "--config", str(config), str(junk), str(tmp_path / "gone.dcm"), CT
    )
    assert unreadable.returncode == 1
    assert "2 files could not be read:" in unreadable.stdout
    assert f"UNREADABLE {junk}: not a readable DICOM file" in unreadable.stdout
    assert f"UNREADABLE {tmp_path / 'gone.dcm'}: No such file or directory" in unreadable.stdout
    assert "calling AE title MODALITY is not one of ED_CT1" in unreadable.stdout  # CT still tested

    bad_text = CLI_CONFIG.replace('"CTImageStorage"', '"CTImageStorag"')
    bad = write(tmp_path, bad_text + DESTINATIONS, "bad.toml")
    refused = waystation("route", "test", "--config", str(bad), CT)
    assert refused.returncode == 78
    assert f"{bad}:24: routes[2].when.sop_class[0]:" in refused.stderr
    assert "did you mean 'CTImageStorage'?" in refused.stderr
