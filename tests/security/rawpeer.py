"""A raw DICOM caller for hostile-peer tests: hand-made association requests, command sets and
data sets on a real socket (optionally from another loopback source address)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from router.dicom import commands
from router.dicom.commands import Command
from tests.unit.test_ingest_protocol import _request

PDU = struct.Struct(">BxI")


class RawPeer:
    """One connection; ``associate`` then ``store``; every call bounded by ``timeout``."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def send_request(self, request: bytes) -> bytes:
        """Send an association request (raw bytes); return the answer PDU (type + body)."""
        self.sock.sendall(request)
        return self.read_pdu()

    def associate(
        self, contexts: Sequence[tuple[int, str, list[str]]], calling: str = "MODALITY"
    ) -> bytes:
        """Propose ``contexts``; return the answer PDU."""
        return self.send_request(_request(list(contexts), calling=calling))

    def read_pdu(self) -> bytes:
        """One whole PDU, header included; b"" when the router closed the connection."""
        header = self._exactly(6)
        if len(header) < 6:
            return header
        _, length = PDU.unpack(header)
        return header + self._exactly(length)

    def store(self, context_id: int, sop_class: str, sop_instance: str, data: bytes) -> int:
        """One C-STORE with ``data`` as its data set; the response status (-1: no answer)."""
        command = commands.c_store_rq(1, sop_class, sop_instance)
        self._pdv(context_id, 0x03, command)
        step = 16000
        for start in range(0, max(len(data), 1), step):
            piece = data[start : start + step]
            self._pdv(context_id, 0x02 if start + step >= len(data) else 0x00, piece)
        answer = self.read_pdu()
        if len(answer) < 12 or answer[0] != 0x04:
            return -1
        response: Command = commands.decode(answer[12:])
        return -1 if response.status is None else int(response.status)

    def _pdv(self, context_id: int, control: int, payload: bytes) -> None:
        item = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
        self.sock.sendall(PDU.pack(0x04, len(item)) + item)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (ConnectionResetError, TimeoutError):
                return data
            if not chunk:
                return data
            data += chunk
        return data
