"""Property-based fuzzing (hypothesis) of everything that parses untrusted bytes: PDU framing,
association negotiation, DIMSE command sets, object headers, the configuration and the
control API. Each property says which errors are allowed; anything else is a crash. The "ci"
profile keeps it short; ``make fuzz`` runs the long "fuzz" profile."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config.load import parse_config
from router.dicom import commands
from router.dicom.errors import DicomNetError, ProtocolError
from router.dicom.part10 import part10_header
from router.dicom.pdu import read_pdu
from router.errors import ConfigError
from router.ingest import pynetdicom_setup
from router.ingest.acceptor import negotiate
from router.ingest.attributes import UnreadableObject, read_attributes
from tests.support.router_proc import RouterProcess, free_port, write_config
from tests.unit.test_config import EXAMPLE
from tests.unit.test_ingest_protocol import CT, EXPLICIT, IMPLICIT, _request

VALID_REQUEST = _request([(1, CT, [EXPLICIT, IMPLICIT]), (3, "1.2.840.10008.1.1", [IMPLICIT])])
VALID_COMMAND = commands.c_store_rq(7, CT, "1.2.3.4")
CONFIG_SEED = (
    EXAMPLE
    + '[ingest.tls]\ncert = "unit.crt"\nkey = "unit.key"\nca = "ca.pem"\n'
    + 'ae_certificates = { CT1 = ["CN=ct1"] }\n'
).encode()


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes flipped, cut, repeated or inserted."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        choice = draw(st.integers(0, 3))
        at = draw(st.integers(0, len(data) - 1))
        if choice == 0:
            data[at] = draw(st.integers(0, 255))
        elif choice == 1:
            del data[at : at + draw(st.integers(1, 64))]
        elif choice == 2:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[at:at] = bytes(data[at : at + draw(st.integers(1, 32))]) * draw(st.integers(1, 8))
    return bytes(data)


@given(st.one_of(mutated(VALID_REQUEST), st.binary(max_size=512)))
def test_negotiation_decides_or_raises_an_ordinary_error(request: bytes) -> None:
    try:
        result = negotiate(
            request, ae_title="WAYSTATION", max_pdu=262144, allowed_callers=(), busy=False
        )
    except Exception:  # contained by the association (aborted): but never BaseException
        return
    if result.accepted:
        ids = list(result.contexts)
        assert all(i % 2 == 1 and 1 <= i <= 255 for i in ids)
        assert len(ids) == len(set(ids))
        assert result.answer[:1] == b"\x02"
    else:
        assert result.answer[:1] == b"\x03"


@given(st.one_of(mutated(VALID_REQUEST), st.binary(max_size=300)))
def test_pdu_framing_reads_within_limits_or_raises_its_own_errors(data: bytes) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        try:
            pdu = read_pdu(ours, max_pdata=16384, deadline=time.monotonic() + 2)
        except DicomNetError:
            return
        assert len(pdu.body) <= 1024 * 1024


@given(st.one_of(mutated(VALID_COMMAND), st.binary(max_size=256)))
def test_command_sets_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        command = commands.decode(data)
        # Every property the dispatcher reads must be safe to read.
        for name in ("field", "message_id", "status", "affected_sop_class", "has_dataset"):
            with contextlib.suppress(ProtocolError):
                getattr(command, name)
    except ProtocolError:
        return


def _part10_seed() -> bytes:
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    ds.PatientName = "Fuzz^Test"
    ds.ReferencedSeriesSequence = [Dataset()]
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4.1"
    body = encode(ds, False, True)
    assert body is not None
    return part10_header(CT, "1.2.3.4.5", EXPLICIT) + body


pynetdicom_setup.configure()  # the daemon's pydicom settings: reading validation off
PART10 = _part10_seed()


@pytest.mark.filterwarnings("ignore::UserWarning")  # as in the daemon (pynetdicom_setup)
@given(mutated(PART10))
def test_object_headers_parse_or_raise_unreadable_object(data: bytes) -> None:
    try:
        read_attributes(
            io.BytesIO(data),
            command_sop_class=CT,
            command_sop_instance="1.2.3.4.5",
            wanted_keywords=frozenset({"Modality", "PatientName", "ReferencedSeriesSequence"}),
        )
    except UnreadableObject:
        return


@given(mutated(CONFIG_SEED))
def test_configuration_loads_or_raises_config_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    base = tmp_path_factory.getbasetemp()
    try:
        parse_config(data.decode("utf-8", "replace"), source="fuzz.toml", base=base)
    except ConfigError as exc:
        assert exc.problems


@pytest.fixture(scope="module")
def control_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    directory = tmp_path_factory.mktemp("fuzz-control")
    with RouterProcess(write_config(directory, port=free_port())) as proc:
        yield proc


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self._path))


SEGMENTS = st.sampled_from(
    [
        "v1",
        "status",
        "studies",
        "destinations",
        "queue",
        "history",
        "alarms",
        "audit",
        "pause",
        "resume",
        "retry",
        "echo",
        "priority",
        "..",
        "%00",
        "%2e%2e",
        "x" * 300,
        "",
    ]
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=st.lists(st.one_of(SEGMENTS, st.text(max_size=20)), max_size=5),
    query=st.text(max_size=40),
    body=st.one_of(
        st.binary(max_size=200),
        st.just(b'{"reason": "x", "priority": "urgent"}'),
        st.just(b'{"reason": ' * 50),
        st.just(b"[]"),
    ),
    content_length=st.one_of(st.none(), st.sampled_from(["-1", "abc", "99999999999", " 3"])),
)
def test_control_api_answers_bad_requests_with_4xx(
    control_router: RouterProcess,
    method: str,
    path: list[str],
    query: str,
    body: bytes,
    content_length: str | None,
) -> None:
    from urllib.parse import quote

    url = "/" + "/".join(quote(p, safe="%") for p in path)
    if query:
        url += "?" + quote(query, safe="=&")
    connection = _Unix(control_router.socket_path)
    try:
        connection.putrequest(method, url, skip_accept_encoding=True)
        connection.putheader("Content-Length", content_length or str(len(body)))
        connection.endheaders()
        declared = (content_length or "").strip()
        if content_length is None:
            connection.send(body)
        elif declared.isdigit() and int(declared) <= 1024 * 1024:
            # A declared length is honoured (a client that never sends its body only holds
            # its own connection; the control socket is for operators only).
            connection.send(body[: int(declared)].ljust(int(declared), b" "))
        status = connection.getresponse().status
    finally:
        connection.close()
    assert status < 500, f"{method} {url} -> {status}"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_regression_unknown_vr_in_file_meta_is_unreadable() -> None:
    # Found by `make fuzz`: (0002,0002) with VR "U\0" raised NotImplementedError when the
    # File Meta was read after parsing, outside the containment (0xC211 instead of 0xC210).
    data = PART10.replace(b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00U\x00", 1)
    assert data != PART10
    with pytest.raises(UnreadableObject):
        read_attributes(io.BytesIO(data), command_sop_class=CT, command_sop_instance="1.2.3.4.5")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "BREW"]),
    path=st.sampled_from(
        ["/v1/status", "/v1/alarms", "/v1/destinations/pacs/pause", "/v1/studies/1/discard"]
    ),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "X-Waystation-PIN",
                "Content-Type",
                "Transfer-Encoding",
                "Content-Encoding",
                "Expect",
                "Authorization",
                "Connection",
            ]
        ),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
        max_size=4,
    ),
)
def test_control_api_answers_hostile_headers_with_4xx(
    control_router: RouterProcess, method: str, path: str, headers: dict[str, str]
) -> None:
    connection = _Unix(control_router.socket_path)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        body = b'{"reason": "fuzz"}'
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.send(body)  # a refusal may come (and the socket close) before the body
        status = connection.getresponse().status
    finally:
        connection.close()
    assert status < 500, f"{method} {path} {headers} -> {status}"


def test_regression_control_api_unknown_method_is_405(control_router: RouterProcess) -> None:
    # Found by the header fuzzing above: http.server answered an unknown method with 501.
    connection = _Unix(control_router.socket_path)
    try:
        connection.putrequest("BREW", "/v1/status", skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 405
        assert b'"error":"bad-request"' in response.read().replace(b" ", b"")
    finally:
        connection.close()
