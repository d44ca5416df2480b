"""Refusals the control API answers with: an HTTP status, a stable code and plain words.

ApiFailure (answered as schema.ApiError)
├── 400 bad-request       malformed JSON, unknown field value, missing reason ...
├── 403 forbidden         the caller is not an operator (not root, the service or the group)
├── 403 pin-required      the action needs the operator PIN and none was given
├── 403 pin-wrong         the PIN given is not the operator PIN
├── 403 pin-not-set       no operator PIN has been set on this unit yet
├── 404 not-found         unknown endpoint, destination, study or object
├── 404 unknown-version   a path under an API version this daemon does not speak
├── 405 method-not-allowed
├── 429 too-many-attempts too many wrong PINs in the last minute
└── 500 internal          a bug: the daemon logged it
"""

from __future__ import annotations


class ApiFailure(Exception):
    """A request the API refuses; ``code`` is stable, ``message`` is for people."""

    def __init__(self, status: int, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint


def bad_request(message: str, hint: str = "") -> ApiFailure:
    """400: the request itself is wrong."""
    return ApiFailure(400, "bad-request", message, hint)


def not_found(message: str, hint: str = "") -> ApiFailure:
    """404: no such thing."""
    return ApiFailure(404, "not-found", message, hint)
