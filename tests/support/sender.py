"""A pynetdicom C-STORE sender for tests: records exactly which objects were acknowledged."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

ON_ACK = Callable[[Path, int], None]


@dataclass
class SendResult:
    """Statuses by file; ``acknowledged`` holds files answered 0x0000."""

    statuses: dict[Path, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def acknowledged(self) -> list[Path]:
        """Files the receiver answered with success."""
        return [p for p, s in self.statuses.items() if s == 0]


def return_stolen_responses(assoc: Association) -> None:
    """Work around a race in pynetdicom 3.0's requestor: ``send_c_store`` pauses the reactor
    thread by clearing an event and waiting for ``_is_paused``, which the reactor may still
    show from its previous pass; the reactor then takes a response that arrives quickly off
    the DIMSE queue and drops it as "unexpected", and ``send_c_store`` waits until its DIMSE
    timeout (docs/architecture.md, TCP_NODELAY). The faster the receiver answers, the more
    often that happens. Here a response the reactor takes goes back on the queue, where the
    waiting ``send_c_store`` finds it; this sender never has requests of its own to serve."""
    serve = assoc._serve_request

    def serve_or_return(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_return  # type: ignore[method-assign]


def _contexts_for(files: list[Path]) -> list[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for path in files:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    return sorted(pairs)


def send(
    files: Iterable[Path],
    port: int,
    *,
    calling_ae: str = "TESTSCU",
    called_ae: str = "WAYSTATION",
    on_ack: ON_ACK | None = None,
    timeout: float = 120.0,
    tls: ssl.SSLContext | None = None,
) -> SendResult:
    """Send files over one association, each in its own transfer syntax (over TLS with
    ``tls``, checking the server's name as "localhost")."""
    files = list(files)
    result = SendResult()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in _contexts_for(files):
        ae.add_requested_context(sop_class, [syntax])
    if len(ae.requested_contexts) > 128:
        raise ValueError("too many presentation contexts for one association")
    tls_args = (tls, "localhost") if tls is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, tls_args=tls_args)
    if not assoc.is_established:
        result.error = "association not established"
        return result
    return_stolen_responses(assoc)
    try:
        for path in files:
            status = assoc.send_c_store(path)
            code = int(status.Status) if status and "Status" in status else -1
            result.statuses[path] = code
            if code == 0 and on_ack is not None:
                on_ack(path, code)
            if not assoc.is_established:
                result.error = "association ended"
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def echo_ok(port: int, called_ae: str = "WAYSTATION") -> bool:
    """Whether the router accepts an association and answers C-ECHO now."""
    ae = AE(ae_title="ECHOSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 3
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()
