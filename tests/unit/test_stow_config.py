"""`type = "stow"` destinations in the configuration: defaults, paths, and clear errors that
name the file, line and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.config import load_config
from router.config.model import StowDestination
from router.control.certificates import certificate_health
from router.errors import ConfigError
from tests.support.certs import TestCA

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

HEAD = """\
[spool]
path = "var/spool"

[[destinations]]
name = "cloud"
type = "stow"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "waystation.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


def test_the_documented_example_loads_with_its_defaults(tmp_path: Path) -> None:
    section = DOCS.read_text().split("#### STOW-RS destinations", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    config = load_config(write(tmp_path, '[spool]\npath = "var/spool"\n' + example.group(1)))
    [cloud] = config.destinations
    assert isinstance(cloud, StowDestination)
    assert cloud.url.startswith("https://")
    assert cloud.auth == "bearer"
    assert cloud.token_file is not None and cloud.token_file.is_absolute()
    assert cloud.max_request_size == 4 * 1024 * 1024
    assert cloud.batch == "study"
    assert cloud.associations == cloud.requests and not cloud.storage_commitment


def test_relative_secret_and_certificate_paths_are_made_absolute(tmp_path: Path) -> None:
    text = HEAD + (
        'url = "https://pacs.example.org/dicom-web"\nauth = "basic"\nusername = "unit"\n'
        'password_file = "secrets/pw"\nca_file = "ca.pem"\nclient_cert = "c.pem"\n'
        'client_key = "c.key"\nmax_request_size = "8 MiB"\nmax_instances = 20\n'
    )
    [cloud] = load_config(write(tmp_path, text)).destinations
    assert isinstance(cloud, StowDestination)
    assert cloud.password_file == (tmp_path / "secrets/pw").resolve()
    assert cloud.client_key == (tmp_path / "c.key").resolve()
    assert cloud.max_request_size == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ('url = "http://pacs:8042/dicom-web"\n', "url", "insecure_plain_http = true"),
        ('url = "https://user:secret@pacs/dicom-web"\n', "url", "credentials go in password_file"),
        ('url = "pacs/dicom-web"\n', "url", "not a DICOMweb service URL"),
        ('url = "https://pacs"\nauth = "basic"\nusername = "u"\n', "auth", "needs username"),
        ('url = "https://pacs"\nauth = "bearer"\n', "auth", 'auth = "bearer" needs token_file'),
        ('url = "https://pacs"\ntoken_file = "t"\n', "auth", "token_file applies to"),
        ('url = "https://pacs"\nclient_cert = "c.pem"\n', "client_key", "go together"),
        ('url = "https://pacs"\nauth = "digest"\n', "auth", "'none', 'basic' or 'bearer'"),
        ('url = "https://pacs"\nmax_instances = 0\n', "max_instances", "equal to 1"),
        ('url = "https://pacs"\nmax_request_size = "1 KiB"\n', "max_request_size", "65536"),
        ('url = "https://pacs"\nrequests = 9\n', "requests", "less than or equal to 8"),
    ],
)  # fmt: skip
def test_mistakes_are_explained_with_file_line_and_key(
    tmp_path: Path, body: str, key: str, expected: str
) -> None:
    text = HEAD + body
    [problem] = problems(tmp_path, text)
    lines = text.splitlines()
    # The key's own line when it is written, else the destination's table.
    written = [i for i, line in enumerate(lines, 1) if line.startswith(f"{key} =")]
    line = written[0] if written else lines.index("[[destinations]]") + 1
    assert problem.startswith(f"{tmp_path / 'waystation.toml'}:{line}: destinations[0].{key}: ")
    assert expected in problem, problem
    assert "secret" not in problem  # a password in a URL is never repeated


def test_a_misspelt_key_suggests_the_stow_key(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, HEAD + 'url = "https://pacs"\nmax_instance = 3\n')
    assert ":8: destinations[0].max_instance: unknown key" in problem
    assert "did you mean 'max_instances'?" in problem


def test_the_client_certificate_expiry_is_watched(tmp_path: Path) -> None:
    unit = TestCA(tmp_path / "pki").issue("unit", days=10)
    text = HEAD + (
        f'url = "https://pacs"\nclient_cert = "{unit.cert}"\nclient_key = "{unit.key}"\n'
    )
    [item] = certificate_health(load_config(write(tmp_path, text)))
    assert item.name == "tls certificate (cloud)"
    assert item.state == "warn" and "renew it" in item.detail


def test_a_rate_table_applies_but_not_polite_mode(tmp_path: Path) -> None:
    rate = '[destinations.rate]\ncap = "2 Mbit/s"\ndaily_budget = "3 GB"\n'
    [cloud] = load_config(write(tmp_path, HEAD + 'url = "https://pacs"\n' + rate)).destinations
    assert isinstance(cloud, StowDestination)
    assert cloud.rate.policy().bits_per_second == 2_000_000
    [problem] = problems(tmp_path, HEAD + 'url = "https://pacs"\n' + rate + "polite = true\n")
    assert "destinations[0].rate: polite mode is for hub destinations only" in problem
