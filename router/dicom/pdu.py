"""PDU framing on a plain socket (PS3.8 section 9.3): read one PDU with a hard length limit,
write a list of buffers with ``sendmsg``, every blocking call bounded by a deadline.

A PDU is ``type (1) | reserved (1) | length (4, big-endian) | body``. The header is read
first and its length checked against the limit for that type *before* anything is allocated:
a peer announcing a 4 GiB PDU gets :class:`~router.dicom.errors.PduTooLarge`, not a 4 GiB
buffer. Association PDUs are encoded and decoded with pynetdicom's PDU classes
(:mod:`router.dicom.association`); this module only moves bytes.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from typing import NamedTuple

from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, A_RELEASE_RQ
from typing_extensions import Buffer

from router.dicom.errors import (
    ConnectionClosed,
    NetworkTimeout,
    PduTooLarge,
    UnknownPdu,
)

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ_TYPE = 0x05
A_RELEASE_RP_TYPE = 0x06
A_ABORT = 0x07

HEADER = struct.Struct(">BxI")
HEADER_SIZE = HEADER.size
#: Largest association PDU read (RQ, AC): generous for 128 contexts with many syntaxes and
#: user identity tokens, yet far from what a hostile length field could ask for.
ASSOCIATE_LIMIT = 1024 * 1024
#: A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT bodies are 4 bytes by definition.
_FIXED_LIMIT = 4
#: Buffers handed to one sendmsg call (Linux's IOV_MAX is 1024).
IOV_LIMIT = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)

RELEASE_RQ: bytes = A_RELEASE_RQ().encode()
RELEASE_RP: bytes = A_RELEASE_RP().encode()


def abort_pdu(source: int, reason: int) -> bytes:
    """An encoded A-ABORT (source 0 service user, 2 service provider; PS3.8 9.3.8)."""
    pdu = A_ABORT_RQ()
    pdu.source = source
    pdu.reason_diagnostic = reason if source == 2 else 0
    return pdu.encode()


class Pdu(NamedTuple):
    """One PDU as read: its type and its body (the bytes after the 6-byte header)."""

    type: int
    body: bytearray

    def encoded(self) -> bytes:
        """Header and body again, as pynetdicom's ``decode`` methods expect them."""
        return HEADER.pack(self.type, len(self.body)) + bytes(self.body)


def limit_for(pdu_type: int, max_pdata: int) -> int:
    """The largest body accepted for ``pdu_type``; raises UnknownPdu for undefined types.

    ``max_pdata`` is the maximum length this side announced (must be > 0: this layer never
    announces "unlimited", so a hostile peer cannot make it allocate without bound)."""
    if pdu_type == P_DATA_TF:
        return max_pdata
    if pdu_type in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        return ASSOCIATE_LIMIT
    if pdu_type in (A_ASSOCIATE_RJ, A_RELEASE_RQ_TYPE, A_RELEASE_RP_TYPE, A_ABORT):
        return _FIXED_LIMIT
    raise UnknownPdu(pdu_type)


def read_pdu(sock: socket.socket, *, max_pdata: int, deadline: float | None) -> Pdu:
    """Read exactly one PDU; its length is checked before its body is read.

    Raises NetworkTimeout (deadline passed), ConnectionClosed (EOF or reset), UnknownPdu or
    PduTooLarge (the body is left unread: the connection must be aborted)."""
    header = bytearray(HEADER_SIZE)
    recv_exact(sock, memoryview(header), deadline)
    pdu_type, length = HEADER.unpack(header)
    limit = limit_for(pdu_type, max_pdata)
    if length > limit:
        raise PduTooLarge(pdu_type, length, limit)
    body = bytearray(length)
    recv_exact(sock, memoryview(body), deadline)
    return Pdu(pdu_type, body)


def recv_exact(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
    """Fill ``view`` from the socket."""
    got = 0
    while got < len(view):
        _set_timeout(sock, deadline)
        try:
            n = sock.recv_into(view[got:])
        except TimeoutError:
            raise NetworkTimeout("no data from the peer in time") from None
        except OSError as exc:
            raise ConnectionClosed(f"connection broken: {type(exc).__name__}") from exc
        if n == 0:
            raise ConnectionClosed("the peer closed the connection")
        got += n


def send_buffers(sock: socket.socket, buffers: Sequence[Buffer], deadline: float | None) -> None:
    """Send every buffer, in order, with as few sendmsg calls as the kernel allows.

    A send may be partial (a slow peer, a full socket buffer): the rest is sent from where it
    stopped, without joining the buffers into one."""
    views = [memoryview(b) for b in buffers]
    if isinstance(sock, ssl.SSLSocket):  # TLS has no sendmsg: one record per joined group
        for start in range(0, len(views), IOV_LIMIT):
            _set_timeout(sock, deadline)
            try:
                sock.sendall(b"".join(views[start : start + IOV_LIMIT]))
            except TimeoutError:
                raise NetworkTimeout("the peer took no data in time") from None
            except OSError as exc:
                raise ConnectionClosed(f"connection broken: {type(exc).__name__}") from exc
        return
    index = 0
    while index < len(views):
        _set_timeout(sock, deadline)
        try:
            sent = sock.sendmsg(views[index : index + IOV_LIMIT])
        except TimeoutError:
            raise NetworkTimeout("the peer took no data in time") from None
        except OSError as exc:
            raise ConnectionClosed(f"connection broken: {type(exc).__name__}") from exc
        while index < len(views) and sent >= len(views[index]):
            sent -= len(views[index])
            index += 1
        if sent:
            views[index] = views[index][sent:]


def _set_timeout(sock: socket.socket, deadline: float | None) -> None:
    if deadline is None:
        sock.settimeout(None)
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise NetworkTimeout("the deadline passed")
    sock.settimeout(remaining)
