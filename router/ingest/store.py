"""Storing one received object: the C-STORE status is decided here, and each failure has its own.

0x0000  stored durably and encrypted (or identical bytes already held)
0xA700  out of resources: spool below min_free, a write or fsync failed
0xC210  cannot understand: the data set could not be decoded
0xC211  an unexpected error; contained, logged, the service goes on
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence

from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.dicom.depth import DEFAULT_MAX_SEQUENCE_DEPTH
from router.errors import StorageFault, StorageFull
from router.ingest.attributes import UnreadableObject, read_attributes, read_attributes_early
from router.spool.incoming import IncomingObject
from router.spool.spool import Spool

log = logging.getLogger("waystation.ingest")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_UNEXPECTED = 0xC211

Planner = Callable[[ObjectAttributes, Source], Sequence[PlannedDelivery]]
AlarmSink = Callable[[str, str], None]


class ObjectStore:
    """Turns a received data set into a held object (or a refusal with its status)."""

    def __init__(
        self,
        spool: Spool,
        *,
        planner: Planner,
        alarm: AlarmSink,
        wanted_keywords: frozenset[str] = frozenset(),
        on_stored: Callable[[Sequence[PlannedDelivery]], None] = lambda deliveries: None,
        max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
    ) -> None:
        self.spool = spool
        self._planner = planner
        self._alarm = alarm
        # The attributes routing rules test; only these are decoded from each header.
        self._wanted_keywords = wanted_keywords
        self._on_stored = on_stored
        self._max_sequence_depth = max_sequence_depth
        self.stored = 0
        self.last_received_at: float | None = None

    def begin(self) -> IncomingObject:
        """A sink for the next object's bytes. Never raises: a sink that cannot be made is
        returned refused, so the object is read off the wire and answered 0xA700."""
        try:
            return self.spool.begin()
        except Exception as exc:  # e.g. the day's folder cannot be created
            log.error("cannot start receiving an object: %s", type(exc).__name__)
            return IncomingObject(
                self.spool.blob_root,
                data_key=b"",
                cipher=self.spool.cipher,
                refused=StorageFault(f"cannot start receiving: {exc}"),
            )

    def read_early(
        self, incoming: IncomingObject, *, sop_class: str, sop_instance: str
    ) -> ObjectAttributes | None:
        """The object's attributes read from the part received so far, or None when that
        part cannot tell (see read_attributes_early). Why: the header is read while the
        sender still streams the pixel data into the socket, instead of after the last
        byte, when the sender waits for the answer. Never raises."""
        try:
            prefix = incoming.received_prefix()
            if prefix is None:
                return None
            return read_attributes_early(
                prefix,
                command_sop_class=sop_class,
                command_sop_instance=sop_instance,
                wanted_keywords=self._wanted_keywords,
                max_sequence_depth=self._max_sequence_depth,
            )
        except Exception:  # the complete object is read as usual
            return None

    def complete(
        self,
        incoming: IncomingObject,
        *,
        sop_class: str,
        sop_instance: str,
        source: Source,
        early: ObjectAttributes | None = None,
    ) -> int:
        """Store a fully received object; returns the C-STORE status. Every exception is
        contained: the answer is a status, and the service goes on.

        ``early``: the attributes :meth:`read_early` read from this object's first bytes
        (the same as reading them from the whole object), so its header is not read again.
        """
        try:
            return self._store(incoming, sop_class, sop_instance, source, early)
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

    def _store(
        self,
        incoming: IncomingObject,
        sop_class: str,
        sop_instance: str,
        source: Source,
        early: ObjectAttributes | None,
    ) -> int:
        try:
            incoming.finish()
        except (StorageFull, StorageFault) as exc:
            return self._refuse(incoming, exc)
        try:
            attributes = (
                early if early is not None else self._read(incoming, sop_class, sop_instance)
            )
        except UnreadableObject as exc:
            # The parser's message can quote values from the object: log only its kind.
            log.warning(
                "object from %s could not be decoded (%s); answered 0xC210",
                source.calling_ae,
                exc.kind,
            )
            incoming.discard()
            return STATUS_CANNOT_UNDERSTAND
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

    def _read(
        self, incoming: IncomingObject, sop_class: str, sop_instance: str
    ) -> ObjectAttributes:
        with incoming.header_reader() as reader:
            return read_attributes(
                reader,
                command_sop_class=sop_class,
                command_sop_instance=sop_instance,
                wanted_keywords=self._wanted_keywords,
                max_sequence_depth=self._max_sequence_depth,
            )

    def _refuse(self, incoming: IncomingObject, exc: Exception) -> int:
        # A blob already renamed into place stays for recovery: a commit that reported
        # failure may still have reached the disk.
        incoming.discard(keep_published=True)
        code = "spool-full" if isinstance(exc, StorageFull) else "storage-fault"
        self._alarm(code, str(exc))
        log.error("object refused with 0xA700: %s", exc)
        return STATUS_OUT_OF_RESOURCES
