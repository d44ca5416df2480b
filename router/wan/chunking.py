"""Chunk sizes for resumable uploads, from the measured link rate. Pure: no I/O, no clock.

The size rule is :func:`router.wan.rate.chunk_size_for`; this keeps the smoothed measurement
it is fed.

A chunk is the most a broken link can cost (bytes re-sent per interruption), and each chunk
costs a round trip for its answer. About 8 s of link time keeps both small: on 2 Mbit/s a
chunk is ~2 MB; on a fast LAN the cap applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.wan.rate import chunk_size_for

TARGET_SECONDS = 8.0
_SMOOTHING = 0.3  # weight of the newest measurement


@dataclass
class ChunkSizer:
    """Keeps a smoothed rate estimate and proposes the next chunk's size."""

    minimum: int = 256 * 1024
    maximum: int = 8 * 1024 * 1024
    target_seconds: float = TARGET_SECONDS
    rate: float | None = None  # bytes per second, smoothed

    def observe(self, nbytes: int, seconds: float) -> None:
        """Record that ``nbytes`` were sent and confirmed in ``seconds``."""
        if nbytes <= 0 or seconds <= 0:
            return
        measured = nbytes / seconds
        self.rate = (
            measured
            if self.rate is None
            else (_SMOOTHING * measured + (1 - _SMOOTHING) * self.rate)
        )

    def next_size(self) -> int:
        """The next chunk: ~``target_seconds`` at the estimated rate, within the bounds;
        the minimum until a rate is known (a first chunk on an unknown link stays cheap)."""
        bits = None if self.rate is None else self.rate * 8
        return chunk_size_for(
            bits, seconds=self.target_seconds, minimum=self.minimum, maximum=self.maximum
        )
