"""A ``mqttlab bench run`` killed with SIGKILL mid-run, reported by ``mqttlab report`` and
``mqttlab bench summary``: the plan's expected count, what is on disk as delivered, never a
negative loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np

from tests.conftest import MQTTLAB, ROOT, wait_for
from tests.test_bench import Broker
from workloads.rundir.records import deliveries_on_disk, read_deliveries

PUBS, SUBS, MSGS = 2, 3, 3000  # 9000 planned deliveries, sent over about 7 s


def test_sigkilled_bench_run_is_reported_against_its_plan(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    out = tmp_path / "run"
    try:
        proc = subprocess.Popen([*MQTTLAB, "bench", "run", "--target", broker.target, "--out", str(out), "--publishers", str(PUBS),
                                 "--subscribers", str(SUBS), "--messages", str(MSGS), "--interval-ms", "5", "--qos", "1", "--quiet"],
                                cwd=ROOT, start_new_session=True)
        # killed once deliveries are on disk and well before the last one could have arrived
        wait_for(lambda: deliveries_on_disk(out) >= 200, 60, "deliveries on disk")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        broker.stop()
    assert not list(out.glob("bench/*/subscribers-*.csv")), "the workers were killed before writing their counts"
    rec = np.concatenate([read_deliveries(p) for p in sorted(out.glob("bench/*/deliveries-*.bin"))])
    first = rec[rec["dup"] == 0]
    unique = len(np.unique(np.stack([first["sub"], first["pub"], first["seq"]], axis=1), axis=0))
    expected = SUBS * MSGS  # every subscriber hears every publisher's share of the total
    assert 0 < unique < expected

    cp = subprocess.run([*MQTTLAB, "report", str(out), "--out", str(tmp_path / "report"), "--json"], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)[0]
    assert s["partial"] is True
    assert s["expected"] == expected
    assert s["delivered"] == unique
    assert s["lost"] == expected - unique and s["lost"] > 0
    assert s["loss_pct"] == round(100 * (expected - unique) / expected, 3)
    assert s["duplicates"] == int((rec["dup"] != 0).sum())

    cp = subprocess.run([*MQTTLAB, "bench", "summary", str(out), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode == 0, cp.stderr
    b = json.loads(cp.stdout)
    assert (b["partial"], b["expected"], b["delivered"], b["lost"]) == (True, expected, unique, expected - unique)


def test_stopped_bench_run_is_partial_and_its_counts_hold(tmp_path: Path) -> None:
    """SIGTERM: the workers stop and write their counts; the report reads those, marked partial."""
    broker = Broker(tmp_path)
    out = tmp_path / "run"
    try:
        proc = subprocess.Popen([*MQTTLAB, "bench", "run", "--target", broker.target, "--out", str(out), "--publishers", str(PUBS),
                                 "--subscribers", str(SUBS), "--messages", str(MSGS), "--interval-ms", "5", "--qos", "1", "--quiet"],
                                cwd=ROOT, stdout=subprocess.DEVNULL)
        wait_for(lambda: deliveries_on_disk(out) >= 200, 60, "deliveries on disk")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 1
    finally:
        broker.stop()
    sent = sum(int(line.split(",")[3]) for p in out.glob("bench/*/publishers-*.csv") for line in p.read_text().splitlines()[1:])
    received = sum(int(line.split(",")[3]) for p in out.glob("bench/*/subscribers-*.csv") for line in p.read_text().splitlines()[1:])
    assert 0 < sent < MSGS and 0 < received <= SUBS * sent
    cp = subprocess.run([*MQTTLAB, "report", str(out), "--out", str(tmp_path / "report"), "--json"], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["status"], manifest["reason"]) == ("partial", "stopped") and s["partial"] is True
    assert (s["expected"], s["delivered"], s["lost"]) == (SUBS * sent, received, SUBS * sent - received)
