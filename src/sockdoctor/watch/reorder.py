"""Put trace's records in time order before they are printed.

State changes come from the tracepoint's ring buffers and may wait for their
owner (join delay); destroy events come from sock_diag as the kernel frees
sockets; lost-event notices when the kernel says so. Each source is in order
on its own, not together: records wait here until nothing earlier can still
arrive — a small window behind the clock, and never past the oldest state
change still waiting for its owner.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    time: float


R = TypeVar("R", bound=Timed)


class Reorder(Generic[R]):
    """A heap of records by time, released up to a watermark."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, R]] = []
        self._seq = itertools.count()  # equal times keep their arrival order

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, records: list[R]) -> None:
        heap, seq = self._heap, self._seq
        for rec in records:
            heapq.heappush(heap, (rec.time, next(seq), rec))

    def release(self, watermark: float) -> list[R]:
        """Every record with a time up to `watermark`, oldest first."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= watermark:
            out.append(heapq.heappop(heap)[2])
        return out

    def drain(self) -> list[R]:
        return self.release(float("inf"))
