"""Sending held objects to a DICOM C-STORE destination, exactly as they were received.

The sender runs on Waystation's own synchronous upper layer (:mod:`router.dicom`) in the
worker's thread: no pynetdicom threads, no polling, no queue hand-offs (docs/architecture.md
says why). The stored plaintext is a Part 10 file; its data set is streamed from the spool's
decrypting reader straight into ``sendmsg``, so nothing is decoded, re-encoded or written in
plaintext. An association is kept open across objects and batches, and reopened when an
object needs a presentation context the current association lacks.
"""

from __future__ import annotations

import io
import logging
import ssl
import time
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode

from router.config.model import DestinationTlsConfig, DimseDestination
from router.core.retry import Outcome
from router.delivery.changes import apply_changes
from router.dicom import association, commands, tls
from router.dicom.association import Association
from router.dicom.errors import (
    AssociationRejected,
    DicomNetError,
    NetworkTimeout,
    UnexpectedMessage,
)
from router.dicom.part10 import FileMeta, NotPart10, read_file_meta
from router.errors import IntegrityError
from router.ingest import pynetdicom_setup
from router.spool.crypto import BlobReader
from router.spool.spool import HeldObject, Spool

log = logging.getLogger("waystation.delivery")

_MAX_CONTEXTS = association.MAX_CONTEXTS
# Syntaxes whose data sets convert to Explicit/Implicit VR Little Endian without loss.
_CONVERTIBLE = {
    str(s)
    for s in (
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
    )
}
_UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# Releasing an association waits at most this long for the destination's A-RELEASE-RP.
_RELEASE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Timeouts:
    """Connection and response timeouts; the response timeout grows with the object's size
    so a slow link is not mistaken for a dead destination."""

    connect: float = 15.0
    response_base: float = 30.0
    min_rate: float = 64 * 1024  # bytes per second a live link is assumed to manage at least

    def response(self, size: int) -> float:
        """Seconds to send an object of ``size`` bytes and receive its answer."""
        return self.response_base + size / self.min_rate


