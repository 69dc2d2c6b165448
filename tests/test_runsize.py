"""A run's size before it starts, and the progress line the lab and the bench share."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MQTTLAB, ROOT
from tests.test_bench import Broker
from workloads.describe import runsize
from workloads.describe.scenario import Scenario
from workloads.rundir.records import DELIVERY_DTYPE


def test_the_delivery_record_size_is_the_recorders() -> None:
    assert runsize.DELIVERY_RECORD_B == DELIVERY_DTYPE.itemsize


@pytest.mark.parametrize(("messages", "seconds", "measured"), [(40, 4.6, 102_533), (800, 15.9, 237_788)])
def test_the_disk_model_reproduces_the_lab_runs_it_was_measured_on(messages: int, seconds: float, measured: int) -> None:
    estimate = runsize.disk_bytes(Scenario(publishers=4, subscribers=4, messages=messages), seconds)
    assert abs(estimate - measured) / measured < 0.1


def test_a_host_share_counts_only_its_own_subscribers_deliveries() -> None:
    sc = Scenario(publishers=240, subscribers=240, messages=6000)
    whole = runsize.disk_bytes(sc, 20)
    half = runsize.disk_bytes(sc, 20, subscribers=list(range(0, 240, 2)), publishers=120)
    assert 0.45 < half / whole < 0.55 and whole > 1_440_000 * 32


def test_progress_shows_done_of_total_rate_and_eta() -> None:
    assert runsize.progress(1_000, 4_000, 2.0, "sent") == "1,000/4,000 sent (25.0 %), 500/s, ETA 6 s"
    assert runsize.progress(0, 4_000, 2.0, "sent") == "0/4,000 sent (0.0 %), 0/s, ETA -"
    assert runsize.progress(4_000, 4_000, 8.0, "sent").endswith("ETA 0 s")
    assert runsize.progress(7, 0, 1.0, "sent") == "7 sent"  # nothing planned yet: no total to compare with


def test_a_large_run_is_one_size_line() -> None:
    assert runsize.is_large(1_440_000, 20) and runsize.is_large(10, 600) and not runsize.is_large(160, 5)
    line = runsize.size_line(240, 240, 6000, 1_440_000, 23.8)
    assert line == "size: 480 clients (240 publishers, 240 subscribers), 6,000 messages, 1,440,000 expected deliveries, about 24 s"
    assert runsize.fmt_bytes(49_900_000) == "49.9 MB" and runsize.fmt_bytes(512) == "512 B"


def test_the_bench_prints_its_progress_with_this_formatter(tmp_path: Path) -> None:
    """A real bench run against a real Mosquitto: its first progress line (stderr is no terminal,
    so a line every few seconds) is runsize.progress of its phase."""
    broker = Broker(tmp_path)
    try:
        cp = subprocess.run([*MQTTLAB, "bench", "run", "--target", broker.target, "--out", str(tmp_path / "run"), "--publishers", "2",
                             "--subscribers", "2", "--messages", "20", "--interval-ms", "20", "--drain-s", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        broker.stop()
    assert cp.returncode == 0, cp.stderr
    assert re.search(r"^\[local\] connect  \d+/4 connected \(\d+\.\d %\), [\d,]+/s, ETA \S+", cp.stderr, re.MULTILINE), cp.stderr
