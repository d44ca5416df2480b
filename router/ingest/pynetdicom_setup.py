"""Every pynetdicom and pydicom module-global setting Waystation depends on, set in one place.

Neither the receiver (router/ingest) nor the C-STORE sender (router/dicom) runs on pynetdicom's
networking; Storage Commitment's N-ACTION association still does (router/delivery/commitment.py),
and pydicom parses every received header, so its warnings must be silenced everywhere.

pynetdicom keeps its configuration in module globals (``_config``); setting them anywhere else
would make behaviour depend on import order.
"""

from __future__ import annotations

import logging
import threading
import warnings

from pydicom import config as pydicom_config
from pynetdicom import _config

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
        _installed = True
