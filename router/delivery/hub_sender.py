"""The sender for `type = "hub"` destinations: resumable chunked uploads over HTTPS.

One object at a time per stream (docs/hub-protocol.md): create the upload (or find it
already committed), append chunks from the confirmed offset, commit. A destination runs
``streams`` of these in parallel (one per delivery thread), sharing the link's rate gate and
priorities (router/delivery/hub_link.py). Where the hub offers them, the first chunk rides
on the create (tus ``creation-with-upload``) and the commit on the last chunk
(``waystation-commit``), so a small object costs one round trip, not three. And that round
trip is not spent idle: while a stream waits for the answer that commits one object, its
worker may hand it the next (``lookahead``), whose whole upload then goes out behind it on
the same connection (HTTP pipelining, router/delivery/http_pipeline.py).

The upload's URL is recorded in the journal (hub_uploads) as soon as the create answers, and
each confirmed offset as it comes, so a dropped link, a kill -9 or a power cut resumes the
object where the hub says it stands (a HEAD asks; the hub's answer wins over ours). A create
whose answer was lost is repeated, and the hub then returns the same unfinished upload with
its offset (it keys unfinished uploads by unit, SOP Instance UID, SHA-256 and length), so a
break costs at most the chunk in flight on each stream.

Objects up to ``_ENVELOPE_MAX`` that compress travel in the lossless envelope
(router/wan/envelope.py; the hub restores the original bytes and checks their SHA-256). The
envelope is deterministic, so a resumed upload re-makes the same bytes; if it ever did not,
the hub's check at commit refuses it and the object is sent again, never stored wrong.
Each chunk passes the destination's rate gate (router/wan/rate.py: cap, weekly calendar,
daily and monthly budgets in wire bytes, STAT exempt if configured) before it is sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from router.config.model import HubDestination
from router.core.retry import Outcome
from router.delivery.http_connection import BbrHTTPConnection, BbrHTTPSConnection
from router.delivery.http_pipeline import Exchange
from router.delivery.hub_link import HubLink
from router.delivery.shared_gate import load_counters, save_counters
from router.errors import IntegrityError
from router.hub import protocol as p
from router.spool.crypto import BlobReader
from router.spool.spool import HeldObject, Spool
from router.wan import envelope
from router.wan.chunking import ChunkSizer
from router.wan.polite import PoliteController, pace, tcp_rtt
from router.wan.rate import RateGate

log = logging.getLogger("waystation.delivery")

_RECEIPT_BATCH = 100
# Bigger objects are streamed as they are (the envelope is made in memory).
_ENVELOPE_MAX = 64 * 1024 * 1024
# A gate wait longer than this (a used-up budget, a paused window) gives the object back to
# the queue until then, instead of holding the worker.
_LONGEST_GATE_WAIT = 30.0
_HTTP_OVERHEAD = 400  # request and response headers per chunk, counted against budgets
_STAT = 0
_CONNECT_TIMEOUT = 8.0  # seconds; see _connect_briefly
_STALE_AFTER = 2.0  # seconds without a request after which a kept connection may be gone
# Polite mode paces chunks in slices of this size; its rate never exceeds the cap, or this
# ceiling without one (bits per second).
_POLITE_SLICE = 16 * 1024  # small: each slice gives the controller an RTT sample
_POLITE_CEILING = 100_000_000
# The kernel paces a polite stream no slower than this (the sleeps between slices hold the
# average). Paced slower, each segment travels alone and the receiver delays its ACK
# (40-200 ms), which reads as queueing delay: the controller then cut its rate further, a
# trap at the minimum rate on an idle link (measured on the emulated link).
_POLITE_PACING_FLOOR = 1_000_000
# A bulk stream waits at most this long at a chunk boundary while a more urgent object is in
# flight on another stream, then goes on (the STAT object has had most of the link).
_YIELD_AT_MOST = 120.0
_YIELD_SLICE = 0.2
# The hub's protocol extensions this sender uses when offered (docs/hub-protocol.md).
CREATION_WITH_UPLOAD = "creation-with-upload"
COMMIT_ON_LAST_CHUNK = "waystation-commit"


@dataclass(frozen=True)
class _Wire:
    """What goes on the wire for one object: in memory (maybe enveloped), or streamed."""

    object_id: str
    data: bytes | None  # None: read from the stored object
    size: int
    sha256: str  # of the original object
    encoding: str


@dataclass(frozen=True)
class _Begun:
    """An object whose whole upload was written behind another request (see begin())."""

    object_id: str
    wire: _Wire
    written_at: float


class _Stop(Exception):
    """Ends an upload attempt with an outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.kind)
        self.outcome = outcome


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def error(self) -> str:
        return str(self.body.get("error", "")) or f"HTTP {self.status}"


