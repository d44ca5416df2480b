"""The endpoint table: which path and method calls which read or action (see schema.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from router.config.model import HubDestination, StowDestination
from router.control import study_views, views
from router.control.actions import Actions, audit_only, refuse
from router.control.auth import Peer
from router.control.context import ControlContext
from router.control.echo import check_stow, echo
from router.control.failures import ApiFailure, bad_request, not_found
from router.control.schema import PRIORITIES, ActionRequest
from router.delivery.dimse import Timeouts

# Unmasking is audited, but a console refreshing an unlocked list every 2 s is one act.
_UNMASK_AUDIT_QUIET = 600.0
_unmask_seen: dict[tuple[int, str], float] = {}


@dataclass(frozen=True)
class Request:
    """One API request, parsed."""

    method: str
    parts: list[str]  # the path below /v1, split
    query: dict[str, str]
    body: bytes
    pin: str
    peer: Peer


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name} must be a whole number, not {text!r}") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}")
    return value


def _action_request(body: bytes) -> ActionRequest:
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return ActionRequest.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            if error["loc"] and error["loc"][0] == "priority":
                raise bad_request(
                    f"unknown priority {data.get('priority')!r}",
                    f"one of: {', '.join(PRIORITIES)}",
                ) from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise bad_request(f"invalid request: {problems}") from None


def check_pin(ctx: ControlContext, pin: str, what: str) -> None:
    """Refuse unless ``pin`` is the operator PIN (rate-limited)."""
    if not pin:
        raise ApiFailure(403, "pin-required", f"{what} needs the operator PIN")
    if not ctx.pins.is_set():
        raise ApiFailure(
            403,
            "pin-not-set",
            "no operator PIN is set on this unit",
            "set one with `waystation pin set`",
        )
    if ctx.pins.limited():
        raise ApiFailure(
            429, "too-many-attempts", "too many wrong PINs; wait a minute and try again"
        )
    if not ctx.pins.verify(pin):
        raise ApiFailure(403, "pin-wrong", "that is not the operator PIN")


def _unmask(ctx: ControlContext, request: Request, target: str) -> bool:
    """Whether to show patient data: only with the right PIN; audited (refusals too)."""
    if not request.pin:
        return False
    try:
        check_pin(ctx, request.pin, "showing patient names and IDs")
    except ApiFailure as failure:
        refuse(ctx, request.peer, "unmask", target, "", failure)
        raise
    key = (request.peer.uid, target)
    now = time.monotonic()
    if now - _unmask_seen.get(key, -_UNMASK_AUDIT_QUIET) >= _UNMASK_AUDIT_QUIET:
        _unmask_seen[key] = now
        audit_only(ctx, request.peer, "unmask", target, "", "ok: patient data shown")
    return True


def _get(ctx: ControlContext, request: Request) -> object:
    parts, query = request.parts, request.query
    match parts:
        case ["status"]:
            with ctx.readers.snapshot() as conn:
                return views.status(ctx, conn)
        case ["destinations"]:
            with ctx.readers.snapshot() as conn:
                return views.destinations(ctx, conn)
        case ["alarms"]:
            return views.alarms(ctx)
        case ["audit"]:
            limit = _int(query, "limit", 100, 1, 10_000)
            before = _int(query, "before", 2**62, 1, 2**62) if "before" in query else None
            with ctx.readers.snapshot() as conn:
                return views.audit(conn, limit, before)
        case ["studies"]:
            return _studies(ctx, request)
        case ["studies", study_id]:
            unmask = _unmask(ctx, request, study_id)
            with ctx.readers.snapshot() as conn:
                detail = study_views.study(ctx, conn, study_id, unmask=unmask)
            if detail is None:
                raise not_found(f"there is no study {study_id!r} on this unit")
            return detail
        case ["objects", object_id, "history"]:
            with ctx.readers.snapshot() as conn:
                events = study_views.object_history(conn, object_id)
            if events is None:
                raise not_found(f"there is no object {object_id!r} on this unit")
            return events
    raise not_found(f"no endpoint GET /v1/{'/'.join(parts)}")


def _studies(ctx: ControlContext, request: Request) -> object:
    query = request.query
    state = query.get("state") or None
    if state is not None and state not in study_views.STUDY_STATES:
        raise bad_request(
            f"unknown study state {state!r}", f"one of: {', '.join(study_views.STUDY_STATES)}"
        )
    sort = query.get("sort") or "-last_received"
    if sort.lstrip("-") not in study_views.SORTS:
        keys = ", ".join(f"[-]{k}" for k in study_views.SORTS)
        raise bad_request(f"unknown sort {sort!r}", f"one of: {keys}")
    since: float | None = None
    if query.get("since"):
        try:
            since = float(query["since"])
        except ValueError:
            raise bad_request("since must be a Unix time in seconds") from None
    unmask = _unmask(ctx, request, "studies")
    with ctx.readers.snapshot() as conn:
        return study_views.studies(
            ctx,
            conn,
            state=state,
            query=query.get("q") or None,
            since=since,
            limit=_int(query, "limit", 200, 1, 5000),
            offset=_int(query, "offset", 0, 0, 10**9),
            sort=sort,
            unmask=unmask,
        )


_DESTINATION_ACTIONS: dict[str, str] = {
    "pause": "pause",
    "resume": "resume",
    "retry": "retry",
    "retry-failed": "retry_failed",
}


def _post(ctx: ControlContext, actions: Actions, request: Request) -> object:
    parts = request.parts
    match parts:
        case ["pin", "check"]:
            body = _action_request(request.body)
            try:
                check_pin(ctx, body.pin, "checking the PIN")
            except ApiFailure as failure:
                refuse(ctx, request.peer, "pin-check", "pin", "", failure)
                if failure.code == "pin-wrong":
                    return {"ok": False}
                raise
            audit_only(ctx, request.peer, "pin-check", "pin", "", "ok")
            return {"ok": True}
        case ["destinations", name, verb] if verb in (*_DESTINATION_ACTIONS, "echo"):
            return _audited(
                ctx,
                request,
                verb,
                name,
                lambda body: _destination(ctx, actions, request, verb, name, body),
            )
        case ["studies", study_id, verb] if verb in ("priority", "resend", "discard"):

            def run(body: ActionRequest) -> object:
                if verb == "priority":
                    return actions.set_priority(request.peer, study_id, body)
                check_pin(ctx, body.pin, f"{verb} of a study")
                if verb == "resend":
                    return actions.resend(request.peer, study_id, body)
                return actions.discard(request.peer, study_id, body)

            return _audited(ctx, request, verb, study_id, run)
    raise not_found(f"no endpoint POST /v1/{'/'.join(parts)}")


def _destination(
    ctx: ControlContext,
    actions: Actions,
    request: Request,
    verb: str,
    name: str,
    body: ActionRequest,
) -> object:
    if verb != "echo":
        method: Callable[[Peer, str, ActionRequest], object] = getattr(
            actions, _DESTINATION_ACTIONS[verb]
        )
        return method(request.peer, name, body)
    destination = next((d for d in ctx.config.destinations if d.name == name), None)
    if destination is None:
        raise not_found(f"there is no destination {name!r}")
    if isinstance(destination, HubDestination):
        raise bad_request(f"{name} is a hub: C-ECHO tests DICOM destinations only")
    delivery = ctx.config.delivery
    timeouts = Timeouts(connect=delivery.connect_timeout, response_base=delivery.response_timeout)
    if isinstance(destination, StowDestination):  # an HTTP test of it, storing nothing
        result = check_stow(destination, timeouts=timeouts)
    else:
        result = echo(destination, unit_ae=ctx.config.unit.ae_title, timeouts=timeouts)
    outcome = f"{'ok' if result.ok else 'failed'}: {result.message}"
    audit_only(ctx, request.peer, "echo", name, body.reason, outcome)
    return result


def _audited(
    ctx: ControlContext,
    request: Request,
    action: str,
    target: str,
    run: Callable[[ActionRequest], object],
) -> object:
    """Run an action; a refusal is audited before it is answered."""
    reason = ""
    try:
        body = _action_request(request.body)
        reason = body.reason
        return run(body)
    except ApiFailure as failure:
        refuse(ctx, request.peer, action, target, reason, failure)
        raise


def dispatch(ctx: ControlContext, actions: Actions, request: Request) -> object:
    """Answer one request: a schema model (or a list of them), or raise ApiFailure."""
    if request.method == "GET":
        return _get(ctx, request)
    if request.method == "POST":
        return _post(ctx, actions, request)
    raise ApiFailure(405, "method-not-allowed", f"{request.method} is not used by this API")