class DimseSender:
    """A C-STORE SCU for one destination; not thread-safe (one per worker thread)."""

    def __init__(
        self,
        destination: DimseDestination,
        *,
        unit_ae: str,
        spool: Spool,
        timeouts: Timeouts | None = None,
    ) -> None:
        pynetdicom_setup.configure()  # pydicom's warnings quote values: silenced for _prepare
        self.destination = destination
        self.unit_ae = unit_ae
        self.spool = spool
        self.timeouts = timeouts or Timeouts()
        self._assoc: Association | None = None
        self._contexts: set[tuple[str, str]] = set()  # proposed on the open association
        self._last_used = 0.0
        # The next object of the batch, opened (read from the journal, its first chunk
        # decrypted) while the destination works on the current one.
        self._upcoming: str | None = None
        self._ready: tuple[str, BlobReader] | None = None

    def send(
        self,
        held: HeldObject,
        sop_class: str,
        syntax: str,
        priority: int = 2,
        *,
        upcoming: str | None = None,
    ) -> Outcome:
        """Offer one object; returns what happened. Never raises for network trouble.

        The stored bytes go as they are when the destination accepts the object's transfer
        syntax and no tag changes are configured. Otherwise the data set is decoded and sent
        with the changes applied and/or converted to an uncompressed syntax the destination
        accepts - only where that conversion is lossless. ``upcoming`` names the object to
        be sent next, if any: it is made ready while this one's answer is awaited."""
        self._upcoming = upcoming
        wanted = (sop_class, syntax)
        assoc = self._assoc
        if assoc is None or wanted not in self._contexts or assoc.peer_gone():
            opened = self._associate({wanted})
            if isinstance(opened, Outcome):
                return opened
            assoc = opened
        target = self._target(assoc, wanted)
        if target is None:
            return Outcome("no-context", detail=f"{_name(sop_class)} as {_name(syntax)}")
        if target != wanted and syntax not in _CONVERTIBLE:
            return Outcome(
                "no-context",
                detail=f"it accepts {_name(sop_class)} only as Little Endian; this one is "
                f"{_name(syntax)}, and converting from it is not supported",
            )
        try:
            reader = self._take_ready(held) or self.spool.open_object(held, fresh=True)
        except IntegrityError as exc:
            return Outcome("unreadable", detail=str(exc))
        with reader:
            outcome = self._send_from(assoc, reader, held, wanted, target, priority)
        self._last_used = time.monotonic()
        return outcome

    def _send_from(
        self,
        assoc: Association,
        reader: BlobReader,
        held: HeldObject,
        wanted: tuple[str, str],
        target: tuple[str, str],
        priority: int,
    ) -> Outcome:
        try:
            meta = read_file_meta(reader)
        except (NotPart10, IntegrityError) as exc:
            return Outcome("unreadable", detail=str(exc))
        changed: list[str] = []
        dataset: bytes | BlobReader
        instance = meta.sop_instance
        if target == wanted and not self.destination.changes.active:
            reader.seek(meta.dataset_offset)
            dataset, length = reader, reader.size - meta.dataset_offset
        else:
            try:
                dataset, changed, instance = self._prepare(reader, meta, target)
            except IntegrityError as exc:
                return Outcome("unreadable", detail=str(exc))
            except Exception as exc:  # a bad tag change or an undecodable object
                return Outcome("unpreparable", detail=type(exc).__name__)
            length = len(dataset)
        context_id = assoc.context_id(*target)
        assert context_id is not None  # _target chose an accepted pair
        message_id = assoc.next_message_id()
        request = commands.c_store_rq(message_id, target[0], instance, priority)
        deadline = time.monotonic() + self.timeouts.response(held.size)
        try:
            answer = assoc.exchange(
                context_id,
                request,
                message_id=message_id,
                response_field=commands.C_STORE_RSP,
                dataset=dataset,
                length=length,
                deadline=deadline,
                meanwhile=self._make_upcoming_ready,
            )
        except (DicomNetError, IntegrityError, ValueError, OSError) as exc:
            return self._failed(assoc, exc)
        status = answer.command.status
        if status is None:  # a C-STORE-RSP without a status answers nothing
            assoc.abort()
            self._assoc = None
            return Outcome("no-response", detail="the answer had no status")
        converted = target[1] if target != wanted else ""
        return Outcome("status", status=status, changed=tuple(changed), converted=converted)

    def _make_upcoming_ready(self) -> None:
        """Open the next object and decrypt its first chunk while the destination stores
        this one, so reading the journal and decrypting overlap the destination's work
        instead of adding to each object's time. Reads only: what is sent, and whether,
        is still decided when its turn comes. Never raises (the send reports problems)."""
        object_id, self._upcoming = self._upcoming, None
        self._drop_ready()
        if object_id is None:
            return
        try:
            held = self.spool.get(object_id)
            if held is None or held.wrapped_key is None:
                return
            reader = self.spool.open_object(held, fresh=True)
        except Exception:  # the send itself will report it
            return
        try:
            reader.chunk(0)
        except Exception:
            reader.close()
            return
        self._ready = (object_id, reader)

    def _take_ready(self, held: HeldObject) -> BlobReader | None:
        """The reader made ready for ``held``, if it was the one expected."""
        ready, self._ready = self._ready, None
        if ready is None:
            return None
        if ready[0] != held.id:
            ready[1].close()
            return None
        return ready[1]

    def _drop_ready(self) -> None:
        if self._ready is not None:
            self._ready[1].close()
            self._ready = None

    def _failed(self, assoc: Association, exc: BaseException) -> Outcome:
        """The association is unusable after ``exc``: close it and say what happened."""
        log.warning("sending to %s failed: %s", self.destination.name, type(exc).__name__)
        assoc.abort()
        self._assoc = None
        if isinstance(exc, IntegrityError):
            return Outcome("unreadable", detail=str(exc))
        if isinstance(exc, NetworkTimeout | UnexpectedMessage):
            return Outcome("no-response", detail=type(exc).__name__)
        return Outcome("aborted", detail=type(exc).__name__)

    def _target(self, assoc: Association, wanted: tuple[str, str]) -> tuple[str, str] | None:
        """The accepted context to use: the object's own syntax, else an uncompressed one."""
        accepted = assoc.accepted_pairs()
        if wanted in accepted:
            return wanted
        for syntax in _UNCOMPRESSED:
            if (wanted[0], syntax) in accepted:
                return (wanted[0], syntax)
        return None

    def _prepare(
        self, reader: BlobReader, meta: FileMeta, target: tuple[str, str]
    ) -> tuple[bytes, list[str], str]:
        """Decode the held object, apply this destination's changes, encode in ``target``.
        Returns the encoded data set, the keywords changed and the SOP Instance UID."""
        reader.seek(0)
        # Buffered: pydicom expects read(n) to return n bytes until the end, and the
        # decrypting reader stops at its chunk boundaries.
        dataset = dcmread(io.BufferedReader(reader, 1024 * 1024), force=False)
        changed = apply_changes(dataset, self.destination.changes)
        syntax = UID(target[1])
        encoded = encode(
            dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
        if encoded is None:
            raise ValueError("the data set could not be encoded")
        instance = str(dataset.get("SOPInstanceUID", "") or meta.sop_instance)
        return encoded, changed, instance

    def _associate(self, needed: set[tuple[str, str]]) -> Association | Outcome:
        self.close()
        contexts = needed | self._contexts
        if len(contexts) > _MAX_CONTEXTS:
            contexts = needed
        # Uncompressed alternatives for each SOP class, for lossless conversion when the
        # destination does not accept an object's own transfer syntax.
        fallbacks = {(sop_class, syntax) for sop_class, _ in contexts for syntax in _UNCOMPRESSED}
        if len(contexts | fallbacks) <= _MAX_CONTEXTS:
            contexts = contexts | fallbacks
        proposals = [(sop_class, [syntax]) for sop_class, syntax in sorted(contexts)]
        opened = open_association(self.destination, self.unit_ae, self.timeouts, proposals)
        if isinstance(opened, Association):
            self._assoc = opened
            self._contexts = contexts
        return opened

    def idle_for(self) -> float:
        """Seconds since the association last carried an object."""
        return time.monotonic() - self._last_used

    def close(self) -> None:
        """Release the association (abort if it does not release cleanly)."""
        self._drop_ready()
        assoc, self._assoc = self._assoc, None
        self._contexts = set()
        if assoc is not None:
            assoc.release(min(_RELEASE_TIMEOUT, self.timeouts.connect))


def open_association(
    destination: DimseDestination,
    unit_ae: str,
    timeouts: Timeouts,
    proposals: list[tuple[str, list[str]]],
) -> Association | Outcome:
    """Connect and associate, or the Outcome that says why not: "refused" (nothing
    listens), "unreachable" (no connection, or it listens yet the association failed),
    "rejected" (A-ASSOCIATE-RJ, with result, source and reason)."""
    try:
        sock = association.connect(
            destination.host,
            destination.port,
            timeouts.connect,
            tls=tls_context(destination),
            server_name=destination.tls.server_name if destination.tls else None,
        )
    except ConnectionRefusedError:
        return Outcome("refused")
    except ssl.SSLCertVerificationError as exc:
        return Outcome("unreachable", detail=f"TLS certificate not trusted: {exc.verify_message}")
    except ssl.SSLError as exc:
        return Outcome("unreachable", detail=f"TLS handshake failed: {exc.reason}")
    except OSError as exc:
        return Outcome("unreachable", detail=type(exc).__name__)
    try:
        return association.request(
            sock,
            calling_ae=unit_ae,
            called_ae=destination.ae_title,
            proposals=proposals,
            timeout=timeouts.connect,
        )
    except AssociationRejected as exc:
        return Outcome("rejected", result=exc.result, source=exc.source, reason=exc.reason)
    except (DicomNetError, OSError, ValueError) as exc:
        return Outcome("unreachable", detail=type(exc).__name__)


_tls_contexts: dict[DestinationTlsConfig, ssl.SSLContext] = {}


def tls_context(destination: DimseDestination) -> ssl.SSLContext | None:
    """The destination's TLS client context (built once per configuration), or None for
    plain TCP. Raises OSError or ssl.SSLError when its files cannot be loaded."""
    if destination.tls is None:
        return None
    settings = destination.tls
    context = _tls_contexts.get(settings)
    if context is None:
        context = tls.client_context(
            settings.ca, settings.cert, settings.key, verify=settings.verify
        )
        _tls_contexts[settings] = context
    return context


@dataclass(frozen=True)
class EchoResult:
    """What a C-ECHO test of a destination showed: the outcome (kind "status" with the
    destination's status when it answered) and the seconds from connecting to the answer."""

    outcome: Outcome
    elapsed: float

    @property
    def ok(self) -> bool:
        """True when the destination answered C-ECHO with success."""
        return self.outcome.kind == "status" and self.outcome.status == 0x0000

    @property
    def status(self) -> int | None:
        """The C-ECHO-RSP status, if the destination answered."""
        return self.outcome.status


def echo(destination: DimseDestination, unit_ae: str, timeouts: Timeouts) -> EchoResult:
    """C-ECHO a destination on a fresh association (released afterwards): the control API's
    "test the connection". Never raises for network trouble; ``classify(result.outcome,
    ...)`` words the result."""
    started = time.monotonic()
    proposals = [(commands.VERIFICATION_SOP_CLASS, [str(ImplicitVRLittleEndian)])]
    opened = open_association(destination, unit_ae, timeouts, proposals)
    if isinstance(opened, Outcome):
        return EchoResult(opened, time.monotonic() - started)
    assoc = opened
    context_id = assoc.context_id(commands.VERIFICATION_SOP_CLASS, str(ImplicitVRLittleEndian))
    if context_id is None:
        assoc.release(_RELEASE_TIMEOUT)
        outcome = Outcome("no-context", detail="Verification")
        return EchoResult(outcome, time.monotonic() - started)
    message_id = assoc.next_message_id()
    try:
        answer = assoc.exchange(
            context_id,
            commands.c_echo_rq(message_id),
            message_id=message_id,
            response_field=commands.C_ECHO_RSP,
            deadline=time.monotonic() + timeouts.response_base,
        )
    except DicomNetError as exc:
        assoc.abort()
        kind = "no-response" if isinstance(exc, NetworkTimeout | UnexpectedMessage) else "aborted"
        return EchoResult(Outcome(kind, detail=type(exc).__name__), time.monotonic() - started)
    elapsed = time.monotonic() - started
    assoc.release(_RELEASE_TIMEOUT)
    status = answer.command.status
    if status is None:
        return EchoResult(Outcome("no-response", detail="the answer had no status"), elapsed)
    return EchoResult(Outcome("status", status=status), elapsed)


def _name(uid: str) -> str:
    try:
        return str(UID(uid).name) or uid
    except Exception:
        return uid
