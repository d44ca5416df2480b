"""Every pynetdicom module-global setting Waystation depends on, set in one place.

Only the receiving side (router/ingest) runs on pynetdicom; the delivery sender has its own
upper layer (router/dicom) and needs no seam here.

pynetdicom keeps its configuration in module globals (``_config``); setting them anywhere else
would make behaviour depend on import order.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import _config, dimse_messages

_installed = False
_lock = threading.Lock()
_original_tempfile = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]

SinkFactory = Callable[[Any], Any | None]
_factories: dict[int, SinkFactory] = {}


def configure() -> None:
    """Apply Waystation's pynetdicom settings (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        # Stream each received data set to a file instead of holding it in memory ...
        _config.STORE_RECV_CHUNKED_DATASET = True
        # ... and make that "file" our encrypting sink (see _sink_or_tempfile).
        dimse_messages.NamedTemporaryFile = _sink_or_tempfile  # type: ignore[attr-defined]
        # Private and unknown public SOP classes are storage too: a router forwards them.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
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
        _installed = True


def register_sink_factory(ae: object, factory: SinkFactory) -> None:
    """Route chunked receives of associations of ``ae`` to ``factory(assoc)``."""
    _factories[id(ae)] = factory


def unregister_sink_factory(ae: object) -> None:
    """Stop routing receives of ``ae`` (on server shutdown)."""
    _factories.pop(id(ae), None)


def _sink_or_tempfile(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for NamedTemporaryFile in pynetdicom's dimse_messages.

    pynetdicom opens the temporary file from the association's network thread (the DUL
    thread, whose ``assoc`` attribute names the association). Associations of a Waystation
    AE get an encrypting sink; anything else in the process gets a real temporary file.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    factory = _factories.get(id(getattr(assoc, "ae", None)))
    if factory is not None:
        sink = factory(assoc)
        if sink is not None:
            return sink
    return _original_tempfile(*args, **kwargs)
