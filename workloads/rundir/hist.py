"""A log-linear latency histogram in microseconds (HDR-style, 3 significant digits).

Values below 2048 us are exact; above, each power of two is split in 1024 buckets (0.1 %
relative error). Buckets are integer counts, so merging histograms from several processes or
hosts is an exact sum. Recording is vectorised: the hot loop only appends to an array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SUB = 1024
LINEAR = 2 * SUB


def bucket_index(us: np.ndarray) -> np.ndarray:
    v = np.maximum(np.asarray(us, dtype=np.int64), 0)
    idx = v.copy()
    big = v >= LINEAR
    if big.any():
        vb = v[big]
        e = np.floor(np.log2(vb.astype(np.float64))).astype(np.int64) - 10
        # correct float rounding at exact powers of two
        e = np.where((vb >> e) >= LINEAR, e + 1, e)
        e = np.where((vb >> e) < SUB, e - 1, e)
        idx[big] = LINEAR + (e - 1) * SUB + ((vb >> e) - SUB)
    return idx


def bucket_value(idx: np.ndarray) -> np.ndarray:
    """The highest value that falls in each bucket (what percentiles report, conservatively)."""
    i = np.asarray(idx, dtype=np.int64)
    out = i.copy()
    big = i >= LINEAR
    if big.any():
        k = i[big] - LINEAR
        e = k // SUB + 1
        m = k % SUB + SUB
        out[big] = ((m + 1) << e) - 1
    return out


class Histogram:
    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    def record(self, us: np.ndarray) -> None:
        if len(us) == 0:
            return
        idx, n = np.unique(bucket_index(us), return_counts=True)
        for i, c in zip(idx.tolist(), n.tolist(), strict=True):
            self.counts[i] = self.counts.get(i, 0) + c

    def merge(self, other: Histogram) -> Histogram:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, p: float) -> float | None:
        """Value in microseconds at percentile ``p`` (0-100), or None when empty."""
        if not self.counts:
            return None
        keys = np.array(sorted(self.counts), dtype=np.int64)
        cum = np.cumsum([self.counts[k] for k in keys.tolist()])
        rank = max(1, int(np.ceil(p / 100.0 * cum[-1])))
        pos = int(np.searchsorted(cum, rank))
        return float(bucket_value(keys[pos : pos + 1])[0])

    def max(self) -> float | None:
        return None if not self.counts else float(bucket_value(np.array([max(self.counts)]))[0])

    def to_json(self) -> dict[str, Any]:
        return {"unit": "us", "sub_buckets": SUB, "counts": {str(k): v for k, v in sorted(self.counts.items())}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Histogram:
        if doc.get("sub_buckets", SUB) != SUB:
            raise ValueError(f"histogram written with another bucket layout ({doc['sub_buckets']} sub-buckets, this mqttlab uses {SUB})")
        return cls({int(k): int(v) for k, v in doc.get("counts", {}).items()})
