"""The C-STORE / C-ECHO receiver: a listening socket and one thread per association.

Statuses are decided in store.py; the upper-layer protocol is in association.py. Storage
Commitment reports (N-EVENT-REPORT, Push Model) that destinations send on an association of
their own are accepted too, with SCP/SCU role selection, and handed to the commitment
manager; a caller admitted only for reports that sends a C-STORE gets 0x0124 (not authorised).

Limits that hold under load or attack: at most ``max_associations`` associations (more are
rejected as "local limit exceeded", a transient rejection senders retry), a bounded number of
connections that have not yet associated, and one deadline for each association request and
each PDU.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

from router.config.model import IngestConfig
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.dicom import tls
from router.errors import ConfigError, ListenError
from router.health.liveness import Heartbeat
from router.ingest import pynetdicom_setup
from router.ingest.association import IncomingAssociation, Limits, ReportSink, Slots
from router.ingest.store import AlarmSink, ObjectStore, Planner
from router.ingest.wire import Wire
from router.spool.spool import Spool

log = logging.getLogger("waystation.ingest")

# Connections beyond max_associations still get an answer ("busy") instead of silence, up to
# this many more; past that a connection is closed at once, so a flood cannot exhaust threads.
_EXTRA_CONNECTIONS = 8
_ACCEPT_POLL_SECONDS = 0.5

__all__ = ["IngestServer", "ObjectAttributes", "Source"]


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
        pynetdicom_setup.configure()  # pydicom's warnings quote values: keep them silent
        self.config = config
        self.store = ObjectStore(
            spool,
            planner=planner,
            alarm=alarm,
            wanted_keywords=wanted_keywords,
            on_stored=on_stored,
            max_sequence_depth=config.max_sequence_depth,
        )
        self.limits = Limits(
            ae_title=ae_title,
            max_pdu=config.max_pdu,
            allowed_callers=tuple(config.allowed_callers),
            acse_timeout=config.acse_timeout,
            dimse_timeout=config.dimse_timeout,
            network_timeout=config.network_timeout,
            max_object_size=config.max_object_size,
            # Destinations that may call only to report commitment results (when
            # allowed_callers restricts who may call at all).
            report_only=frozenset(set(report_callers) - set(config.allowed_callers))
            if config.allowed_callers
            else frozenset(),
        )
        self._tls = _server_context(config)
        self._ae_certificates = (
            {ae.strip(): tuple(ids) for ae, ids in config.tls.ae_certificates.items()}
            if config.tls
            else {}
        )
        self._reports = commitment_reports
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[int, socket.socket] = {}
        self._per_peer: dict[str, int] = {}
        self._slots = Slots(config.max_associations)
        # The service watchdog checks it: the accept loop turns every poll interval.
        self.heartbeat = Heartbeat()

    @property
    def stored(self) -> int:
        """Objects stored since start."""
        return self.store.stored

    @property
    def last_received_at(self) -> float | None:
        """When the last object was stored (Unix time), if any."""
        return self.store.last_received_at

    def start(self) -> None:
        """Start listening (returns at once; associations run in their own threads)."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.config.host, self.config.port))
            listener.listen(64)
        except OSError as exc:
            listener.close()
            hint = {
                98: "another router or DICOM service already uses it",
                13: "ports below 1024 need the service's CAP_NET_BIND_SERVICE",
                99: "this machine has no such address",
            }.get(exc.errno or 0, exc.strerror or "")
            raise ListenError(
                f"cannot listen on {self.config.listen} (ingest.listen): {hint}"
            ) from None
        listener.settimeout(_ACCEPT_POLL_SECONDS)
        self._listener = listener
        self._accepting.set()
        self._thread = threading.Thread(target=self._accept_loop, name="ingest-accept", daemon=True)
        self._thread.start()
        log.info("ingest listening on %s as %s", self.config.listen, self.limits.ae_title)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def active_associations(self) -> int:
        """Connections being served now (associated or negotiating)."""
        with self._lock:
            return len(self._connections)

    @property
    def accept_thread(self) -> threading.Thread | None:
        """The accept loop's thread, once started (for the service watchdog)."""
        return self._thread

    @property
    def accepting(self) -> bool:
        """Whether new associations are accepted."""
        return self._accepting.is_set()

    def refuse_new_associations(self) -> None:
        """Stop accepting connections; ongoing associations finish."""
        self._accepting.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def stop(self) -> None:
        """Stop listening and end the associations still open."""
        self.refuse_new_associations()
        with self._lock:
            open_sockets = list(self._connections.values())
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._accepting.is_set():
            self.heartbeat.working()
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._accepting.is_set():
                    log.exception("accepting a connection failed")
                    time.sleep(_ACCEPT_POLL_SECONDS)
                continue
            peer = str(address[0])
            per_peer = self.config.max_associations_per_peer
            with self._lock:
                crowded = len(self._connections) >= (
                    self.config.max_associations + _EXTRA_CONNECTIONS
                )
                # One address may not take every slot: its connections beyond its share are
                # closed at once, so other modalities are still served during a flood.
                greedy = bool(per_peer) and self._per_peer.get(peer, 0) >= per_peer
                if not crowded and not greedy:
                    self._connections[id(sock)] = sock
                    self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            if crowded or greedy:
                log.warning(
                    "connection from %s closed: too many connections%s",
                    peer,
                    " from that address" if greedy else "",
                )
                sock.close()
                continue
            threading.Thread(
                target=self._serve,
                args=(sock, str(address[0])),
                name=f"ingest-{address[0]}",
                daemon=True,
            ).start()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        key = id(sock)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            identities: frozenset[str] | None = None
            if self._tls is not None:
                secured = self._handshake(sock, peer)
                if secured is None:
                    return
                with self._lock:
                    self._connections[key] = secured
                sock = secured
                identities = tls.peer_identities(secured)
            IncomingAssociation(
                Wire(sock),
                peer,
                limits=self.limits,
                store=self.store,
                slots=self._slots,
                reports=self._reports,
                identities=identities,
                ae_certificates=self._ae_certificates,
            ).serve()
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._connections.pop(key, None)
                left = self._per_peer.get(peer, 1) - 1
                if left > 0:
                    self._per_peer[peer] = left
                else:
                    self._per_peer.pop(peer, None)

    def _handshake(self, sock: socket.socket, peer: str) -> ssl.SSLSocket | None:
        """The TLS handshake, all of it within acse_timeout: a timer shuts the socket down
        at the deadline, so a client trickling its handshake cannot hold the connection
        (a per-read timeout alone would restart with every byte)."""
        assert self._tls is not None
        deadline = threading.Timer(self.limits.acse_timeout, _shut, args=(sock,))
        deadline.daemon = True
        deadline.start()
        try:
            sock.settimeout(self.limits.acse_timeout)
            return self._tls.current().wrap_socket(sock, server_side=True)
        except ssl.SSLError as exc:
            # A plaintext DICOM client, an old TLS version, an untrusted certificate.
            log.warning("TLS handshake with %s refused: %s", peer, exc.reason or exc)
            return None
        except OSError as exc:
            log.warning("TLS handshake with %s failed: %s", peer, type(exc).__name__)
            return None
        finally:
            deadline.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _server_context(config: IngestConfig) -> tls.ReloadingContext | None:
    settings = config.tls
    if settings is None:
        return None

    def build() -> ssl.SSLContext:
        return tls.server_context(
            settings.cert,
            settings.key,
            settings.ca,
            require_client_cert=settings.require_client_cert,
            crl=settings.crl,
        )

    try:
        return tls.ReloadingContext(build, settings.crl)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ConfigError(
            [f"ingest.tls: cannot load the certificate, key, CA or CRL files: {exc}"]
        ) from None
