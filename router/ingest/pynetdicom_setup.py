"""Every pynetdicom module-global setting Waystation depends on, set in one place.

pynetdicom keeps its configuration in module globals (``_config``); setting them anywhere else
would make behaviour depend on import order.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import config as pydicom_config
from pynetdicom import _config, dimse_messages, dsutils

_installed = False
_lock = threading.Lock()


def configure() -> None:
    """Apply Waystation's pynetdicom settings (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        # UIDs are patient-linked identifiers: keep them out of pynetdicom's log lines.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_HANDLER_LEVEL = "none"
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # pydicom's validation warnings quote the offending values (e.g. a malformed birth
        # date): never let them reach the log.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"pydicom\.")
        # Send held objects' stored bytes as they are (no decode, no re-encode), streamed.
        _config.STORE_SEND_CHUNKED_DATASET = True
        dsutils.open = _open  # type: ignore[attr-defined]
        dimse_messages.open = _open  # type: ignore[attr-defined]
        _installed = True


_STREAM_ROOT = "/waystation-held-object/"
_streams: dict[str, Callable[[], BinaryIO]] = {}


def register_stream(opener: Callable[[], BinaryIO]) -> Path:
    """A path pynetdicom can "open" to send a held object's plaintext, streamed from the
    encrypted spool; nothing is written to disk. Unregister it after the send."""
    token = uuid.uuid4().hex
    _streams[token] = opener
    return Path(_STREAM_ROOT + token)


def unregister_stream(path: Path) -> None:
    """Forget a path made by register_stream."""
    _streams.pop(path.name, None)


def _open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    """``open`` for pynetdicom's dsutils and dimse_messages: held-object paths open a
    decrypting reader; every other path opens as usual."""
    name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else None
    if isinstance(name, str) and name.startswith(_STREAM_ROOT) and mode == "rb":
        opener = _streams.get(name[len(_STREAM_ROOT) :])
        if opener is None:
            raise FileNotFoundError(name)
        return opener()
    return builtins.open(file, mode, *args, **kwargs)
