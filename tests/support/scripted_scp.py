"""A scripted DICOM destination: a pynetdicom Storage SCP on 127.0.0.1 that misbehaves on cue.

``ScriptedSCP()`` runs in the test process (pynetdicom's own threads) and answers every C-STORE
with the next *store action*: from the object's own script (:meth:`ScriptedSCP.script_for`),
else from the global script (:meth:`ScriptedSCP.script`), else the default
(:meth:`ScriptedSCP.set_default`, normally :data:`ACCEPT`). Every association request likewise
takes the next *association action* (:meth:`ScriptedSCP.script_associations`): ``None`` to
negotiate normally or a :class:`Reject`. Store actions:

* ``Respond(status=0x0000, keep=None, delay=0.0)`` - answer ``status`` (0x0000 is
  :data:`ACCEPT`; 0xA700 out of resources, 0xA900 data set does not match SOP class, 0xC000
  cannot understand, 0x0122 SOP class not supported, ...) after ``delay`` seconds (a slow
  destination). ``keep`` records the object; by default only for success and warning statuses.
* ``Abort(keep=False)`` - A-ABORT instead of a response.
* ``NoAnswer(seconds=30.0, keep=False)`` - never answer: hold the response until the sender
  gives up (its A-ABORT or a closed connection), the SCP closes, or ``seconds`` pass (then
  A-ABORT), so no association thread is blocked for ever.

Rejections come two ways: :class:`Reject` from the script (any result, source and reason, sent
from the ``EVT_REQUESTED`` handler), or pynetdicom's own checks, configured here with
``require_calling_aet`` (rejected-permanent, "calling AE title not recognised") and
``maximum_associations`` (rejected-transient, "local limit exceeded").
``transfer_syntaxes`` and ``sop_classes`` restrict the presentation contexts accepted.

Received objects are kept as the data set bytes exactly as received (no file meta), keyed by
SOP Instance UID, with the negotiated transfer syntax and a count per UID (duplicates). Works
whether or not ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` is set by other code in the
process: with it the data set is read from ``event.dataset_path``, else from
``event.encoded_dataset()``. Thread-safe; counters in :meth:`ScriptedSCP.statistics`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from tests.support.dicomgen import dataset_offset

__all__ = [
    "ACCEPT",
    "REJECT_CALLED_AE",
    "REJECT_CALLING_AE",
    "REJECT_CONGESTION",
    "REJECT_LOCAL_LIMIT",
    "REJECT_TRANSIENT",
    "Abort",
    "NoAnswer",
    "Received",
    "Reject",
    "Respond",
    "SCPStats",
    "ScriptedSCP",
    "StoreAction",
]


@dataclass(frozen=True)
class Respond:
    """Answer ``status`` after ``delay`` s; ``keep`` (default: success/warning) records it."""

    status: int = 0x0000
    keep: bool | None = None
    delay: float = 0.0

    @property
    def stores(self) -> bool:
        """Whether the object is recorded as received."""
        if self.keep is not None:
            return self.keep
        s = self.status
        return s == 0x0000 or (s & 0xF000) == 0xB000 or s in (0x0107, 0x0116)


@dataclass(frozen=True)
class Abort:
    """Send an A-ABORT instead of a C-STORE response."""

    keep: bool = False


@dataclass(frozen=True)
class NoAnswer:
    """Never answer; give up (A-ABORT) after ``seconds`` if the sender is still waiting."""

    seconds: float = 30.0
    keep: bool = False


@dataclass(frozen=True)
class Reject:
    """A-ASSOCIATE-RJ: ``result`` 1 permanent / 2 transient; ``source`` and ``reason`` (PS3.8).

    source 1 (service user): reason 1 none, 2 application context, 3 calling AE title not
    recognised, 7 called AE title not recognised; source 2 (ACSE): 1 none, 2 protocol version;
    source 3 (presentation): 1 temporary congestion, 2 local limit exceeded.
    """

    result: int
    source: int
    reason: int


StoreAction = Respond | Abort | NoAnswer
_VERIFICATION = "1.2.840.10008.1.1"
ACCEPT = Respond()
REJECT_CALLING_AE = Reject(1, 1, 3)  # rejected-permanent, calling AE title not recognised
REJECT_CALLED_AE = Reject(1, 1, 7)  # rejected-permanent, called AE title not recognised
REJECT_TRANSIENT = Reject(2, 1, 1)  # rejected-transient, service user, no reason given
REJECT_CONGESTION = Reject(2, 3, 1)  # rejected-transient, temporary congestion
REJECT_LOCAL_LIMIT = Reject(2, 3, 2)  # rejected-transient, local limit exceeded


@dataclass(frozen=True)
class Received:
    """The last copy of one object received and kept, and how often it was kept."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    calling_ae: str
    data: bytes
    count: int


