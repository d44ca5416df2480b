"""The HTTP side of a `type = "stow"` destination: one kept connection (TLS verified,
client certificate offered, BBR where available) and the credentials, read from their files
at every request so a replaced file takes effect at once. Secrets are never logged.

Used by the STOW-RS sender for its requests, and alone to test a server without storing
anything (the console's "test the connection", commissioning).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from router.config.model import StowDestination
from router.core import stow
from router.core.retry import Outcome
from router.delivery.http_connection import (
    BbrHTTPConnection,
    BbrHTTPSConnection,
    client_tls_context,
)


class RequestFailed(Exception):
    """Ends a request attempt with one outcome for all its objects (or one object)."""

    def __init__(self, outcome: Outcome, object_id: str | None = None) -> None:
        super().__init__(outcome.kind)
        self.outcome = outcome
        self.object_id = object_id  # set when one object (unreadable) is the cause


class StowClient:
    """The connection to one STOW-RS server and its credentials; one per thread."""

    def __init__(self, destination: StowDestination, *, connect_timeout: float = 15.0) -> None:
        self.destination = destination
        self.connect_timeout = connect_timeout
        self.url = urlsplit(destination.url)
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection (a new one is made when needed)."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def path(self, tail: str) -> str:
        """The request path for ``tail`` below the service root."""
        return self.url.path.rstrip("/") + tail

    def connection(self) -> http.client.HTTPConnection:
        """The kept connection, or a new one; raises RequestFailed when none can be made."""
        if self.conn is not None and self.conn.sock is not None:
            return self.conn
        self.close()
        host, port = self.url.hostname or "", self.url.port
        timeout = min(self.connect_timeout, self.destination.timeout)
        conn: http.client.HTTPConnection
        if self.url.scheme == "https":
            settings = self.destination
            try:
                context = client_tls_context(
                    settings.ca_file, settings.client_cert, settings.client_key
                )
            except (OSError, ssl.SSLError) as exc:
                raise RequestFailed(
                    Outcome("http-tls", detail=f"the TLS files cannot be loaded ({exc})")
                ) from None
            conn = BbrHTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            conn = BbrHTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            detail = exc.verify_message or "not trusted"
            raise RequestFailed(
                Outcome("http-tls", detail=f"the server's certificate is not trusted ({detail})")
            ) from None
        except ssl.SSLError as exc:
            conn.close()
            raise RequestFailed(
                Outcome("unreachable", detail=f"TLS handshake failed: {exc.reason}")
            ) from None
        except ConnectionRefusedError:
            conn.close()
            raise RequestFailed(Outcome("refused")) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RequestFailed(Outcome("unreachable", detail=type(exc).__name__)) from None
        self.conn = conn
        return conn

    def authorization(self) -> dict[str, str]:
        """The Authorization header (secrets read from their files at every request, so a
        replaced file takes effect at once; never logged)."""
        settings = self.destination
        if settings.auth == "bearer" and settings.token_file is not None:
            return {"Authorization": f"Bearer {_secret(settings.token_file, 'token file')}"}
        if settings.auth == "basic" and settings.password_file is not None:
            password = _secret(settings.password_file, "password file")
            pair = f"{settings.username}:{password}".encode()
            return {"Authorization": "Basic " + _b64(pair)}
        return {}

    def check(self) -> tuple[Outcome, float]:
        """Test the server without storing anything: connect (TLS verified, client
        certificate offered) and ask ``GET {url}/studies?limit=1`` with the credentials.
        Returns the outcome - kind "http" with the status when it answered (any answer but
        401/403 and 5xx shows it reachable and not refusing this unit) - and the seconds."""
        started = time.monotonic()
        path = self.path("/studies?limit=1")
        try:
            headers = {"Accept": "application/dicom+json", **self.authorization()}
            conn = self.connection()
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            answer.read(64 * 1024)
        except RequestFailed as failed:
            return failed.outcome, time.monotonic() - started
        except TimeoutError:
            return Outcome("no-response"), time.monotonic() - started
        except (OSError, http.client.HTTPException) as exc:
            return Outcome("aborted", detail=type(exc).__name__), time.monotonic() - started
        finally:
            self.close()
        detail = f"HTTP {answer.status}" + (f" {answer.reason}" if answer.reason else "")
        outcome = stow.request_outcome(answer.status, detail, None)
        return outcome, time.monotonic() - started


def _secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise RequestFailed(
            Outcome("http-auth", detail=f"cannot read the {what} ({reason})")
        ) from None
    if not text:
        raise RequestFailed(Outcome("http-auth", detail=f"the {what} is empty"))
    return text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
