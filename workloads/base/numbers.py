"""How every report writes a number: rounded to what it carries, and JSON that strict parsers accept.

One function rounds for ``bench summary``, ``mqttlab report`` and the campaign report, so one run
shows the same value in each. Latencies come from the bench's HDR-style histogram, whose buckets
hold 3 significant digits (0.1 % relative error, workloads/rundir/hist.py): a fourth digit would be
the bucket's edge, not a measurement, so latencies keep 3 significant digits. Percentages of
messages keep 3 decimals (a loss of one message in 100,000 is still visible); Jain's index keeps 3
decimals (its third decimal already separates one client moved among a few hundred); rates keep 1.
"""

from __future__ import annotations

import json
import math
from typing import Any

# quantity -> ("sig", significant digits) or ("dp", decimal places)
PRECISION: dict[str, tuple[str, int]] = {
    "latency_ms": ("sig", 3),
    "pct": ("dp", 3),
    "fairness": ("dp", 3),
    "rate": ("dp", 1),
    "seconds": ("dp", 1),
    "p_value": ("sig", 2),
}


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def rounded(value: Any, quantity: str) -> float | None:
    """``value`` rounded as ``quantity`` carries it; None for a missing, NaN or infinite value, so
    that nothing downstream writes ``NaN`` into JSON or a table."""
    v = _finite(value)
    if v is None:
        return None
    how, n = PRECISION[quantity]
    if how == "dp" or v == 0:
        return round(v, n)
    return round(v, n - 1 - math.floor(math.log10(abs(v))))


def shown(value: Any, quantity: str, missing: str = "–") -> str:
    """``rounded`` as text, without a float's trailing noise (``30.4``, not ``30.400000000000002``)."""
    v = rounded(value, quantity)
    if v is None:
        return missing
    how, n = PRECISION[quantity]
    if how == "dp":
        return f"{v:.{n}f}"
    digits = max(0, n - 1 - math.floor(math.log10(abs(v)))) if v else 0
    return f"{v:.{digits}f}"


def strict(doc: Any) -> Any:
    """``doc`` with every NaN and infinity replaced by None (JSON ``null``), recursively."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: strict(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [strict(v) for v in doc]
    if hasattr(doc, "item") and callable(doc.item):  # a numpy scalar
        return strict(doc.item())
    return doc


def dumps(doc: Any) -> str:
    """JSON any strict parser reads: ``allow_nan=False`` raises rather than write ``NaN``."""
    return json.dumps(strict(doc), indent=2, default=str, allow_nan=False) + "\n"
