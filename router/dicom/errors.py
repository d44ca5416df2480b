"""The upper layer's exceptions: one tree, so a caller can tell what went wrong and react.

Every failure of the network or of the peer surfaces as a :class:`DicomNetError`; a plain
``OSError`` escapes only from :func:`router.dicom.association.request` while the TCP
connection is being made (``ConnectionRefusedError`` and friends), so "nothing listens" stays
distinguishable from "it listens but misbehaves".
"""

from __future__ import annotations

# A-ABORT reasons when the service provider aborts (PS3.8 Table 9-26, source 2).
ABORT_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_UNEXPECTED_PDU_PARAMETER = 5
ABORT_INVALID_PDU_PARAMETER = 6


class DicomNetError(Exception):
    """Base of every upper-layer failure."""


class NetworkTimeout(DicomNetError):
    """Nothing arrived (or nothing could be sent) before the deadline."""


class ConnectionClosed(DicomNetError):
    """The peer closed the TCP connection, or it broke, without an A-ABORT."""


class ProtocolError(DicomNetError):
    """The peer broke PS3.8: a malformed, unknown, oversized or unexpected PDU.

    ``abort_reason`` is the A-ABORT reason to send (source 2, service provider)."""

    abort_reason = ABORT_INVALID_PDU_PARAMETER


class PduTooLarge(ProtocolError):
    """A PDU header claimed more bytes than this side accepts; nothing was allocated."""

    abort_reason = ABORT_INVALID_PDU_PARAMETER

    def __init__(self, pdu_type: int, length: int, limit: int) -> None:
        super().__init__(f"PDU type 0x{pdu_type:02X} claims {length} bytes; the limit is {limit}")
        self.pdu_type = pdu_type
        self.length = length
        self.limit = limit


class UnknownPdu(ProtocolError):
    """A PDU type PS3.8 does not define."""

    abort_reason = ABORT_UNRECOGNIZED_PDU

    def __init__(self, pdu_type: int) -> None:
        super().__init__(f"unknown PDU type 0x{pdu_type:02X}")
        self.pdu_type = pdu_type


class UnexpectedPdu(ProtocolError):
    """A known PDU that has no place in the association's current state."""

    abort_reason = ABORT_UNEXPECTED_PDU


class PeerAborted(DicomNetError):
    """The peer sent A-ABORT (``source`` and ``reason`` as in PS3.8 Table 9-26)."""

    def __init__(self, source: int, reason: int) -> None:
        super().__init__(f"the peer aborted the association (source {source}, reason {reason})")
        self.source = source
        self.reason = reason


class PeerReleased(DicomNetError):
    """The peer asked to release the association while an answer was awaited; it was
    answered with A-RELEASE-RP and the connection is closed."""


class AssociationRejected(DicomNetError):
    """A-ASSOCIATE-RJ: ``result`` 1 permanent / 2 transient, ``source``, ``reason``."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected (result {result}, source {source}, "
                         f"reason {reason})")  # fmt: skip
        self.result = result
        self.source = source
        self.reason = reason


class UnexpectedMessage(DicomNetError):
    """A DIMSE message arrived that is not the answer awaited (another Message ID or
    command); the exchange is broken and the association should be closed."""
