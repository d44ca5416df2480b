"""Just-committed inline blobs kept in memory, so delivery need not read them back.

A destination worker usually sends an object moments after ingest committed it. For an object
held inline, the ciphertext is still in memory then; reading it back from the journal costs a
page-by-page walk of its overflow pages (about 130 reads for a 512 KB CT slice, mostly from the
WAL). This cache hands the same ciphertext over instead. It holds ciphertext only (the reader
still authenticates and decrypts every chunk), only what a durable commit has recorded, and at
most ``limit`` bytes: the oldest entries go first. A miss is never a problem: the journal still
has every byte.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

#: Enough for the objects a worker that keeps up has not sent yet; a worker with a backlog
#: reads from the journal as before.
DEFAULT_LIMIT = 8 * 1024 * 1024


class FreshBlobs:
    """A bounded, thread-safe map of object id to its inline ciphertext (oldest evicted)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, object_id: str, ciphertext: bytes) -> None:
        """Remember ``ciphertext`` (call only after its journal commit is durable)."""
        if len(ciphertext) > self.limit:
            return
        with self._lock:
            old = self._blobs.pop(object_id, None)
            if old is not None:
                self._bytes -= len(old)
            self._blobs[object_id] = ciphertext
            self._bytes += len(ciphertext)
            while self._bytes > self.limit:
                _, evicted = self._blobs.popitem(last=False)
                self._bytes -= len(evicted)

    def get(self, object_id: str) -> bytes | None:
        """The ciphertext if it is still here (it stays: another destination may want it)."""
        with self._lock:
            blob = self._blobs.get(object_id)
            if blob is None:
                self.misses += 1
            else:
                self.hits += 1
            return blob

    def forget(self, object_id: str) -> None:
        """Drop an entry (its object is being deleted)."""
        with self._lock:
            old = self._blobs.pop(object_id, None)
            if old is not None:
                self._bytes -= len(old)

    @property
    def size(self) -> int:
        """Bytes held."""
        with self._lock:
            return self._bytes