class _HubHTTPConnection(BbrHTTPConnection):
    def connect(self) -> None:
        _connect_briefly(self, super().connect)


class _HubHTTPSConnection(BbrHTTPSConnection):
    def connect(self) -> None:
        _connect_briefly(self, super().connect)


def _connect_briefly(conn: http.client.HTTPConnection, connect: Callable[[], None]) -> None:
    """Connect (on BBR) within ``_CONNECT_TIMEOUT``, then use the destination's timeout for
    every read. Why short: while the link is down the kernel retransmits a SYN at 1, 3, 7, 15,
    31 s...; a connection attempt left waiting for a late retransmission would start sending
    that long after the link came back. A fresh attempt every few seconds resumes within
    seconds of the link's return."""
    timeout = conn.timeout
    if isinstance(timeout, float | int):
        conn.timeout = min(float(timeout), _CONNECT_TIMEOUT)
    try:
        connect()
    finally:
        conn.timeout = timeout
    assert conn.sock is not None
    conn.sock.settimeout(timeout)


def hub_link(destination: HubDestination, spool: Spool) -> HubLink:
    """The state the streams of ``destination`` share: the rate gate (budget counters as
    last recorded in the journal) and polite mode."""
    polite = None
    if destination.rate.polite:
        ceiling = destination.rate.policy().bits_per_second or _POLITE_CEILING
        polite = PoliteController(max_rate=float(ceiling), target=destination.rate.polite_delay)
    gate = RateGate(destination.rate.policy(), counters=load_counters(spool, destination.name))
    return HubLink(gate, polite)


