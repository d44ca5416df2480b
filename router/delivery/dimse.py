"""Sending held objects to a DICOM C-STORE destination, exactly as they were received.

The stored plaintext is a Part 10 file; pynetdicom streams its data set from a decrypting
reader (see pynetdicom_setup.register_stream), so nothing is decoded, re-encoded or written in
plaintext. An association is kept open across objects and batches, and reopened when an
object needs a presentation context the current association lacks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset

from router.config.model import DimseDestination
from router.core.retry import Outcome
from router.delivery.changes import apply_changes
from router.errors import IntegrityError
from router.ingest import pynetdicom_setup
from router.spool.spool import HeldObject, Spool

log = logging.getLogger("waystation.delivery")

_MAX_CONTEXTS = 128
# Syntaxes whose data sets convert to Explicit/Implicit VR Little Endian without loss.
_CONVERTIBLE = {
    str(s)
    for s in (
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
    )
}


@dataclass(frozen=True)
class Timeouts:
    """Connection and response timeouts; the response timeout grows with the object's size
    so a slow link is not mistaken for a dead destination."""

    connect: float = 15.0
    response_base: float = 30.0
    min_rate: float = 64 * 1024  # bytes per second a live link is assumed to manage at least

    def response(self, size: int) -> float:
        """Seconds to wait for the answer to an object of ``size`` bytes."""
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
        pynetdicom_setup.configure()
        self.destination = destination
        self.unit_ae = unit_ae
        self.spool = spool
        self.timeouts = timeouts or Timeouts()
        self._assoc: Any = None
        self._context_ids: dict[tuple[str, str], int] = {}
        self._message_id = 0
        self._contexts: set[tuple[str, str]] = set()
        self._last_used = 0.0

    def send(self, held: HeldObject, sop_class: str, syntax: str, priority: int = 2) -> Outcome:
        """Offer one object; returns what happened. Never raises for network trouble.

        The stored bytes go as they are when the destination accepts the object's transfer
        syntax and no tag changes are configured. Otherwise the data set is decoded and sent
        with the changes applied and/or converted to an uncompressed syntax the destination
        accepts - only where that conversion is lossless."""
        wanted = (sop_class, syntax)
        if self._assoc is None or not self._assoc.is_established or wanted not in self._contexts:
            outcome = self._associate({wanted})
            if outcome is not None:
                return outcome
        target = self._target(wanted)
        if target is None:
            return Outcome("no-context", detail=f"{_name(sop_class)} as {_name(syntax)}")
        if target != wanted and syntax not in _CONVERTIBLE:
            return Outcome(
                "no-context",
                detail=f"it accepts {_name(sop_class)} only as Little Endian; this one is "
                f"{_name(syntax)}, and converting from it is not supported",
            )
        try:
            opener = self._opener(held)
        except IntegrityError as exc:
            return Outcome("unreadable", detail=str(exc))
        path = pynetdicom_setup.register_stream(opener)
        changed: list[str] = []
        try:
            self._assoc.dimse_timeout = self.timeouts.response(held.size)
            if target == wanted and not self.destination.changes.active:
                status = self._store(path, target, priority)
            else:
                try:
                    encoded, changed = self._prepare(opener, target)
                except IntegrityError:
                    raise
                except Exception as exc:  # a bad tag change or an undecodable object
                    return Outcome("unpreparable", detail=type(exc).__name__)
                status = self._store(path, target, priority, encoded=encoded)
        except (OSError, RuntimeError, ValueError, AttributeError, IntegrityError) as exc:
            log.warning("sending to %s failed: %s", self.destination.name, type(exc).__name__)
            self.close()
            if isinstance(exc, IntegrityError):
                return Outcome("unreadable", detail=str(exc))
            return Outcome("aborted", detail=type(exc).__name__)
        finally:
            pynetdicom_setup.unregister_stream(path)
        self._last_used = time.monotonic()
        if status is not None:
            converted = target[1] if target != wanted else ""
            return Outcome("status", status=status, changed=tuple(changed), converted=converted)
        aborted = not self._assoc.is_established
        self.close()
        return Outcome("aborted" if aborted else "no-response")

    def _target(self, wanted: tuple[str, str]) -> tuple[str, str] | None:
        """The accepted context to use: the object's own syntax, else an uncompressed one."""
        accepted = self._accepted()
        if wanted in accepted:
            return wanted
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if (wanted[0], str(syntax)) in accepted:
                return (wanted[0], str(syntax))
        return None

    def _prepare(self, opener: Any, target: tuple[str, str]) -> tuple[bytes, list[str]]:
        """Decode the held object, apply this destination's changes, encode in ``target``."""
        with opener() as stream:
            dataset = dcmread(stream, force=False)
        changed = apply_changes(dataset, self.destination.changes)
        syntax = UID(target[1])
        encoded = encode(
            dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
        if encoded is None:
            raise ValueError("the data set could not be encoded")
        return encoded, changed

    def _store(
        self,
        path: Path,
        context: tuple[str, str],
        priority: int,
        *,
        encoded: bytes | None = None,
    ) -> int | None:
        """One C-STORE on the open association; the answer's status, or None (timeout/abort).

        pynetdicom's own send_c_store unpauses its reactor thread after each request; when
        the next answer arrives quickly (TCP_NODELAY) that thread can take it off the queue
        first and drop it as "unexpected", leaving the sender waiting for its timeout. This
        sender keeps the reactor paused for the association's whole life (see _associate)
        and reads the answer itself."""
        assoc = self._assoc
        file_meta, offset = split_dataset(path)
        context_id = self._context_ids[context]
        self._message_id = self._message_id % 65535 + 1
        request = C_STORE()
        request.MessageID = self._message_id
        request.AffectedSOPClassUID = context[0]
        request.AffectedSOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
        request.Priority = priority
        if encoded is None:
            request._dataset_path = (path, offset)  # the stored bytes, streamed as they are
        else:
            request.DataSet = io.BytesIO(encoded)
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
        if response is None or getattr(response, "Status", None) is None:
            return None
        if getattr(response, "MessageIDBeingRespondedTo", None) != self._message_id:
            return None  # not the answer to this request: treat as no answer, resend later
        return int(response.Status)

    def _opener(self, held: HeldObject) -> Any:
        reader = self.spool.open_object(held)  # checks the key now: fail before associating
        reader.close()

        def open_stream() -> BinaryIO:
            # Buffered: pynetdicom expects read(n) to return n bytes until the end.
            return io.BufferedReader(self.spool.open_object(held), 1024 * 1024)

        return open_stream

    def _accepted(self) -> set[tuple[str, str]]:
        return set(self._context_ids)

    def _associate(self, needed: set[tuple[str, str]]) -> Outcome | None:
        self.close()
        contexts = needed | self._contexts
        if len(contexts) > _MAX_CONTEXTS:
            contexts = needed
        # Uncompressed alternatives for each SOP class, for lossless conversion when the
        # destination does not accept an object's own transfer syntax.
        fallbacks = {
            (sop_class, str(syntax))
            for sop_class, _ in contexts
            for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        }
        if len(contexts | fallbacks) <= _MAX_CONTEXTS:
            contexts = contexts | fallbacks
        ae = AE(ae_title=self.unit_ae)
        ae.acse_timeout = self.timeouts.connect
        ae.network_timeout = self.timeouts.response_base
        ae.connection_timeout = self.timeouts.connect
        for sop_class, syntax in sorted(contexts):
            ae.add_requested_context(sop_class, [syntax])
        dest = self.destination
        try:
            assoc: Any = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        except (OSError, RuntimeError, ValueError) as exc:
            return Outcome("unreachable", detail=type(exc).__name__)
        if assoc.is_established:
            # Pause pynetdicom's reactor for good (see _store): it is waiting at its checkpoint
            # once _is_paused is True, because nothing here sets the checkpoint again.
            assoc._reactor_checkpoint.clear()
            deadline = time.monotonic() + self.timeouts.connect
            while not assoc._is_paused and time.monotonic() < deadline:
                time.sleep(0.0001)
            # Safe now that the answers are read here: without it, Nagle's algorithm and the
            # peer's delayed ACK cost ~40 ms per object (PERFORMANCE.md, gotchas 1 and 2).
            with contextlib.suppress(AttributeError, OSError):
                assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._context_ids = {
                (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id)
                for cx in assoc.accepted_contexts
            }
            self._message_id = 0
            self._assoc = assoc
            self._contexts = contexts
            return None
        if assoc.is_rejected:
            primitive: Any = assoc.acceptor.primitive
            return Outcome(
                "rejected",
                result=int(primitive.result or 0),
                source=int(primitive.result_source or 0),
                reason=int(primitive.diagnostic or 0),
            )
        # pynetdicom reports a failed TCP connect as "aborted" too: ask the network which.
        return Outcome(_connection_failure(dest.host, dest.port))

    def idle_for(self) -> float:
        """Seconds since the association last carried an object."""
        return time.monotonic() - self._last_used

    def close(self) -> None:
        """Release the association (abort if it does not release cleanly)."""
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            try:
                assoc._reactor_checkpoint.set()  # let pynetdicom run its release handshake
                assoc.release()
            except Exception:  # a broken association cannot be released politely
                assoc.abort()


def _connection_failure(host: str, port: int) -> str:
    """Tell "refused" (nothing listening) from "unreachable" (no answer at all)."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return "unreachable"  # it listens, yet the association failed: treat as down
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "unreachable"


def _name(uid: str) -> str:
    try:
        return str(UID(uid).name) or uid
    except Exception:
        return uid
