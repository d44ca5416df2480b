"""The C-STORE / C-ECHO service class provider.

The answer to every C-STORE is decided here, and each failure has its status:

    0x0000  stored durably and encrypted (or identical bytes already held)
    0xA700  out of resources: spool below min_free, a write or fsync failed
    0xC210  cannot understand: the data set could not be decoded
    0xC211  an unexpected error; contained, logged, the service goes on
    0x0124  refused: not authorised - a caller admitted only to send Storage Commitment
            reports (a destination's AE title added to allowed_callers) sent an object

Storage Commitment reports (N-EVENT-REPORT, Push Model) that destinations send on an
association of their own are accepted here, with SCP/SCU role selection (the destination
proposes the SCP role), and handed to the ``commitment_reports`` handler.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, cast

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from router.config.model import IngestConfig
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.errors import StorageFault, StorageFull
from router.ingest import pynetdicom_setup
from router.ingest.attributes import UnreadableObject, read_attributes
from router.spool.incoming import IncomingObject
from router.spool.spool import Spool

log = logging.getLogger("waystation.ingest")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_UNEXPECTED = 0xC211
STATUS_NOT_AUTHORISED = 0x0124
STATUS_PROCESSING_FAILURE = 0x0110
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"

Planner = Callable[[ObjectAttributes, Source], Sequence[PlannedDelivery]]
AlarmSink = Callable[[str, str], None]
# Handles one N-EVENT-REPORT event; returns its response status.
ReportSink = Callable[[evt.Event], int]

# pynetdicom's network thread polls every 1 ms by default; each hand-off between its threads
# costs up to that. 0.2 ms roughly doubles small-object throughput for little idle CPU.
_DUL_POLL_SECONDS = 0.0002


class IngestServer:
    """Listens for associations and stores every received object in the spool."""

    def __init__(
        self,
        config: IngestConfig,
        *,
        ae_title: str,
        spool: Spool,
        planner: Planner,
        alarm: AlarmSink,
        wanted_keywords: frozenset[str] = frozenset(),
        on_stored: Callable[[Sequence[PlannedDelivery]], None] = lambda deliveries: None,
        commitment_reports: ReportSink | None = None,
        report_callers: Sequence[str] = (),
    ) -> None:
        pynetdicom_setup.configure()
        self.config = config
        self.spool = spool
        self._planner = planner
        self._alarm = alarm
        # The attributes routing rules test; only these are decoded from each header.
        self._wanted_keywords = wanted_keywords
        self._on_stored = on_stored
        self._commitment_reports = commitment_reports
        # Destinations that may call only to report commitment results (when allowed_callers
        # restricts who may call at all).
        self._report_only = (
            set(report_callers) - set(config.allowed_callers) if config.allowed_callers else set()
        )
        self._server: ThreadedAssociationServer | None = None
        self._open: dict[int, set[IncomingObject]] = {}
        self._open_lock = threading.Lock()
        self.stored = 0
        self.last_received_at: float | None = None
        self.ae = self._make_ae(ae_title)

    def _make_ae(self, ae_title: str) -> AE:
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = self.config.max_pdu
        ae.maximum_associations = self.config.max_associations
        ae.acse_timeout = self.config.acse_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        if self.config.allowed_callers:
            ae.require_calling_aet = sorted(set(self.config.allowed_callers) | self._report_only)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        if self._commitment_reports is not None:
            # The destination sends its report as the Storage Commitment SCP on an association
            # it opens: accept its proposed SCP role (and not an SCU role: this unit commits
            # nothing for others).
            ae.add_supported_context(
                STORAGE_COMMITMENT_PUSH_MODEL,
                [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                scu_role=False,
                scp_role=True,
            )
        return ae

    def start(self) -> None:
        """Start listening (returns at once; associations run in their own threads)."""
        pynetdicom_setup.register_sink_factory(self.ae, self._new_sink)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        if self._commitment_reports is not None:
            handlers.append((evt.EVT_N_EVENT_REPORT, self._on_event_report))
        self._server = self.ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers
        )
        log.info("ingest listening on %s as %s", self.config.listen, self.ae.ae_title)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def refuse_new_associations(self) -> None:
        """Stop accepting associations; ongoing ones finish."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def stop(self) -> None:
        """Stop listening and end the associations."""
        self.ae.shutdown()
        pynetdicom_setup.unregister_sink_factory(self.ae)

    # -- handlers (run in pynetdicom's threads: every exception is contained) ---------------

    def _new_sink(self, assoc: Any) -> IncomingObject:
        try:
            incoming = self.spool.begin()
        except Exception as exc:  # e.g. the day's folder cannot be created: refuse, do not crash
            log.error("cannot start receiving an object: %s", exc)
            incoming = IncomingObject(
                self.spool.blob_root,
                data_key=b"",
                cipher=self.spool.cipher,
                refused=StorageFault(f"cannot start receiving: {exc}"),
            )
        with self._open_lock:
            self._open.setdefault(id(assoc), set()).add(incoming)
        return incoming

    def _forget(self, assoc: Any, incoming: IncomingObject) -> None:
        with self._open_lock:
            self._open.get(id(assoc), set()).discard(incoming)

    def _on_open(self, event: evt.Event) -> None:
        dul: Any = event.assoc.dul
        dul._run_loop_delay = _DUL_POLL_SECONDS
        with contextlib.suppress(AttributeError, OSError):
            dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_close(self, event: evt.Event) -> None:
        # An association that ends mid-object leaves its sink behind: remove the partial blob.
        with self._open_lock:
            leftovers = self._open.pop(id(event.assoc), set())
        for incoming in leftovers:
            incoming.discard()

    def _on_event_report(self, event: evt.Event) -> tuple[int, None]:
        sink = self._commitment_reports
        request: Any = event.request
        if sink is None or str(request.AffectedSOPClassUID) != STORAGE_COMMITMENT_PUSH_MODEL:
            return 0x0118, None  # no such SOP class
        try:
            return sink(event), None
        except Exception as exc:  # contained; the type only (the text can quote values)
            log.error("storage commitment report could not be handled: %s", type(exc).__name__)
            return STATUS_PROCESSING_FAILURE, None

    def _on_store(self, event: evt.Event) -> int:
        incoming = getattr(event.request, "_dataset_file", None)
        if not isinstance(incoming, IncomingObject):
            log.error("C-STORE without a spooled data set; refusing")
            return STATUS_UNEXPECTED
        if str(event.assoc.requestor.ae_title).strip() in self._report_only:
            self._forget(event.assoc, incoming)
            incoming.discard()
            log.warning(
                "C-STORE from %s refused: it may only send Storage Commitment reports",
                event.assoc.requestor.ae_title,
            )
            return STATUS_NOT_AUTHORISED
        # Claim the object first: from here on only this handler may remove its blob, even if
        # the connection closes while it is being committed.
        self._forget(event.assoc, incoming)
        try:
            return self._store(event, incoming)
        except Exception as exc:
            # Exception text can quote patient data; log the kind and where it happened.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "unexpected %s at %s:%d while storing object %s; answered 0xC211",
                type(exc).__name__,
                frame.filename,
                frame.lineno or 0,
                incoming.object_id,
            )
            incoming.discard(keep_published=True)
            return STATUS_UNEXPECTED

    def _store(self, event: evt.Event, incoming: IncomingObject) -> int:
        assoc = event.assoc
        request: Any = event.request
        try:
            incoming.finish()
        except (StorageFull, StorageFault) as exc:
            return self._refuse(incoming, exc)
        try:
            with incoming.reader() as reader:
                attributes = read_attributes(
                    cast(BinaryIO, reader),
                    command_sop_class=str(request.AffectedSOPClassUID),
                    command_sop_instance=str(request.AffectedSOPInstanceUID),
                    wanted_keywords=self._wanted_keywords,
                )
        except UnreadableObject as exc:
            # The parser's message can quote values from the object: log only its kind.
            log.warning(
                "object from %s could not be decoded (%s); answered 0xC210",
                assoc.requestor.ae_title,
                exc.kind,
            )
            incoming.discard()
            return STATUS_CANNOT_UNDERSTAND
        source = Source(
            calling_ae=assoc.requestor.ae_title,
            called_ae=assoc.acceptor.ae_title,
            peer=str(assoc.requestor.address),
        )
        deliveries = self._planner(attributes, source)
        try:
            result = self.spool.store(incoming, attributes, source, deliveries)
        except (StorageFull, StorageFault) as exc:
            return self._refuse(incoming, exc)
        self.stored += 1
        self.last_received_at = time.time()
        if result.deliveries:
            self._on_stored(deliveries)  # committed: the destinations' workers may start now
        log.debug(
            "object %s %s (%d bytes, %s) from %s, %d deliveries",
            result.object_id,
            result.outcome,
            incoming.size,
            attributes.sop_class_uid,
            source.calling_ae,
            result.deliveries,
        )
        return STATUS_SUCCESS

    def _refuse(self, incoming: IncomingObject, exc: Exception) -> int:
        # A blob already renamed into place stays for recovery: a commit that reported
        # failure may still have reached the disk.
        incoming.discard(keep_published=True)
        code = "spool-full" if isinstance(exc, StorageFull) else "storage-fault"
        self._alarm(code, str(exc))
        log.error("object refused with 0xA700: %s", exc)
        return STATUS_OUT_OF_RESOURCES