class HubSender:
    """Uploads held objects to one hub; used from one worker thread (one stream)."""

    def __init__(
        self,
        destination: HubDestination,
        *,
        spool: Spool,
        more_urgent: Callable[[int], bool] = lambda priority: False,
        link: HubLink | None = None,
        lookahead: Callable[[HubSender], None] | None = None,
    ) -> None:
        self.destination = destination
        self.spool = spool
        self._more_urgent = more_urgent
        self._url = urlsplit(destination.url)
        self._conn: http.client.HTTPConnection | None = None
        self._exchange: Exchange | None = None  # requests and answers on _conn's socket
        self._lookahead = lookahead
        self._begun: _Begun | None = None
        self._awaited = 0  # body bytes of the request whose answer is awaited
        self._answered_at = time.monotonic()  # when the last answer was read
        self._last_used = time.monotonic()
        self._last_request = time.monotonic()
        self.sizer = ChunkSizer(destination.min_chunk, destination.max_chunk)
        self.bytes_sent = 0  # chunk bytes handed to the socket (re-sends included)
        self.link = link or hub_link(destination, spool)
        self.gate = self.link.gate
        self.polite = self.link.polite
        self._wire_cache: _Wire | None = None
        self._token_cache: tuple[tuple[int, int, int], str] | None = None

    # -- the DestinationWorker's interface -------------------------------------------------

    def idle_for(self) -> float:
        """Seconds since the connection was last used."""
        return time.monotonic() - self._last_used

    def close(self) -> None:
        """Close the connection (a new one is made when needed)."""
        # An upload begun behind another goes with the connection: its answer is never read.
        # Why safe: sent again, its create finds the hub's copy ("already committed") or
        # the hub's unfinished upload of the same object.
        self._begun = None
        if self._exchange is not None:
            with contextlib.suppress(Exception):
                self._exchange.close()
            self._exchange = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def send(self, held: HeldObject, priority: int) -> Outcome:
        """Upload one object (resuming any earlier attempt); the outcome for classify()."""
        self.link.sending(priority)
        try:
            return self._send(held, priority)
        except _Stop as stop:
            if stop.outcome.kind not in ("status", "preempted"):
                self.close()
            return stop.outcome
        except IntegrityError as exc:
            return Outcome("unreadable", detail=str(exc))
        finally:
            self.link.sending(None)
            self._last_used = time.monotonic()

    def begin(self, held: HeldObject, priority: int) -> bool:
        """Write the whole upload of ``held`` (create, body and commit in one request) behind
        the request whose answer this stream awaits; ``send(held)`` then reads its answer.
        Only where that is one request and needs no waiting: the hub offers both extensions,
        the object is new to it, the rate gate admits it now, nothing more urgent is about,
        and polite mode is off (it paces every byte). And only where it fits in one chunk
        together with the request awaited: a break then still costs at most one chunk per
        stream. False: nothing was written, and ``send(held)`` uploads it the usual way."""
        if self.polite is not None or self._exchange is None or self._begun is not None:
            return False
        extensions = self.link.extensions or frozenset()
        if not {CREATION_WITH_UPLOAD, COMMIT_ON_LAST_CHUNK} <= extensions:
            return False
        if self.link.more_urgent_in_flight(priority) or self._more_urgent(priority):
            return False
        if self._state(held.id) is not None:  # an upload to resume: the usual way
            return False
        room = self.sizer.next_size() - self._awaited
        if held.size > room:  # quick: the envelope is never larger
            return False
        reader = self.spool.open_object(held)
        try:
            wire = self._make_wire(held, reader)
            body = wire.data if wire.data is not None else _read_at(reader, 0, wire.size)
        finally:
            reader.close()
        if not 0 < wire.size <= room:
            return False
        try:
            headers = self._create_headers(held, wire)
            headers.update(self._chunk_headers(body, 0, last=True))
            headers = self._headers(headers, len(body))
        except _Stop:  # the token file cannot be read: the usual way says so
            return False
        if not self.link.admit(len(body) + _HTTP_OVERHEAD, _now(), stat=priority == _STAT).allowed:
            return False
        self._persist_counters()
        try:
            self._exchange.write("POST", p.UPLOADS, headers, body)
        except OSError:
            self.close()  # the answer awaited fails too, and says so
            return False
        self.bytes_sent += len(body)
        self._begun = _Begun(held.id, wire, time.monotonic())
        return True

    # -- one object ------------------------------------------------------------------------

    def _send(self, held: HeldObject, priority: int) -> Outcome:
        begun, self._begun = self._begun, None
        if begun is not None and begun.object_id != held.id:
            self.close()  # another object's answer is due on this connection: drop it
            begun = None
        state = None if begun is not None else self._state(held.id)
        if state is not None and state[3] in ("committed", "delivered"):
            return Outcome("status", status=0)  # the hub already holds it
        reader = self.spool.open_object(held)
        try:
            wire = begun.wire if begun is not None else self._wire(held, reader)
            if begun is not None:
                # Its bytes had the stream to themselves from the last answer on (for the
                # rate estimate that sizes chunks).
                self._awaited = wire.size
                started = max(begun.written_at, self._answered_at)
                created = self._created(held, wire, self._final_answer("POST"), started)
                if created is None:
                    return Outcome("status", status=0)
                url, offset = created
            elif state is None or state[1] != wire.size:
                created = self._create(held, wire, reader, priority)
                if created is None:
                    return Outcome("status", status=0)
                url, offset = created
            else:
                url = state[0]
                known = self._head(url)
                if known is not None:
                    offset = known
                else:  # the hub forgot the upload (expired): start again
                    self._forget(held.id)
                    created = self._create(held, wire, reader, priority)
                    if created is None:
                        return Outcome("status", status=0)
                    url, offset = created
            for _ in range(4):  # a commit answered "incomplete" sends the rest, then again
                appended = self._append_all(wire, reader, url, offset, priority)
                if appended is None:  # the last chunk carried the commit
                    self._wire_cache = None
                    return Outcome("status", status=0)
                done = self._commit(held.id, url)
                if done is None:
                    self._wire_cache = None
                    return Outcome("status", status=0)
                offset = done
            return Outcome("http", status=409, detail="the hub keeps asking for more bytes")
        finally:
            reader.close()

    def _wire(self, held: HeldObject, reader: BlobReader) -> _Wire:
        """The bytes to upload (kept for the object's next attempt)."""
        cached = self._wire_cache
        if cached is not None and cached.object_id == held.id:
            return cached
        wire = self._wire_cache = self._make_wire(held, reader)
        return wire

    def _make_wire(self, held: HeldObject, reader: BlobReader) -> _Wire:
        """The bytes to upload: the envelope when it is smaller, else the object itself."""
        if not self.destination.envelope or held.size > _ENVELOPE_MAX:
            size, digest = _measure(reader)
            wire = _Wire(held.id, None, size, digest, "")
        else:
            original = _read_at(reader, 0, held.size)
            digest = hashlib.sha256(original).hexdigest()
            # Not verified here (unwrapping again would double the sender's CPU per object):
            # the hub checks the restored object's SHA-256 at commit, and an object it
            # refuses is wrapped again with verification, which falls back to deflate.
            verify = held.id in self.link.verify_envelope
            wrapped = envelope.wrap(original, verify=verify)
            if envelope.read_header(wrapped).mode is envelope.Mode.STORED:
                wire = _Wire(held.id, original, len(original), digest, "")
            else:
                wire = _Wire(held.id, wrapped, len(wrapped), digest, p.ENVELOPE)
        return wire

    def _create(
        self, held: HeldObject, wire: _Wire, reader: BlobReader, priority: int
    ) -> tuple[str, int] | None:
        """Create the upload; where the hub offers it, the first chunk (and, if that is the
        whole object, the commit) rides along. None: the hub holds the object now."""
        headers = self._create_headers(held, wire)
        body = b""
        if wire.size and CREATION_WITH_UPLOAD in self._extensions():
            body = self._chunk(wire, reader, 0, priority)
            headers.update(self._chunk_headers(body, 0, last=len(body) == wire.size))
        started = time.monotonic()
        final = "Waystation-Commit" in headers
        response = self._request("POST", p.UPLOADS, headers=headers, body=body, final=final)
        return self._created(held, wire, response, started if body else None)

    def _create_headers(self, held: HeldObject, wire: _Wire) -> dict[str, str]:
        uids = self.spool.metadata(held)
        meta = p.UploadMetadata(
            uids["sop_instance_uid"],
            uids["study_instance_uid"],
            uids["series_instance_uid"],
            wire.sha256,
            wire.encoding,
            self._study_objects(held),
        )
        return {"Upload-Length": str(wire.size), "Upload-Metadata": meta.header()}

    def _created(
        self, held: HeldObject, wire: _Wire, response: _Response, started: float | None
    ) -> tuple[str, int] | None:
        """The create's answer: the upload's URL and offset, or None if the hub holds the
        object now. ``started``: when a first chunk left with it (for the rate estimate)."""
        size = wire.size
        if response.status == 200 and response.header("Waystation-Upload-State") == "committed":
            upload = str(response.body.get("upload", ""))
            url = f"{p.UPLOADS}/{upload}" if p.is_upload_id(upload) else ""
            self._save(held.id, url, size, size, "committed")
            log.info("object %s: the hub already holds it", held.id)
            return None
        if response.status == 410:  # a whole object sent with its create was not right
            self._start_over(held.id, response)
        if response.status != 201:
            raise _Stop(_failure(response))
        location = response.header("Location") or ""
        if not location.startswith(p.UPLOADS + "/"):
            raise _Stop(Outcome("http", status=502, detail="the hub gave no upload location"))
        offset = int(response.header("Upload-Offset") or 0)
        if started is not None and offset:
            self.sizer.observe(offset, time.monotonic() - started)
        if response.header("Waystation-Upload-State") == "committed":  # the body was all of it
            self._save(held.id, location, size, size, "committed")
            self._wire_cache = None
            return None
        # Why wait: the URL must be durable before more bytes go out, so a restart resumes
        # this upload (a repeated create would find it too: the hub returns a unit's
        # unfinished upload of the same object, so even a lost answer costs one chunk).
        self._save(held.id, location, size, offset, "uploading")
        return location, offset

    def _study_objects(self, held: HeldObject) -> int:
        """How many objects of this object's study go to this hub (the study manifest)."""
        row = (
            self.spool.reader_connection()
            .execute(
                "SELECT count(*) FROM objects o JOIN deliveries d ON d.object_id = o.id"
                " WHERE o.study_tag = ? AND d.destination = ? AND o.state = 'held'",
                (held.study_tag, self.destination.name),
            )
            .fetchone()
        )
        return int(row[0]) if row else 0

    def _head(self, url: str) -> int | None:
        response = self._request("HEAD", url)
        if response.status == 404:
            return None
        if response.status != 200:
            raise _Stop(_failure(response))
        if response.header("Waystation-Upload-State") == "committed":
            return int(response.header("Upload-Length") or 0)
        return int(response.header("Upload-Offset") or 0)

    def _chunk(self, wire: _Wire, reader: BlobReader, offset: int, priority: int) -> bytes:
        """The next chunk from ``offset``, admitted by the rate gate (and counted)."""
        self._check_preempted(wire.object_id, priority, offset, wire.size)
        length = min(self.sizer.next_size(), wire.size - offset)
        if wire.data is not None:
            data = wire.data[offset : offset + length]
        else:
            data = _read_at(reader, offset, length)
        self._gate(len(data) + _HTTP_OVERHEAD, priority, wire.object_id, offset, wire.size)
        return data

    def _chunk_headers(self, data: bytes, offset: int, *, last: bool) -> dict[str, str]:
        headers = {
            "Upload-Offset": str(offset),
            "Content-Type": p.OFFSET_CONTENT_TYPE,
            "Upload-Checksum": p.checksum_header(hashlib.sha256(data).digest()),
        }
        if last and COMMIT_ON_LAST_CHUNK in self._extensions():
            headers["Waystation-Commit"] = "1"
        return headers

    def _append_all(
        self, wire: _Wire, reader: BlobReader, url: str, offset: int, priority: int
    ) -> int | None:
        """Send the rest from ``offset``; the offset reached, or None when the last chunk's
        answer says the object is committed."""
        object_id, size = wire.object_id, wire.size
        while offset < size:
            data = self._chunk(wire, reader, offset, priority)
            started = time.monotonic()
            headers = self._chunk_headers(data, offset, last=offset + len(data) == size)
            final = "Waystation-Commit" in headers
            response = self._request("PATCH", url, headers=headers, body=data, final=final)
            if response.status == 200 and (
                response.header("Waystation-Upload-State") == "committed"
            ):
                self.sizer.observe(len(data), time.monotonic() - started)
                self._save_state(object_id, "committed")
                return None
            if response.status == 204:
                confirmed = int(response.header("Upload-Offset") or 0)
                self.sizer.observe(confirmed - offset, time.monotonic() - started)
                offset = confirmed
                self._confirm(object_id, offset)
            elif response.status == 409 and response.header("Upload-Offset") is not None:
                offset = int(response.header("Upload-Offset") or 0)  # the hub's offset wins
            elif response.status in (404, 410):
                self._start_over(object_id, response)
            else:
                raise _Stop(_failure(response))
        return offset

    def _commit(self, object_id: str, url: str) -> int | None:
        response = self._request("POST", url + "/commit", final=True)
        if response.status == 200:
            self._save_state(object_id, "committed")
            return None
        if response.status == 409 and response.header("Upload-Offset") is not None:
            return int(response.header("Upload-Offset") or 0)
        if response.status in (404, 410):
            self._start_over(object_id, response)
        raise _Stop(_failure(response))

    def _start_over(self, object_id: str, response: _Response) -> None:
        """The hub forgot or discarded the upload: the next attempt starts from 0."""
        self._forget(object_id)
        self._wire_cache = None
        self.link.verify_envelope.add(object_id)
        log.warning("object %s: %s; it will be sent again", object_id, response.error)
        raise _Stop(Outcome("aborted", status=response.status, detail=response.error))

    # -- preemption and the rate gate ------------------------------------------------------

    def _check_preempted(self, object_id: str, priority: int, offset: int, size: int) -> None:
        """At a chunk boundary: hand the stream to a more urgent object waiting in the queue;
        while one is in flight on another stream, yield the link to it (wait here)."""
        yielded_until = time.monotonic() + _YIELD_AT_MOST
        while True:
            if self._more_urgent(priority):
                log.info("object %s: paused at byte %d for a more urgent object", object_id, offset)
                raise _Stop(Outcome("preempted", detail=f"paused at {offset} of {size}"))
            if not self.link.more_urgent_in_flight(priority):
                return
            if time.monotonic() > yielded_until:
                return
            time.sleep(_YIELD_SLICE)

    def _gate(self, nbytes: int, priority: int, object_id: str, offset: int, size: int) -> None:
        """Wait until the rate gate lets ``nbytes`` go; a long wait hands the object back."""
        while True:
            decision = self.link.admit(nbytes, _now(), stat=priority == _STAT)
            if decision.allowed:
                self._persist_counters()
                return
            if decision.wait > _LONGEST_GATE_WAIT:
                raise _Stop(Outcome("held", detail=decision.reason, retry_after=decision.wait))
            # Short waits in slices, so a STAT object still preempts a held-back one.
            time.sleep(min(decision.wait, 1.0))
            self._check_preempted(object_id, priority, offset, size)

    def _persist_counters(self) -> None:
        save_counters(self.spool, self.destination.name, self.link.counters().to_dict())

    def _send_politely(self, sock: socket.socket, body: bytes) -> None:
        """Send a chunk in slices paced to the polite controller's rate, which follows the
        connection's queueing delay (RTT above its empty-link base, from TCP_INFO)."""
        assert self.polite is not None
        view = memoryview(body)
        for start in range(0, len(view), _POLITE_SLICE):
            piece = view[start : start + _POLITE_SLICE]
            began = time.monotonic()
            # The polite rate is the link's: each of the streams sending takes its share,
            # paced by the kernel too, so a slice does not reach the uplink as one burst.
            rate = self.polite.rate / self.link.active_streams()
            pace(sock, max(rate, _POLITE_PACING_FLOOR))
            sock.sendall(piece)
            rtt = tcp_rtt(sock)
            if rtt is not None:
                self.gate.limit_to(self.polite.observe(rtt, time.monotonic()))
            pause = len(piece) * 8 / rate - (time.monotonic() - began)
            if pause > 0:
                time.sleep(min(pause, 2.0))

    def _extensions(self) -> frozenset[str]:
        """The protocol extensions the hub offers (OPTIONS, asked once per destination)."""
        known = self.link.extensions
        if known is None:
            response = self._request("OPTIONS", p.UPLOADS)
            if response.status >= 300:  # asked again next time; meanwhile the plain protocol
                return frozenset()
            offered = response.header("Tus-Extension") or ""
            known = frozenset(e.strip() for e in offered.split(",") if e.strip())
            self.link.extensions = known
        return known

    # -- receipts --------------------------------------------------------------------------

    def poll_receipts(self) -> int:
        """Ask the hub which committed objects reached the provider's PACS; records them.
        Returns how many became "delivered to the provider"."""
        conn = self.spool.reader_connection()
        rows = conn.execute(
            "SELECT object_id, url FROM hub_uploads WHERE destination = ? AND state = 'committed'"
            " AND url LIKE ? ORDER BY updated_at LIMIT ?",
            (self.destination.name, p.UPLOADS + "/%", _RECEIPT_BATCH),
        ).fetchall()
        if not rows:
            return 0
        by_upload = {str(url).rsplit("/", 1)[1]: str(object_id) for object_id, url in rows}
        query = "&".join(f"upload={quote(u)}" for u in by_upload)
        try:
            response = self._request("GET", f"{p.RECEIPTS}?{query}")
        except _Stop:
            return 0
        if response.status != 200:
            return 0
        delivered = [
            by_upload[r["upload"]]
            for r in response.body.get("receipts", [])
            if r.get("state") == "delivered" and r.get("upload") in by_upload
        ]
        if delivered:
            self.spool.journal.run(lambda c: _mark_delivered(c, self.destination.name, delivered))
        return len(delivered)

    # -- journal ---------------------------------------------------------------------------

    def _state(self, object_id: str) -> tuple[str, int, int, str] | None:
        row = (
            self.spool.reader_connection()
            .execute(
                "SELECT url, size, confirmed, state FROM hub_uploads"
                " WHERE object_id = ? AND destination = ?",
                (object_id, self.destination.name),
            )
            .fetchone()
        )
        return (str(row[0]), int(row[1]), int(row[2]), str(row[3])) if row else None

    def _save(self, object_id: str, url: str, size: int, confirmed: int, state: str) -> None:
        self.spool.journal.run(
            lambda conn: conn.execute(
                "INSERT INTO hub_uploads(object_id, destination, url, size, confirmed, state,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(object_id, destination)"
                " DO UPDATE SET url = excluded.url, size = excluded.size,"
                " confirmed = excluded.confirmed, state = excluded.state,"
                " updated_at = excluded.updated_at",
                (object_id, self.destination.name, url, size, confirmed, state, time.time()),
            )
        )

    def _confirm(self, object_id: str, offset: int) -> None:
        # Not waited for: the hub's HEAD is the authority on resume; this is for the console.
        self.spool.journal.submit(
            lambda conn: conn.execute(
                "UPDATE hub_uploads SET confirmed = ?, updated_at = ?"
                " WHERE object_id = ? AND destination = ? AND confirmed < ?",
                (offset, time.time(), object_id, self.destination.name, offset),
            )
        )

    def _save_state(self, object_id: str, state: str) -> None:
        self.spool.journal.run(
            lambda conn: conn.execute(
                "UPDATE hub_uploads SET state = ?, confirmed = size, updated_at = ?"
                " WHERE object_id = ? AND destination = ?",
                (state, time.time(), object_id, self.destination.name),
            )
        )

    def _forget(self, object_id: str) -> None:
        self.spool.journal.run(
            lambda conn: conn.execute(
                "DELETE FROM hub_uploads WHERE object_id = ? AND destination = ?",
                (object_id, self.destination.name),
            )
        )

    # -- HTTP ------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host = self._url.hostname or ""
            port = self._url.port
            timeout = self.destination.timeout
            if self._url.scheme == "https":
                context = ssl.create_default_context(
                    cafile=str(self.destination.ca_file) if self.destination.ca_file else None
                )
                self._conn = _HubHTTPSConnection(host, port, timeout=timeout, context=context)
            else:
                self._conn = _HubHTTPConnection(host, port, timeout=timeout)
        return self._conn

    def _token(self) -> str:
        # Read again whenever the file changes (an operator may replace the token while the
        # router runs); a stat per request instead of an open and read.
        try:
            info = os.stat(self.destination.token_file)
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if self._token_cache is None or self._token_cache[0] != stamp:
                token = self.destination.token_file.read_text().strip()
                self._token_cache = (stamp, token)
            return self._token_cache[1]
        except OSError as exc:
            raise _Stop(
                Outcome("hub-token", detail=f"cannot read the token file ({exc.strerror})")
            ) from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        final: bool = False,
    ) -> _Response:
        """One request and its answer. ``final``: the request that should commit the object,
        during whose answer the next object may be begun behind it (``lookahead``)."""
        # A connection idle for a while may have been closed by the hub (or a middlebox)
        # meanwhile: if it fails, try once more on a fresh one. Every request is safe to
        # repeat (a PATCH answers 409 with the offset, create and commit are idempotent).
        stale = self._exchange is not None and (
            time.monotonic() - self._last_request > _STALE_AFTER
        )
        try:
            return self._request_once(method, path, headers=headers or {}, body=body, final=final)
        except _Stop as stop:
            if not stale or stop.outcome.kind != "aborted":
                raise
            log.debug("%s: an idle connection had closed; trying a new one", self.destination.name)
            return self._request_once(method, path, headers=headers or {}, body=body, final=final)

    def _request_once(
        self, method: str, path: str, *, headers: dict[str, str], body: bytes, final: bool
    ) -> _Response:
        self._last_request = time.monotonic()
        if self._begun is not None:  # never meant to happen: that answer is not ours to read
            self.close()
        all_headers = self._headers(headers, len(body))
        exchange = self._connected()
        try:
            if body and self.polite is not None:
                exchange.sock.sendall(exchange.write_head(method, path, all_headers))
                self._send_politely(exchange.sock, body)
            else:
                exchange.write(method, path, all_headers, body)
        except OSError as exc:
            self.close()
            raise _Stop(Outcome("aborted", detail=type(exc).__name__)) from None
        self.bytes_sent += len(body)
        self._awaited = len(body)
        return self._final_answer(method) if final else self._answer(method)

    def _headers(self, headers: dict[str, str], length: int) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token()}",
            "Tus-Resumable": p.TUS_VERSION,
            "Content-Length": str(length),
            **headers,
        }

    def _connected(self) -> Exchange:
        """The connection's exchange, connecting first if need be."""
        conn = self._connection()
        if self._exchange is None or conn.sock is None:
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise _Stop(
                    Outcome("hub-tls", detail=exc.verify_message or "certificate")
                ) from None
            except ConnectionRefusedError:
                self.close()
                raise _Stop(Outcome("refused")) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise _Stop(Outcome("unreachable", detail=type(exc).__name__)) from None
            assert conn.sock is not None
            self._exchange = Exchange(conn.sock, self._url.netloc.rsplit("@", 1)[-1])
        return self._exchange

    def _final_answer(self, method: str) -> _Response:
        """The answer to a request that should commit its object. While it is on its way,
        the worker may begin the next object behind it (HTTP pipelining)."""
        if self._lookahead is not None and self._exchange is not None:
            self._lookahead(self)
        return self._answer(method)

    def _answer(self, method: str) -> _Response:
        exchange = self._exchange
        if exchange is None:  # closed while beginning the next object: the write failed
            raise _Stop(Outcome("aborted", detail="ConnectionResetError"))
        try:
            answer = exchange.read(method)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise _Stop(Outcome("aborted", detail=type(exc).__name__)) from None
        self._answered_at = time.monotonic()
        self._awaited = 0
        if answer.closes:
            self.close()
        try:
            parsed = json.loads(answer.body) if answer.body else {}
        except ValueError:
            parsed = {}
        return _Response(answer.status, answer.headers, parsed if isinstance(parsed, dict) else {})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _failure(response: _Response) -> Outcome:
    """An HTTP answer that is not success, as an outcome classify() understands."""
    status = response.status
    if status in (401, 403):
        return Outcome("hub-token", status=status, detail=response.error)
    retry_after = p.retry_after_seconds(response.header("Retry-After"))
    return Outcome("http", status=status, detail=response.error, retry_after=retry_after)


