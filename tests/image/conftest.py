"""The image tests boot QEMU for minutes: collected only by `make image-test`, which sets
WAYSTATION_IMAGE_ARCH (and selects them with -m image); `make test` never sees them."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("WAYSTATION_IMAGE_ARCH") else ["test_*.py"]
