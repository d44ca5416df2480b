"""HTTP(S) client connections for the WAN senders (hub, STOW-RS): http.client on sockets
that use BBR congestion control where the kernel offers it.

Why BBR: under random loss a loss-based TCP (CUBIC) collapses to a fraction of the link;
BBR per socket does not (docs/wan.md). Why http.client: it connects (TLS, timeouts) and,
for the STOW-RS sender, streams request bodies from the spool's decrypting reader and reads
small answers, with no dependency to track on an appliance. The hub sender uses only its
connect and writes its requests through router/delivery/http_pipeline.py, which lets a
second request leave before the first one's answer.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

_TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)


def set_bbr(sock: socket.socket) -> bool:
    """Use BBR on this socket where the kernel offers it (loss-tolerant congestion control);
    otherwise keep the system's default. Returns whether BBR is in use."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, b"bbr")
    except OSError:
        return False
    return True


class BbrHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket uses BBR where available."""

    def connect(self) -> None:
        """Connect, then switch the socket to BBR."""
        super().connect()
        set_bbr(self.sock)


class BbrHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose socket uses BBR where available."""

    def connect(self) -> None:
        """Connect (TLS handshake included), then switch the socket to BBR."""
        super().connect()
        set_bbr(self.sock)


def client_tls_context(
    ca_file: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A verifying TLS client context: the server's certificate checked against ``ca_file``
    (or the system's CAs) and its host name; with ``cert`` and ``key`` the unit's client
    certificate is offered. Raises OSError or ssl.SSLError if a file cannot be loaded."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context