def _measure(reader: BlobReader) -> tuple[int, str]:
    """Size and SHA-256 (hex) of the object's plaintext, reading it once."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(1024 * 1024)
    reader.seek(0)
    while True:
        n = reader.readinto(buffer)
        if not n:
            break
        digest.update(memoryview(buffer)[:n])
        size += n
    return size, digest.hexdigest()


def _read_at(reader: BlobReader, offset: int, length: int) -> bytes:
    reader.seek(offset)
    buffer = bytearray(length)
    view = memoryview(buffer)
    filled = 0
    while filled < length:
        n = reader.readinto(view[filled:])
        if not n:
            raise IntegrityError("the stored object is shorter than its recorded size")
        filled += n
    return bytes(buffer)


def _mark_delivered(conn: sqlite3.Connection, destination: str, object_ids: list[str]) -> None:
    now = time.time()
    for object_id in object_ids:
        changed = conn.execute(
            "UPDATE hub_uploads SET state = 'delivered', updated_at = ?"
            " WHERE object_id = ? AND destination = ? AND state = 'committed'",
            (now, object_id, destination),
        ).rowcount
        if changed:
            conn.execute(
                "INSERT INTO history(object_id, at, event, detail) VALUES (?, ?, ?, ?)",
                (
                    object_id,
                    now,
                    "delivered-to-provider",
                    json.dumps({"destination": destination}, sort_keys=True),
                ),
            )
