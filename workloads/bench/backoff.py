"""Reconnection back-off: bounded, doubling, jittered.

After a broker or a director fails, every client it served comes back at once; without jitter
they would all retry in lock step and hit the survivors as one burst (and with IPVS ``lc`` all
land on whichever broker looks emptiest at that instant). Each wait is drawn uniformly from
[half, full] of ``min(max, min * 2**failures)``: never zero, never above the bound.
"""

from __future__ import annotations

import random


def delay_s(failures: int, min_ms: int, max_ms: int, rng: random.Random) -> float:
    """Seconds to wait before the attempt that follows ``failures`` consecutive failures."""
    full = min(max_ms, min_ms * (1 << min(failures, 30))) / 1000.0
    return rng.uniform(full / 2, full)
