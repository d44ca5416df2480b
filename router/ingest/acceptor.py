"""Association negotiation as the acceptor (PS3.8 section 7.1), decided in one pure step.

pynetdicom's PDU classes encode and decode the association PDUs and its presentation-context
negotiation decides the contexts (every storage SOP class, private and unknown ones included,
is accepted in the first transfer syntax offered; Verification in any syntax pynetdicom
knows); this module adds Waystation's checks and limits and builds the answer bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
_MAX_CONTEXTS = 128  # odd context IDs 1..255

# A-ASSOCIATE-RJ (result, source, reason): PS3.8 table 9-21.
REJECT_CALLING_AE = (1, 1, 3)  # permanent, service-user, calling AE title not recognised
REJECT_CALLED_AE = (1, 1, 7)  # permanent, service-user, called AE title not recognised
REJECT_NO_REASON = (1, 1, 1)  # permanent, service-user, no reason given
REJECT_BUSY = (2, 3, 2)  # transient, service-provider (presentation), local limit exceeded
REJECT_APPLICATION_CONTEXT = (1, 1, 2)  # permanent, service-user, context name not supported


@dataclass
class Negotiated:
    """What an association request came to: the answer to send, and if accepted, the
    contexts {context id: (abstract syntax, transfer syntax)} and the peer's max PDU."""

    answer: bytes
    accepted: bool
    calling_ae: str = ""
    called_ae: str = ""
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)
    peer_max_pdu: int = 0
    reject: tuple[int, int, int] | None = None


def _supported(accept_reports: bool) -> list[PresentationContext]:
    verification = PresentationContext()
    verification.abstract_syntax = Verification
    verification.transfer_syntax = list(ALL_TRANSFER_SYNTAXES)
    if not accept_reports:
        return [verification]
    # A destination sends its Storage Commitment report as the SCP on an association it
    # opens: accept its proposed SCP role, and not an SCU role (this unit commits nothing).
    reports = PresentationContext()
    reports.abstract_syntax = STORAGE_COMMITMENT_PUSH_MODEL
    reports.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    reports.scu_role, reports.scp_role = False, True
    return [verification, reports]


_SUPPORTED = {False: _supported(False), True: _supported(True)}


def negotiate(
    request: bytes,
    *,
    ae_title: str,
    max_pdu: int,
    allowed_callers: Sequence[str],
    busy: bool,
    accept_reports: bool = False,
) -> Negotiated:
    """Decide an A-ASSOCIATE-RQ (its whole PDU, header included).

    Raises ValueError for a request that cannot be decoded or breaks the standard's limits
    (the caller aborts the connection)."""
    if len(request) < 74:
        raise ValueError("an association request shorter than its fixed fields")
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(request)
    primitive: Any = pdu.to_primitive()
    calling = str(primitive.calling_ae_title).strip()
    called = str(primitive.called_ae_title).strip()
    proposed: list[PresentationContext] = list(primitive.presentation_context_definition_list)
    _check_contexts(proposed)

    reject: tuple[int, int, int] | None = None
    if not _valid_ae(request[26:42]):
        # Control characters, backslash, bytes outside ASCII or only spaces (PS3.5 AE):
        # refused before the title reaches a log line or an allowed_callers comparison.
        reject, calling = REJECT_CALLING_AE, ""
    elif not _valid_ae(request[10:26]):
        reject, called = REJECT_CALLED_AE, ""
    elif str(primitive.application_context_name) != APPLICATION_CONTEXT:
        reject = REJECT_APPLICATION_CONTEXT
    elif allowed_callers and calling not in allowed_callers:
        reject = REJECT_CALLING_AE
    elif busy:
        reject = REJECT_BUSY
    if reject is not None:
        return rejection(reject, calling, called)

    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in primitive.user_information
        if type(item).__name__ == "SCP_SCU_RoleSelectionNegotiation"
    }
    results, role_replies = negotiate_unrestricted(proposed, _SUPPORTED[accept_reports], roles)
    contexts = {
        cx.context_id or 0: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in results
        if cx.result == 0x00
    }
    reply = A_ASSOCIATE()
    reply.application_context_name = APPLICATION_CONTEXT
    reply.calling_ae_title = primitive.calling_ae_title
    reply.called_ae_title = primitive.called_ae_title
    reply.result = 0x00
    reply.presentation_context_definition_results_list = results
    reply.user_information = [
        _max_length(max_pdu),
        _implementation_uid(),
        _implementation_version(),
        *role_replies,
    ]
    answer = A_ASSOCIATE_AC()
    answer.from_primitive(reply)
    return Negotiated(
        answer=answer.encode(),
        accepted=True,
        calling_ae=calling,
        called_ae=called,
        contexts=contexts,
        peer_max_pdu=int(primitive.maximum_length_received or 0),
    )


def _check_contexts(proposed: Sequence[PresentationContext]) -> None:
    if not proposed:
        raise ValueError("the request proposes no presentation context")
    if len(proposed) > _MAX_CONTEXTS:
        raise ValueError(f"the request proposes {len(proposed)} presentation contexts (max 128)")
    seen: set[int] = set()
    for context in proposed:
        context_id = int(context.context_id or 0)
        if context_id % 2 == 0 or context_id in seen:
            raise ValueError(f"presentation context ID {context_id} is even or repeated")
        seen.add(context_id)
        if not context.transfer_syntax:
            raise ValueError(f"presentation context {context_id} offers no transfer syntax")


def _valid_ae(field: bytes) -> bool:
    return bool(field.strip(b" ")) and all(0x20 <= b <= 0x7E and b != 0x5C for b in field)


def rejection(reason: tuple[int, int, int], calling_ae: str, called_ae: str) -> Negotiated:
    """A refusal of the request with (result, source, reason)."""
    return Negotiated(
        answer=_rejection(reason),
        accepted=False,
        calling_ae=calling_ae,
        called_ae=called_ae,
        reject=reason,
    )


def _rejection(reason: tuple[int, int, int]) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _max_length(max_pdu: int) -> MaximumLengthNotification:
    item = MaximumLengthNotification()
    item.maximum_length_received = max_pdu
    return item


def _implementation_uid() -> ImplementationClassUIDNotification:
    item = ImplementationClassUIDNotification()
    item.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    return item


def _implementation_version() -> ImplementationVersionNameNotification:
    item = ImplementationVersionNameNotification()
    item.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return item
