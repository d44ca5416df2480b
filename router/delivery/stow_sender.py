"""The sender for `type = "stow"` destinations: DICOMweb STOW-RS (PS3.18 10.5).

One request carries a batch of held objects as ``multipart/related;
type="application/dicom"``, each part the object's original Part 10 bytes, streamed from the
spool's decrypting reader straight to the socket (no copy of the batch in memory, nothing
written in plaintext). The length is known in advance, so no chunked transfer encoding (which
some servers mishandle). The server's Store Instances Response is read per object
(router/core/stow.py). Nothing is recorded before the answer: a request cut off by a crash or
a broken link is sent again, so duplicates are bounded by one request per worker thread.

An answer 413 (too large) splits the request in halves and sends them at once; the smaller
size is kept as this sender's limit. Each request has a deadline: the destination's
``timeout`` plus the request's bytes at the slower of ``min_rate`` and a quarter of the
measured rate, so a slow link is not mistaken for a dead server, nor a dead one waited on
for ever.
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from router.config.model import StowDestination
from router.core import stow
from router.core.retry import Outcome
from router.core.stow import Item
from router.delivery.shared_gate import SharedGate
from router.delivery.stow_client import RequestFailed, StowClient
from router.errors import IntegrityError
from router.spool.spool import HeldObject, Spool
from router.wan.chunking import ChunkSizer

log = logging.getLogger("waystation.delivery")

_PIECE = 256 * 1024  # bytes read from the spool and handed to the socket at a time
_MAX_ANSWER = 16 * 1024 * 1024  # a Store Instances Response is small; more is not read
_CUT_SHORT = "the server reset the connection while the request was being sent"
_STALE_AFTER = 2.0  # seconds idle after which a kept connection may have been closed
_ACCEPT = "application/dicom+json, application/dicom+xml;q=0.5"
# A rate-gate wait longer than this gives the objects back to the queue until then.
_LONGEST_GATE_WAIT = 30.0
_STAT = 0


@dataclass(frozen=True)
class Part:
    """One object of a request: what the plan knows of it, and its spool row."""

    item: Item
    held: HeldObject


class StowSender:
    """Posts batches of held objects to one STOW-RS server; one per worker thread."""

    def __init__(
        self,
        destination: StowDestination,
        *,
        spool: Spool,
        connect_timeout: float = 15.0,
        gate: SharedGate | None = None,
    ) -> None:
        self.destination = destination
        self.gate = gate  # the destination's cap, calendar and budgets (shared by threads)
        self._stat = False
        self.client = StowClient(destination, connect_timeout=connect_timeout)
        self.spool = spool
        self._last_used = time.monotonic()
        self._last_request = 0.0
        self.rate = ChunkSizer()  # only its smoothed rate estimate is used
        self.max_bytes = destination.max_request_size  # lowered by a 413
        self.requests_sent = 0
        self.bytes_sent = 0  # object bytes handed to the socket (re-sends included)

    # -- the DestinationWorker's interface -------------------------------------------------

    def idle_for(self) -> float:
        """Seconds since the connection last carried a request."""
        return time.monotonic() - self._last_used

    def close(self) -> None:
        """Close the connection (a new one is made when needed)."""
        self.client.close()

    def item_of(self, held: HeldObject, priority: int) -> Item:
        """What the request plan needs of a held object (UIDs from its sealed metadata)."""
        uids = self.spool.metadata(held)
        return Item(
            held.id,
            held.size,
            uids.get("study_instance_uid", ""),
            uids.get("sop_instance_uid", ""),
            priority,
        )

    def plan(self, items: Sequence[Item]) -> list[list[Item]]:
        """The requests for these objects, most urgent first."""
        return stow.plan_requests(
            items,
            max_bytes=self.max_bytes,
            max_instances=self.destination.max_instances,
            per_study=self.destination.batch == "study",
        )

    def send(self, parts: Sequence[Part]) -> dict[str, Outcome]:
        """Post one request; each object's outcome by object id. Never raises for network
        trouble. A 413 answer splits the request and sends the halves at once. When the rate
        gate holds sending back for long (a used-up budget, a paused window), every object's
        outcome is "held" with the wait, and nothing is sent."""
        self._stat = bool(parts) and parts[0].item.priority == _STAT
        try:
            held = self._wait_for_gate(sum(part.held.size for part in parts))
            if held is not None:
                return {part.item.object_id: held for part in parts}
            return self._send(list(parts))
        finally:
            self._last_used = time.monotonic()
            if self.gate is not None and self.gate.limited:
                self.gate.save()

    # -- the rate gate ---------------------------------------------------------------------

    def _wait_for_gate(self, nbytes: int) -> Outcome | None:
        """Wait (briefly) until the gate lets a request of ``nbytes`` start; a long wait
        gives the objects back instead. A budget is checked here, once per request, so it is
        overshot by at most one request."""
        if self.gate is None or not self.gate.limited:
            return None
        while True:
            decision = self.gate.ask(nbytes, stat=self._stat)
            if decision.allowed:
                return None
            if decision.wait > _LONGEST_GATE_WAIT:
                return Outcome("held", detail=decision.reason, retry_after=decision.wait)
            time.sleep(min(decision.wait, 1.0))

    def _pace(self, nbytes: int) -> None:
        """Hold a request's bytes to the cap in force, piece by piece. A long wait that
        begins mid-request (a paused window) does not stop it: finishing costs less than
        sending it all again."""
        if self.gate is None or not self.gate.limited:
            return
        while True:
            decision = self.gate.ask(nbytes, stat=self._stat)
            if decision.allowed or decision.wait > _LONGEST_GATE_WAIT:
                break
            time.sleep(min(decision.wait, 1.0))
        self.gate.sent(nbytes, stat=self._stat)

    # -- one request -----------------------------------------------------------------------

    def _send(self, parts: list[Part]) -> dict[str, Outcome]:
        request = [part.item for part in parts]
        try:
            status, content_type, body, retry_after, reason = self._post(parts)
        except RequestFailed as failed:
            self.close()
            if failed.outcome.detail == _CUT_SHORT and len(parts) > 1:
                self._smaller_than(parts, "was cut off while being sent")
            if failed.object_id is None:
                return {part.item.object_id: failed.outcome for part in parts}
            others = Outcome("aborted", detail="another object of the request could not be read")
            return {
                part.item.object_id: failed.outcome
                if part.item.object_id == failed.object_id
                else others
                for part in parts
            }
        if status == 413 and len(parts) > 1:
            self._smaller_than(parts, "was too large; sending it in halves")
            first, second = stow.split(parts)
            return {**self._send(first), **self._send(second)}
        response = stow.parse_store_response(content_type, body)
        detail = _detail(status, reason, response)
        return stow.outcomes_for(request, status, response, detail=detail, retry_after=retry_after)

    def _smaller_than(self, parts: list[Part], why: str) -> None:
        """Later requests stay under half of this one's size (never under 64 KiB)."""
        size = sum(part.held.size for part in parts)
        self.max_bytes = max(64 * 1024, min(self.max_bytes, size // 2))
        log.info("%s: a request of %d objects %s", self.destination.name, len(parts), why)

    def _post(self, parts: list[Part]) -> tuple[int, str, bytes, float | None, str]:
        """Send the request (once more on a fresh connection if a kept one had closed)."""
        stale = self.client.conn is not None and (
            time.monotonic() - self._last_request > _STALE_AFTER
        )
        try:
            return self._post_once(parts)
        except RequestFailed as failed:
            if not stale or failed.outcome.kind != "aborted":
                raise
            log.debug("%s: a kept connection had closed; trying a new one", self.destination.name)
            self.close()
            return self._post_once(parts)

    def _post_once(self, parts: list[Part]) -> tuple[int, str, bytes, float | None, str]:
        boundary = secrets.token_hex(16)
        heads = [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for part in parts
        ]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + p.held.size + 2 for h, p in zip(heads, parts, strict=True))
        length += len(tail)
        study = parts[0].item.study_uid if self.destination.batch == "study" else ""
        path = self.client.path("/studies" + (f"/{quote(study)}" if study else ""))
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": _ACCEPT,
            **self.client.authorization(),
        }
        deadline = time.monotonic() + self.allowance(length)
        conn = self.client.connection()
        self._last_request = time.monotonic()
        started = time.monotonic()
        cut_short = False
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            try:
                for head, part in zip(heads, parts, strict=True):
                    self._write(conn, head, deadline)
                    self._stream(conn, part, deadline)
                    self._write(conn, b"\r\n", deadline)
                self._write(conn, tail, deadline)
            except (BrokenPipeError, ConnectionResetError):
                # Some servers answer from the headers alone (413: too large) and close
                # without reading the body: the answer may be waiting unread. Without it the
                # request would be taken as broken and sent whole again, for ever.
                cut_short = True
            self._until(conn, deadline)
            answer = conn.getresponse()
            body = answer.read(_MAX_ANSWER)
        except RequestFailed:
            raise
        except TimeoutError:
            raise RequestFailed(
                Outcome("no-response", detail=f"no answer within {self.allowance(length):.0f} s")
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            if cut_short:
                # Reset mid-body with no answer to read (the kernel may drop it with the
                # reset): most often a server refusing the size, so the next tries go smaller.
                raise RequestFailed(Outcome("aborted", detail=_CUT_SHORT)) from None
            raise RequestFailed(Outcome("aborted", detail=type(exc).__name__)) from None
        if cut_short:
            self.close()  # the server closed it
            if 200 <= answer.status < 300:  # cannot be about a body it never read
                raise RequestFailed(Outcome("aborted", detail="answered before the body was sent"))
        self.requests_sent += 1
        if 200 <= answer.status < 300:
            self.rate.observe(length, time.monotonic() - started)
        if (answer.getheader("Connection") or "").lower() == "close" or not answer.isclosed():
            self.close()
        retry_after = stow.retry_after_seconds(answer.getheader("Retry-After"), _now())
        content_type = answer.getheader("Content-Type") or ""
        return answer.status, content_type, body, retry_after, answer.reason or ""

    def _stream(self, conn: http.client.HTTPConnection, part: Part, deadline: float) -> None:
        """The object's plaintext, from the spool's decrypting reader, exactly its size."""
        try:
            reader = self.spool.open_object(part.held)
        except IntegrityError as exc:
            raise RequestFailed(
                Outcome("unreadable", detail=str(exc)), part.item.object_id
            ) from None
        with reader:
            buffer = bytearray(_PIECE)
            view = memoryview(buffer)
            left = part.held.size
            while left > 0:
                try:
                    n = reader.readinto(view[: min(_PIECE, left)])
                except IntegrityError as exc:
                    raise RequestFailed(
                        Outcome("unreadable", detail=str(exc)), part.item.object_id
                    ) from None
                if not n:
                    raise RequestFailed(
                        Outcome("unreadable", detail="shorter than its recorded size"),
                        part.item.object_id,
                    )
                self._write(conn, view[:n], deadline)
                self.bytes_sent += n
                left -= n

    def _write(
        self, conn: http.client.HTTPConnection, data: bytes | memoryview, when: float
    ) -> None:
        self._pace(len(data))
        self._until(conn, when)
        conn.send(data)

    def _until(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        """Socket operations may block at most until the request's deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if conn.sock is not None:
            conn.sock.settimeout(left)

    def allowance(self, length: int) -> float:
        """Seconds a request of ``length`` bytes may take, answer included."""
        measured = (self.rate.rate or 0.0) / 4
        rate = max(float(self.destination.min_rate), measured)
        cap = self.gate.cap_bytes_per_second() if self.gate is not None else None
        if cap:  # held to a cap: the request cannot go faster than that
            rate = min(rate, cap)
        return self.destination.timeout + length / rate


def _detail(status: int, reason: str, response: stow.StoreResponse) -> str:
    """The server's answer in a few words for the reason shown to people."""
    text = f"HTTP {status}" + (f" {reason}" if reason else "")
    if response.failed:
        codes = sorted({f"0x{code:04X}" for code in response.failed.values()})
        text += f"; failure reasons {', '.join(codes)}"
    return text


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