@dataclass(frozen=True)
class SCPStats:
    """Counters since start: associations requested and rejected, C-STOREs, outcomes."""

    associations: int
    rejected: int
    c_stores: int
    statuses: Counter[int]
    aborts: int
    unanswered: int


class ScriptedSCP:
    """A Storage SCP on 127.0.0.1 whose answers the test scripts; a context manager.

    ``port`` None binds a free port (read ``port`` after start). ``transfer_syntaxes``
    (default: all pynetdicom knows) and ``sop_classes`` (default: all storage classes) set the
    presentation contexts accepted; Verification is always accepted. ``require_calling_aet``
    and ``maximum_associations`` switch on pynetdicom's own rejections. ``acse_timeout`` also
    bounds how long a rejection or an abort waits for the peer to close the connection.
    """

    def __init__(
        self,
        *,
        ae_title: str = "PACS",
        port: int | None = None,
        transfer_syntaxes: Sequence[str] | None = None,
        sop_classes: Sequence[str] | None = None,
        require_calling_aet: Sequence[str] = (),
        maximum_associations: int = 10,
        acse_timeout: float = 5.0,
    ) -> None:
        self.ae_title = ae_title
        self.port = port or 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._default: StoreAction = ACCEPT
        self._script: deque[StoreAction] = deque()
        self._per_uid: dict[str, deque[StoreAction]] = {}
        self._assoc_default: Reject | None = None
        self._assoc_script: deque[Reject | None] = deque()
        self._received: dict[str, Received] = {}
        self._associations = self._rejected = self._c_stores = self._aborts = 0
        self._unanswered = 0
        self._statuses: Counter[int] = Counter()
        self._server: ThreadedAssociationServer | None = None

        ae = AE(ae_title=ae_title)
        ae.acse_timeout = acse_timeout
        ae.dimse_timeout = ae.network_timeout = 60.0
        ae.maximum_associations = maximum_associations
        ae.maximum_pdu_size = 0
        ae.require_calling_aet = list(require_calling_aet)
        syntaxes = list(transfer_syntaxes or ALL_TRANSFER_SYNTAXES)
        storage = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        for uid in storage if sop_classes is None else dict.fromkeys(sop_classes):
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(_VERIFICATION)
        self._ae = ae

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Listen on 127.0.0.1 (``port`` is then the bound port)."""
        server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=self._handlers()
        )
        assert server is not None  # block=False returns the running server
        self._server = server
        self.port = int(server.server_address[1])
        return self

    def _handlers(self) -> list[EventHandlerType]:
        """The event handlers bound at start (subclasses add their own)."""
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_builtin_reject),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def close(self) -> None:
        """Stop listening, abort open associations and join their threads. Idempotent."""
        if self._server is None:
            return
        self._closing.set()  # wakes held responses
        server, self._server = self._server, None
        server.shutdown()
        for assoc in self._ae.active_associations:
            assoc.abort()
            assoc.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- behaviour (thread-safe) -------------------------------------------------------------
    def set_default(self, action: StoreAction) -> None:
        """The store action used once the scripts are exhausted."""
        with self._lock:
            self._default = action

    def script(self, actions: Iterable[StoreAction]) -> None:
        """Append store actions, consumed in order by C-STOREs of any object."""
        with self._lock:
            self._script.extend(actions)

    def script_for(self, sop_instance_uid: str, actions: Iterable[StoreAction]) -> None:
        """Append store actions for one object; they take precedence over :meth:`script`."""
        with self._lock:
            self._per_uid.setdefault(str(sop_instance_uid), deque()).extend(actions)

    def set_association_default(self, action: Reject | None) -> None:
        """Reject every association with ``action`` (``None``: negotiate normally)."""
        with self._lock:
            self._assoc_default = action

    def script_associations(self, actions: Iterable[Reject | None]) -> None:
        """Append association actions (``None`` = negotiate), consumed per request."""
        with self._lock:
            self._assoc_script.extend(actions)

    def reset_script(self) -> None:
        """Forget all scripts and defaults (accept everything); records are kept."""
        with self._lock:
            self._script.clear()
            self._per_uid.clear()
            self._assoc_script.clear()
            self._default, self._assoc_default = ACCEPT, None

    # -- observations ------------------------------------------------------------------------
    def received(self) -> dict[str, Received]:
        """Objects kept so far, by SOP Instance UID."""
        with self._lock:
            return dict(self._received)

    def receive_count(self, sop_instance_uid: str) -> int:
        """How many times the object was kept (more than 1: duplicates)."""
        with self._lock:
            found = self._received.get(str(sop_instance_uid))
            return found.count if found else 0

    def statistics(self) -> SCPStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return SCPStats(
                associations=self._associations,
                rejected=self._rejected,
                c_stores=self._c_stores,
                statuses=Counter(self._statuses),
                aborts=self._aborts,
                unanswered=self._unanswered,
            )

    def wait_for(self, count: int, timeout: float = 10.0) -> dict[str, Received]:
        """Wait until ``count`` distinct objects were kept; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while len(found := self.received()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} objects received in {timeout} s")
            time.sleep(0.02)
        return found

    # -- handlers (pynetdicom's association threads) -----------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        with self._lock:
            self._associations += 1
            action = self._assoc_script.popleft() if self._assoc_script else self._assoc_default
            if action is not None:
                self._rejected += 1
        if action is not None:
            event.assoc.acse.send_reject(action.result, action.source, action.reason)
            # As pynetdicom does after its own rejections: wait until the peer closed the
            # connection (or the ARTIM timer, acse_timeout, expired) so the A-ASSOCIATE-RJ
            # is sent before the socket is shut.
            event.assoc.kill()

    def _on_builtin_reject(self, event: evt.Event) -> None:
        with self._lock:
            self._rejected += 1

    def _next_action(self, uid: str) -> StoreAction:
        with self._lock:
            self._c_stores += 1
            own = self._per_uid.get(uid)
            if own:
                return own.popleft()
            return self._script.popleft() if self._script else self._default

    def _on_store(self, event: evt.Event) -> int:
        request: Any = event.request
        uid = str(request.AffectedSOPInstanceUID)
        action = self._next_action(uid)
        keep = action.stores if isinstance(action, Respond) else action.keep
        if keep:
            self._keep(event, uid)
        assoc: Association = event.assoc
        if isinstance(action, Abort):
            with self._lock:
                self._aborts += 1
            assoc.abort()  # non-blocking inside a handler; no response follows
            return 0xC000
        if isinstance(action, NoAnswer):
            if self._hold(assoc, action.seconds):
                assoc.abort()
            self._no_response(assoc)
            return 0xC000
        if action.delay and not self._hold(assoc, action.delay):
            self._no_response(assoc)
            return action.status
        with self._lock:
            self._statuses[action.status] += 1
        return action.status

    def _keep(self, event: evt.Event, uid: str) -> None:
        try:
            path: Path | None = event.dataset_path  # chunked receive on: a file with meta
        except AttributeError:
            path = None
        if path is not None:
            with open(path, "rb") as fh:
                fh.seek(dataset_offset(path))
                data = fh.read()
        else:
            data = event.encoded_dataset(include_meta=False)
        request: Any = event.request
        with self._lock:
            previous = self._received.get(uid)
            self._received[uid] = Received(
                sop_instance_uid=uid,
                sop_class_uid=str(request.AffectedSOPClassUID),
                transfer_syntax=str(event.context.transfer_syntax),
                calling_ae=str(event.assoc.requestor.ae_title),
                data=data,
                count=(previous.count if previous else 0) + 1,
            )

    def _hold(self, assoc: Association, seconds: float) -> bool:
        """Wait ``seconds``; False as soon as the peer is gone or the SCP closes."""
        deadline = time.monotonic() + seconds
        while not self._peer_gone(assoc):
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if self._closing.wait(min(left, 0.05)):
                return False
        return False

    @staticmethod
    def _peer_gone(assoc: Association) -> bool:
        return bool(assoc.dul.state_machine.current_state == "Sta1" or assoc.acse.is_aborted())

    def _no_response(self, assoc: Association) -> None:
        """Make sure pynetdicom sends no response (the association is over)."""
        with self._lock:
            self._unanswered += 1
        # The reactor would set this itself once it sees the peer's A-ABORT; setting it now
        # stops the service class from sending a response into a closed association.
        assoc.is_established = False
