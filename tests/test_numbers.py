"""One rounding for every report, and JSON that strict parsers read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from workloads.base.numbers import dumps, rounded, shown
from workloads.rundir.records import write_json_atomic


@pytest.mark.parametrize(("value", "quantity", "want", "text"), [
    (30.399, "latency_ms", 30.4, "30.4"), (30.386, "latency_ms", 30.4, "30.4"), (0.59812, "latency_ms", 0.598, "0.598"),
    (1234.5, "latency_ms", 1230.0, "1230"), (0.8571428571428571, "fairness", 0.857, "0.857"), (2.375, "pct", 2.375, "2.375"),
    (0.0, "latency_ms", 0.0, "0"), (80.0, "rate", 80.0, "80.0"),
])
def test_rounded_to_what_the_quantity_carries(value: float, quantity: str, want: float, text: str) -> None:
    assert rounded(value, quantity) == want and shown(value, quantity) == text


@pytest.mark.parametrize("missing", [None, math.nan, math.inf, -math.inf, np.float64("nan"), "x"])
def test_missing_values_are_none_and_a_dash(missing: object) -> None:
    assert rounded(missing, "pct") is None and shown(missing, "pct") == "–"


def test_json_written_is_strict_with_null_for_nan_and_infinity(tmp_path: Path) -> None:
    def refuse(token: str) -> None:
        raise ValueError(token)

    doc = {"rate": math.inf, "p": [np.float64("nan"), 1.5], "nested": {"n": np.int64(3)}}
    assert json.loads(dumps(doc), parse_constant=refuse) == {"rate": None, "p": [None, 1.5], "nested": {"n": 3}}
    write_json_atomic(tmp_path / "result.json", doc)  # campaign results, capacity.json, manifests
    assert json.loads((tmp_path / "result.json").read_text(), parse_constant=refuse)["rate"] is None
    with pytest.raises(ValueError):  # the plain encoder would have written a bare NaN
        json.loads(json.dumps(doc, default=str), parse_constant=refuse)
