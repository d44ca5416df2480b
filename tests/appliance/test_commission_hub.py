"""Commissioning checks every hub destination against a real hub over TLS: it answers and
accepts this unit's token (valid), refuses it (revoked, unknown), is unreachable, or the unit
has no token yet (the report says how to get one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.commission import commission, load
from router.config import load_config
from router.hub.service import Hub
from tests.support.hub import hub_config, request, self_signed, start_hub
from tests.support.peers import free_port


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[tuple[Hub, Path]]:
    directory = tmp_path / "hub"
    directory.mkdir()
    cert, key = self_signed(directory)
    config = hub_config(directory)
    assert config.hub is not None
    tls = config.hub.model_copy(
        update={"insecure_plain_http": False, "tls_cert": cert, "tls_key": key}
    )
    hub = start_hub(config.model_copy(update={"hub": tls}))
    yield hub, cert
    hub.stop()


def _hub_table(name: str, url: str, token: Path, ca: Path | None) -> str:
    lines = [
        "[[destinations]]",
        f'name = "{name}"',
        'type = "hub"',
        f'url = "{url}"',
        f'token_file = "{token}"',
    ]
    if ca is not None:
        lines.append(f'ca_file = "{ca}"')
    return "\n".join(lines) + "\n"


def test_commissioning_checks_each_hub_with_the_units_token(
    tmp_path: Path, tls_hub: tuple[Hub, Path]
) -> None:
    hub, ca = tls_hub
    url = f"https://127.0.0.1:{hub.port}"
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "valid").write_text(hub.units.enroll("CLINIC_A") + "\n")
    (tokens / "revoked").write_text(hub.units.enroll("CLINIC_B") + "\n")
    assert hub.units.revoke("CLINIC_B")
    (tokens / "unknown").write_text("wst_" + "x" * 43 + "\n")
    tables = [
        _hub_table("valid", url, tokens / "valid", ca),
        _hub_table("revoked", url, tokens / "revoked", ca),
        _hub_table("unknown", url, tokens / "unknown", ca),
        _hub_table("untrusted", url, tokens / "valid", None),  # no CA: the system's CAs
        _hub_table("missing", url, tokens / "never-enrolled", ca),
        _hub_table("down", f"https://127.0.0.1:{free_port()}", tokens / "valid", ca),
    ]
    path = tmp_path / "state" / "waystation.toml"
    path.parent.mkdir()
    path.write_text(
        f"""
[unit]
name = "clinic-a"
ae_title = "CLINIC_A"
[ingest]
listen = "127.0.0.1:{free_port()}"
[spool]
path = "spool"
[delivery]
connect_timeout = "2 s"
"""
        + "\n".join(tables)
    )
    report = commission(path)
    results = {t.name.split(" ")[1]: t for t in report.tests}
    assert sorted(results) == sorted(
        ["valid", "revoked", "unknown", "untrusted", "missing", "down"]
    )
    assert results["valid"].passed
    assert results["valid"].detail == "hub accepts this unit as CLINIC_A"
    for name in ("revoked", "unknown", "untrusted", "missing", "down"):
        assert not results[name].passed, name
    assert results["revoked"].detail.startswith("hub refuses this unit's token (")
    assert "revoked" in results["revoked"].detail
    assert "waystation hub enroll" in results["revoked"].detail
    assert results["unknown"].detail.startswith("hub refuses this unit's token (unknown token)")
    assert "not trusted" in results["untrusted"].detail
    assert results["missing"].detail.startswith("no token file")
    assert "waystation hub enroll" in results["missing"].detail
    assert str(tokens / "never-enrolled") in results["missing"].detail
    assert results["down"].detail.startswith("hub unreachable")
    for test in report.tests:
        assert test.started_at <= test.finished_at
    assert not report.passed
    # The tokens never appear in the report; the results do, in both copies, with times.
    directory = load_config(path).state_dir / "commissioning"
    text = (directory / "report.txt").read_text()
    html = (directory / "report.html").read_text()
    secret = (tokens / "valid").read_text().strip()
    for rendered in (text, html, (directory / "report.json").read_text()):
        assert secret not in rendered
        assert "hub accepts this unit as CLINIC_A" in rendered
    assert "[PASS] hub valid" in text and "[FAIL] hub missing" in text
    assert "hub refuses this unit&#x27;s token" in html
    assert load(directory).tests[0].detail == results["valid"].detail


def test_whoami_needs_a_valid_token(tmp_path: Path) -> None:
    hub = start_hub(hub_config(tmp_path))
    try:
        token = hub.units.enroll("CLINIC_C")
        status, _headers, body = request(hub.port, "GET", "/v1/whoami", token=token)
        assert (status, body) == (200, {"unit": "CLINIC_C"})
        status, _headers, _body = request(hub.port, "GET", "/v1/whoami", token="wst_nope")
        assert status == 401
        hub.units.revoke("CLINIC_C")
        status, _headers, body = request(hub.port, "GET", "/v1/whoami", token=token)
        assert status == 403 and "revoked" in body["error"]
    finally:
        hub.stop()
