"""The configuration contract: the documented example works; every mistake is located."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import load_config, load_default_config
from router.config.units import parse_size
from router.errors import ConfigError
from tests.support.router_proc import waystation

EXAMPLE = """\
[unit]
name = "clinic-01"
ae_title = "WAYSTATION"

[ingest]
listen = "127.0.0.1:11112"          # host:port
allowed_callers = []                # calling AE titles; empty list = any

[spool]
path = "var/spool"                  # relative paths are relative to the config file
min_free = "1 GiB"                  # below this, new objects are refused with 0xA700

[[destinations]]
name = "pacs"
type = "dimse"
ae_title = "PACS"
host = "127.0.0.1"
port = 11113

[[routes]]
name = "everything"
to = ["pacs"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "waystation.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_the_documented_example_loads_as_written(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.unit.ae_title == "WAYSTATION"
    assert (config.ingest.host, config.ingest.port) == ("127.0.0.1", 11112)
    assert config.spool.path == (tmp_path / "var/spool").resolve()
    assert config.spool.min_free == 1024**3
    assert config.destinations[0].port == 11113
    assert config.routes[0].to == ["pacs"]


def test_storage_commitment_is_off_unless_asked_for(tmp_path: Path) -> None:
    assert not load_config(write(tmp_path, EXAMPLE)).destinations[0].storage_commitment
    text = EXAMPLE.replace(
        "port = 11113", 'port = 11113\nstorage_commitment = true\ncommitment_timeout = "2 h"'
    )
    destination = load_config(write(tmp_path, text)).destinations[0]
    assert destination.storage_commitment
    assert destination.commitment_timeout == 7200.0


def test_misspelt_key_names_file_line_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.replace("min_free =", "min_fre ="))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:11: spool.min_fre:")
    assert "did you mean 'min_free'?" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = EXAMPLE.replace("port = 11113", "port = 99999").replace(
        'ae_title = "PACS"', 'ae_titel = "PACS"'
    )
    found = problems(write(tmp_path, text))
    assert any(":18: destinations[0].port:" in p and "65535" in p for p in found)
    assert any(":16: destinations[0].ae_titel:" in p and "'ae_title'" in p for p in found)
    assert any("destinations[0].ae_title: required key is missing" in p for p in found)


def test_route_to_unknown_destination_suggests_the_right_one(tmp_path: Path) -> None:
    [problem] = problems(write(tmp_path, EXAMPLE.replace('to = ["pacs"]', 'to = ["pac"]')))
    assert ":22: routes[0].to:" in problem and "did you mean 'pacs'?" in problem


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('listen = "127.0.0.1:11112"', 'listen = "11112"', "not host:port"),
        ('ae_title = "WAYSTATION"', 'ae_title = "WAY\\\\STATION"', "not a valid AE title"),
        ('ae_title = "WAYSTATION"', 'ae_title = "A_VERY_LONG_AE_TITLE"', "1 to 16"),
        ('min_free = "1 GiB"', 'min_free = "lots"', "is not a size"),
        ('type = "dimse"', 'type = "ftp"', "dimse"),
        ("port = 11113", 'port = 11113\nstorage_commitment = "yes"', "valid boolean"),
        ("port = 11113", 'port = 11113\ncommitment_timeout = "soon"', "is not a duration"),
        ("port = 11113", 'port = 11113\ncommitment_timeout = "0 s"', "greater than or equal to 1"),
        ("port = 11113", "port = 11113\nstorage_comitment = true", "'storage_commitment'"),
    ],
)
def test_bad_values_are_explained(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in EXAMPLE
    found = problems(write(tmp_path, EXAMPLE.replace(old, new, 1)))
    assert any(expected in p for p in found), found


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    [problem] = problems(write(tmp_path, EXAMPLE.replace('name = "pacs"', 'name = "pacs')))
    assert "TOML syntax error" in problem and "line 14" in problem


def test_embedded_default_needs_no_file(tmp_path: Path) -> None:
    config = load_default_config(tmp_path)
    assert config.spool.path == (tmp_path / "var/spool").resolve()
    assert config.spool.resolved_key_file == (tmp_path / "var/keys/unit.keys").resolve()


@pytest.mark.parametrize(
    ("text", "size"), [("1 GiB", 1024**3), ("500 MB", 500_000_000), ("0", 0), ("1.5 KiB", 1536)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_cli_check_and_run_exit_78_with_the_report(tmp_path: Path) -> None:
    good = write(tmp_path, EXAMPLE)
    checked = waystation("config", "check", str(good))
    assert checked.returncode == 0, checked.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.replace("allowed_callers", "allowed_caller"))
    for args in (("config", "check", str(bad)), ("run", "--config", str(bad))):
        done = waystation(*args)
        assert done.returncode == 78
        assert f"{bad}:7: ingest.allowed_caller:" in done.stderr
        assert "did you mean 'allowed_callers'?" in done.stderr
    missing = waystation("config", "check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 78 and "no such configuration file" in missing.stderr
