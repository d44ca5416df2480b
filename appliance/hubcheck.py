"""Commissioning's hub check: does the hub answer, and does it accept this unit's token?

One authenticated GET of the hub protocol's ``/v1/whoami`` (docs/hub-protocol.md) with the
unit's token and CA, exactly as the hub sender will connect. The answer is put in plain words
for the commissioning report; the token itself is never shown.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from router.config.model import HubDestination
from router.hub import protocol as p

ENROL_HINT = (
    "ask the hub's provider to enrol this unit (`waystation hub enroll UNIT` on the hub) and "
    "save the token it prints in {path} (see docs/commissioning.md, step 'Enrol with the hub')"
)


@dataclass(frozen=True)
class HubCheck:
    """The result of checking one hub destination."""

    passed: bool
    detail: str


def check_hub(destination: HubDestination, timeout: float = 15.0) -> HubCheck:
    """Ask the hub who this unit's token belongs to; the answer in plain words."""
    try:
        token = destination.token_file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        hint = ENROL_HINT.format(path=destination.token_file)
        return HubCheck(False, f"no token file: {hint}")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        return HubCheck(False, f"cannot read the token file {destination.token_file} ({reason})")
    if not token:
        hint = ENROL_HINT.format(path=destination.token_file)
        return HubCheck(False, f"the token file is empty: {hint}")
    url = urlsplit(destination.url)
    host, port = url.hostname or "", url.port
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        try:
            context = ssl.create_default_context(
                cafile=str(destination.ca_file) if destination.ca_file else None
            )
        except (OSError, ssl.SSLError) as exc:
            return HubCheck(False, f"cannot use the CA file {destination.ca_file} ({exc})")
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(
            "GET",
            p.WHOAMI,
            headers={"Authorization": f"Bearer {token}", "Tus-Resumable": p.TUS_VERSION},
        )
        response = conn.getresponse()
        status, raw = response.status, response.read(64 * 1024)
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or "certificate not trusted"
        return HubCheck(
            False,
            f"hub unreachable: its certificate is not trusted ({reason}); check ca_file",
        )
    except (OSError, http.client.HTTPException) as exc:
        return HubCheck(False, f"hub unreachable at {destination.url} ({type(exc).__name__})")
    finally:
        conn.close()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if status == 200 and isinstance(body.get("unit"), str):
        return HubCheck(True, f"hub accepts this unit as {body['unit']}")
    if status in (401, 403):
        why = str(body.get("error", "")) or f"HTTP {status}"
        hint = ENROL_HINT.format(path=destination.token_file)
        return HubCheck(False, f"hub refuses this unit's token ({why}): {hint}")
    if status == 404:
        return HubCheck(
            False,
            f"hub at {destination.url} answered but has no {p.WHOAMI} (an older hub, or not "
            "a Waystation hub): ask the provider to update it",
        )
    return HubCheck(False, f"hub answered HTTP {status}: {body.get('error', 'no detail')}")
