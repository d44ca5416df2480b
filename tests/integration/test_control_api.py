"""The control API against a real router: every read, every action (each audited with the
peer's Unix user), permissions from the socket's credentials, and clear errors for bad
requests."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.control.auth import write_pin
from router.control.client import ControlClient, ControlError, ControlUnreachable
from tests.support import dicomgen
from tests.support.peers import Storescp
from tests.support.router_proc import (
    REPO,
    RouterProcess,
    delivery_states,
    destination_toml,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)
from tests.support.sender import send

PIN = "2580"
PATIENT = dicomgen.random_patient(41)


def unit(
    tmp_path: Path, pacs_port: int, *, extra: str = "", name: str = "unit"
) -> tuple[Path, int]:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    port = free_port()
    config = write_config(
        directory,
        port=port,
        destinations=destination_toml("pacs", "STORESCP", pacs_port)
        + route_toml("everything", "pacs"),
        extra=fast_retry_toml() + extra,
    )
    write_pin(directory / "operator.pin", PIN)
    return config, port


def studies_of(tmp_path: Path, count: int, studies: int) -> list[Path]:
    return dicomgen.make_tiny_objects(
        tmp_path / f"objects-{count}-{studies}", count, studies=studies, patient=PATIENT
    )


def audit_actions(client: ControlClient) -> list[tuple[str, str, str, str]]:
    return [(e.user, e.action, e.target, e.outcome.split(":")[0]) for e in client.audit()]


def test_reads_describe_a_unit_that_delivered_everything(tmp_path: Path) -> None:
    files = studies_of(tmp_path, 8, 2)
    with Storescp(tmp_path / "scp") as scp:
        config, port = unit(tmp_path, scp.port)
        with RouterProcess(config) as router:
            client = router.client()
            assert send(files, port).acknowledged == files
            assert wait_for(lambda: delivery_states(config).get("delivered") == 8)
            assert wait_for(lambda: client.status().banner.text == "ALL STUDIES DELIVERED")
            status = client.status()
            assert status.banner.level == "ok"
            assert (status.received_today, status.delivered_today) == (2, 2)
            assert status.spool.held_objects == 8
            assert status.spool.days_left is not None and status.spool.days_left > 0
            assert status.unit_name == "test-unit" and status.ae_title == "WAYSTATION"
            [pacs] = client.destinations()
            assert pacs.state == "idle" and pacs.queued_total == 0
            assert pacs.last_success_at is not None and pacs.address.startswith("STORESCP@")

            masked = client.studies()
            assert len(masked) == 2 and {s.state for s in masked} == {"delivered"}
            assert all(s.objects == 4 and s.modalities == ["CT"] for s in masked)
            assert all(s.destinations["pacs"].delivered == 4 for s in masked)
            assert masked[0].last_received_at >= masked[1].last_received_at  # newest first
            family = PATIENT.name.split("^")[0]
            assert masked[0].masked and masked[0].patient_name.startswith(family[0] + "***")
            raw = json.dumps([s.model_dump() for s in masked])
            given = PATIENT.name.split("^")[1]
            assert given not in raw and PATIENT.patient_id not in raw
            # The study id is opaque: never the Study Instance UID.
            assert all(len(s.study_id) == 32 and "." not in s.study_id for s in masked)

            unmasked = client.studies(pin=PIN)
            assert {s.patient_name for s in unmasked} == {PATIENT.name}
            assert {s.patient_id for s in unmasked} == {PATIENT.patient_id}
            assert not unmasked[0].masked
            with pytest.raises(ControlError) as wrong:
                client.studies(pin="9999")
            assert (wrong.value.http_status, wrong.value.error.error) == (403, "pin-wrong")
            assert client.studies(query=PATIENT.patient_id, pin=PIN)
            assert client.studies(query=PATIENT.patient_id) == []  # masked: no PHI search
            assert len(client.studies(state="delivered", limit=1)) == 1
            assert client.studies(state="failed") == []
            assert len(client.studies(limit=1, offset=1)) == 1

            detail = client.study(masked[0].study_id)
            assert len(detail.objects) == 4
            assert all(o.deliveries[0].state == "delivered" for o in detail.objects)
            events = {e.event for e in detail.history}
            assert {"received", "routed", "delivered"} <= events
            history = client.history(detail.objects[0].object_id)
            assert [e.event for e in history][:2] == ["received", "routed"]
            assert client.alarms() == []
            assert ("root", "unmask", "studies", "ok") in audit_actions(client)
            assert ("root", "unmask", "studies", "refused") in audit_actions(client)


def test_pause_survives_a_restart_and_retry_resume_echo_act_on_a_down_destination(
    tmp_path: Path,
) -> None:
    files = studies_of(tmp_path, 3, 1)
    pacs_port = free_port()
    config, port = unit(tmp_path, pacs_port)
    with RouterProcess(config) as router:
        client = router.client()
        assert send(files, port).acknowledged == files
        assert wait_for(lambda: client.status().destinations[0].state == "down")
        banner = client.status().banner
        assert banner.level == "attention"
        assert banner.text.startswith("ATTENTION: pacs unreachable since ")
        assert banner.text.endswith(" - 1 study safe on this unit")
        assert client.destinations()[0].reason.startswith("pacs is not accepting connections")
        echo = client.echo("pacs")
        assert not echo.ok and "pacs" in echo.message
        result = client.pause("pacs", "PACS maintenance")
        assert result.ok and result.affected == 3 and result.audit_seq is not None
        assert client.destinations()[0].state == "paused"
    with RouterProcess(config) as router:
        client = router.client()
        [pacs] = client.destinations()
        assert pacs.state == "paused" and pacs.paused and pacs.paused_by == "root"
        assert pacs.paused_reason == "PACS maintenance"
        assert pacs.queued_total == 3
        with Storescp(tmp_path / "scp", port=pacs_port) as scp:
            assert client.echo("pacs").ok
            assert client.resume("pacs", "maintenance over").ok
            assert client.retry("pacs").ok
            scp.wait_for_files(3)
            assert wait_for(lambda: client.status().banner.text == "ALL STUDIES DELIVERED")
        actions = audit_actions(client)
        for expected in [
            ("root", "echo", "pacs", "failed"),
            ("root", "pause", "pacs", "ok"),
            ("root", "echo", "pacs", "ok"),
            ("root", "resume", "pacs", "ok"),
            ("root", "retry", "pacs", "ok"),
        ]:
            assert expected in actions
        assert [e.reason for e in client.audit() if e.action == "pause"] == ["PACS maintenance"]


def test_priority_reorders_a_paused_queue(tmp_path: Path) -> None:
    with Storescp(tmp_path / "scp") as scp:
        config, port = unit(tmp_path, scp.port)
        with RouterProcess(config) as router:
            client = router.client()
            client.pause("pacs")
            first = studies_of(tmp_path, 6, 1)
            second = dicomgen.make_tiny_objects(tmp_path / "second", 6, studies=1, seed=9)
            assert send(first, port).acknowledged == first
            assert send(second, port).acknowledged == second
            later = client.studies()[0]  # newest first: the second study
            result = client.set_priority(later.study_id, "stat", "ward is waiting")
            assert result.affected == 6
            assert client.studies()[0].priority == "stat"
            history = client.history(client.study(later.study_id).objects[0].object_id)
            assert history[-1].event == "priority-changed"
            assert history[-1].detail["by"] == "root"
            client.resume("pacs")
            scp.wait_for_files(12)
            assert wait_for(lambda: delivery_states(config).get("delivered") == 12)

            def delivered_at(study_id: str) -> list[float]:
                detail = client.study(study_id)
                return [d.updated_at for o in detail.objects for d in o.deliveries]

            earlier = client.studies()[1]
            assert max(delivered_at(later.study_id)) < min(delivered_at(earlier.study_id))
            assert ("root", "priority", later.study_id, "ok") in audit_actions(client)
            with pytest.raises(ControlError) as bad:
                client.set_priority(later.study_id, "asap")  # type: ignore[arg-type]
            assert bad.value.http_status == 400 and "stat" in bad.value.error.hint


def test_resend_delivers_again_and_discard_needs_pin_and_reason(tmp_path: Path) -> None:
    files = studies_of(tmp_path, 4, 1)
    with Storescp(tmp_path / "scp") as scp:
        config, port = unit(tmp_path, scp.port)
        with RouterProcess(config) as router:
            client = router.client()
            assert send(files, port).acknowledged == files
            scp.wait_for_files(4)
            [study] = client.studies()
            with pytest.raises(ControlError) as no_pin:
                client.resend(study.study_id, "pacs", pin="")
            assert no_pin.value.error.error == "pin-required"
            with pytest.raises(ControlError) as unknown:
                client.resend(study.study_id, "nowhere", pin=PIN)
            assert (unknown.value.http_status, unknown.value.error.error) == (404, "not-found")
            result = client.resend(study.study_id, "pacs", pin=PIN, reason="PACS lost them")
            assert result.ok and result.affected == 4
            scp.wait_for_files(8)  # every object again (storescp keeps both copies)
            assert wait_for(lambda: delivery_states(config).get("delivered") == 4)

            client.pause("pacs")
            more = dicomgen.make_tiny_objects(tmp_path / "more", 3, studies=1, seed=5)
            assert send(more, port).acknowledged == more
            waiting = client.studies(state="waiting")[0]
            for kwargs, code in [
                ({"pin": PIN, "reason": ""}, "bad-request"),
                ({"pin": "", "reason": "test images"}, "pin-required"),
                ({"pin": "1111", "reason": "test images"}, "pin-wrong"),
            ]:
                with pytest.raises(ControlError) as refused:
                    client.discard(waiting.study_id, **kwargs)  # type: ignore[arg-type]
                assert refused.value.error.error == code
            assert client.study(waiting.study_id).summary.state == "waiting"
            result = client.discard(waiting.study_id, pin=PIN, reason="test images")
            assert result.affected == 3
            assert client.study(waiting.study_id).summary.state == "discarded"
            assert delivery_states(config).get("discarded") == 3
            history = client.history(client.study(waiting.study_id).objects[0].object_id)
            assert history[-1].event == "discarded"
            assert history[-1].detail == {"by": "root", "reason": "test images"}
            actions = audit_actions(client)
            assert actions.count(("root", "discard", waiting.study_id, "refused")) == 3
            assert ("root", "discard", waiting.study_id, "ok") in actions
            assert ("root", "resend", study.study_id, "ok") in actions
            assert ("root", "resend", study.study_id, "refused") in actions
            # The audit log names studies by their opaque id only: no patient data.
            text = json.dumps([e.model_dump() for e in client.audit(limit=1000)])
            assert PATIENT.patient_id not in text and PATIENT.name not in text


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="ws-ctl-"))
    directory.chmod(0o755)
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


def as_user(socket_path: Path, *groups: str) -> subprocess.CompletedProcess[str]:
    """Call status() as user nobody (group nogroup, no other groups)."""
    code = (
        "import sys\n"
        "from router.control.client import ControlClient, ControlError, ControlUnreachable\n"
        f"client = ControlClient({str(socket_path)!r})\n"
        "try:\n    client.status(); print('OK')\n"
        "except ControlError as e: print('HTTP', e.http_status, e.error.error, e.error.message)\n"
        "except ControlUnreachable as e: print('UNREACHABLE', e)\n"
    )
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    return subprocess.run(
        [*command, sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/"},
    )


def test_users_outside_the_operators_group_are_refused(tmp_path: Path, shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    socket_path = shared_dir / "control.sock"
    extra = f'\n[control]\nsocket = "{socket_path}"\noperators_group = "waystation-test-none"\n'
    config, _ = unit(tmp_path, free_port(), extra=extra)
    with RouterProcess(config) as router:
        mode = socket_path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        # The file mode keeps others out: connect() is refused by the kernel.
        denied = as_user(socket_path)
        assert denied.stdout.startswith("UNREACHABLE"), denied.stderr
        assert "Permission denied" in denied.stdout
        # Even with the file opened up, the daemon checks the peer's credentials.
        socket_path.chmod(0o666)
        forbidden = as_user(socket_path)
        assert forbidden.stdout.startswith("HTTP 403 forbidden user nobody"), forbidden.stderr
        assert router.client().status().unit_name == "test-unit"  # root still may


def test_members_of_the_operators_group_are_allowed(tmp_path: Path, shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    socket_path = shared_dir / "control.sock"
    extra = f'\n[control]\nsocket = "{socket_path}"\noperators_group = "nogroup"\n'
    config, _ = unit(tmp_path, free_port(), extra=extra)
    with RouterProcess(config) as router:
        assert socket_path.stat().st_gid == 65534  # the socket belongs to the group
        allowed = as_user(socket_path)
        assert allowed.stdout.strip() == "OK", allowed.stdout + allowed.stderr
        router.client().pause("pacs")
    assert not socket_path.exists()  # removed on stop


def raw_request(socket_path: Path, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path))
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, payload = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(payload)


def test_bad_requests_get_clear_errors(tmp_path: Path) -> None:
    config, _ = unit(tmp_path, free_port(), extra="")
    with RouterProcess(config) as router:
        path = router.socket_path
        if len(os.fsencode(path)) > 100:
            pytest.skip("socket path too long for a raw connect")
        cases = [
            ("POST", "/v1/destinations/pacs/pause", b"{not json", 400, "bad-request", "JSON"),
            ("POST", "/v1/destinations/pacs/pause", b"[1]", 400, "bad-request", "object"),
            ("POST", "/v1/destinations/nope/pause", b"{}", 404, "not-found", "nope"),
            ("GET", "/v1/nothing-here", b"", 404, "not-found", "no endpoint"),
            ("GET", "/v2/status", b"", 404, "unknown-version", "/v1"),
            ("GET", "/status", b"", 404, "not-found", "no endpoint"),
            ("GET", "/v1/studies?state=lost", b"", 400, "bad-request", "unknown study state"),
            ("GET", "/v1/studies?limit=many", b"", 400, "bad-request", "whole number"),
            ("GET", "/v1/studies?sort=name", b"", 400, "bad-request", "unknown sort"),
            ("GET", "/v1/studies/0123", b"", 404, "not-found", "no study"),
            ("GET", "/v1/objects/0123/history", b"", 404, "not-found", "no object"),
            ("DELETE", "/v1/status", b"", 405, "method-not-allowed", "DELETE"),
            ("POST", "/v1/studies/0123/discard", b'{"reason": "x"}', 403, "pin-required", "PIN"),
            ("POST", "/v1/studies/0123/priority", b"{}", 400, "bad-request", "priority"),
            (
                "POST",
                "/v1/studies/0123/priority",
                b'{"priority": "stat"}',
                404,
                "not-found",
                "no study",
            ),
        ]
        for method, url, body, status, code, words in cases:
            got_status, got = raw_request(path, method, url, body)
            assert (got_status, got["error"]) == (status, code), (url, got)
            assert words in got["message"] + got.get("hint", ""), (url, got)
        client = router.client()
        assert not client.check_pin("1111")
        assert client.check_pin(PIN)
        for _ in range(4):  # five wrong PINs within a minute in all
            assert not client.check_pin("1111")
        with pytest.raises(ControlError) as limited:
            client.check_pin(PIN)
        assert (limited.value.http_status, limited.value.error.error) == (429, "too-many-attempts")
        outcomes = [e.outcome for e in client.audit() if e.action == "pin-check"]
        assert sum(o.startswith("refused: pin-wrong") for o in outcomes) == 5
        assert any(o.startswith("refused: too-many-attempts") for o in outcomes)
    with pytest.raises(ControlUnreachable):
        ControlClient(path).status()


def test_a_second_router_on_the_same_socket_refuses_to_start_and_a_stale_one_is_replaced(
    tmp_path: Path,
) -> None:
    first, _ = unit(tmp_path, free_port(), name="first")
    socket_path = tmp_path / "first" / "control.sock"
    second, _ = unit(
        tmp_path, free_port(), name="second", extra=f'\n[control]\nsocket = "{socket_path}"\n'
    )
    with RouterProcess(first) as router:
        with pytest.raises(RuntimeError, match="another router is serving the control API"):
            RouterProcess(second).start()
        assert router.client().status().unit_name == "test-unit"  # the first one goes on
        router.kill9()
    assert socket_path.exists()  # left behind by kill -9...
    with RouterProcess(first) as router:  # ...and replaced at the next start
        assert router.client().status().banner.level == "ok"


def test_a_full_spool_shows_as_an_alarm_the_banner_and_the_spool_health(tmp_path: Path) -> None:
    directory = tmp_path / "unit"
    directory.mkdir()
    port = free_port()
    config = write_config(directory, port=port, min_free="1000 TiB")
    with RouterProcess(config) as router:
        client = router.client()
        refused = send(studies_of(tmp_path, 1, 1), port)
        assert not refused.acknowledged
        assert wait_for(lambda: bool(client.alarms()))
        [alarm] = client.alarms()
        assert alarm.code == "spool-full"
        status = client.status()
        assert status.banner.level == "attention"
        assert status.banner.text == f"ATTENTION: {alarm.message}"
        assert [a.code for a in status.alarms] == ["spool-full"]
        [spool] = [h for h in status.health if h.name == "spool"]
        assert spool.state == "fault"
        assert status.spool.free_bytes < status.spool.min_free_bytes
