"""When each publisher sends: message ``k`` of publisher ``p`` is due at ``t0 + offset(p) + k *
interval``, with the publishers' offsets spread evenly over one interval.

A fixed schedule instead of sleeping between messages means a publisher never drifts: when the
loop is late, the message is sent late, the lateness is measured, and the next one is still due
on time.
"""

from __future__ import annotations

import heapq


class PublishSchedule:
    """A heap of (due time, local publisher number) for one worker's publishers."""

    def __init__(self, interval_s: float, publishers: int) -> None:
        self.interval = interval_s
        self.publishers = max(publishers, 1)
        self.heap: list[tuple[float, int]] = []

    def offset(self, index: int) -> float:
        """Publisher ``index``'s (global number) start within the first interval."""
        return (index % self.publishers) * self.interval / self.publishers

    def start(self, t0: float, publishers: list[tuple[int, int]]) -> None:
        """``publishers``: (local number, global number) of those with something to send."""
        for local, index in publishers:
            heapq.heappush(self.heap, (t0 + self.offset(index), local))

    def __bool__(self) -> bool:
        return bool(self.heap)

    def next_due(self) -> float:
        return self.heap[0][0]

    def pop_due(self, now: float) -> tuple[float, int] | None:
        """The earliest (due, local) if it is due by ``now``."""
        if self.heap and self.heap[0][0] <= now:
            return heapq.heappop(self.heap)
        return None

    def push(self, due: float, local: int) -> None:
        heapq.heappush(self.heap, (due, local))

    def following(self, due: float, now: float) -> float:
        """When the message after one due at ``due`` is due (interval 0: as fast as possible)."""
        return due + self.interval if self.interval else now
