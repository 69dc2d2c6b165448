"""A campaign in the real lab: 2 topologies x 3 loads x 3 repetitions, interrupted with Ctrl-C
(SIGINT) half-way and resumed: every point ends with exactly one complete run, none ran twice,
nothing of the lab is left, and one report comes out. Small loads, a few seconds per point."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import MQTTLAB, ROOT
from tests.test_lab import lab_leftovers

pytestmark = pytest.mark.lab

CAMPAIGN = """
name: lab-resume
stack: distributed
repetitions: 3
seed: 11
set: {subscribers: 3, messages: 20, messagesPerPublisher: true, intervalMs: 20, drainS: 3, timeLimitS: 60}
factors:
  topology: [distributed, centralized]
  publishers: [2, 4, 6]
compare: topology
"""
POINT_BOUND_S = 180  # one small point takes about 10 s; a point that takes this long is a failure


def assert_nothing_left(mine: Path) -> None:
    """Nothing of this campaign's labs is left (namespaces, cgroups, state, mounts, processes).
    Scoped to the labs its runs name: other worktrees' tests may leave their own on purpose."""
    ids = {json.loads(m.read_text()).get("lab_id") for m in mine.glob("camp/points/*/*/*/manifest.json")}
    ids |= {json.loads(m.read_text()).get("lab_id") for m in mine.glob("camp/points/*/interrupted/*/*/manifest.json")}
    assert ids and None not in ids
    left = {k: [x for x in v if any(f"mqttlab-{i}" in x or f"/{i}" in x for i in ids) or str(mine) in x] for k, v in lab_leftovers().items()}
    assert not any(left.values()), left


def completes(out: Path) -> int:
    ev = out / "events.jsonl"
    return sum(1 for line in ev.read_text().splitlines() if '"complete"' in line) if ev.is_file() else 0


def test_campaign_survives_ctrl_c_and_resumes_without_repeating_a_point(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(CAMPAIGN)
    out = tmp_path / "camp"
    proc = subprocess.Popen([*MQTTLAB, "campaign", "run", str(f), "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen, last_progress = 0, time.time()
    while completes(out) < 9:  # half-way
        assert proc.poll() is None, proc.communicate()
        n = completes(out)
        if n != seen:
            seen, last_progress = n, time.time()
        assert time.time() - last_progress < POINT_BOUND_S, f"no point completed in {POINT_BOUND_S} s"
        time.sleep(0.5)
    time.sleep(2.0)  # into the next point's lab
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Run the same command again to resume" in err
    assert_nothing_left(tmp_path)
    done_before = {json.loads(line)["point"] for line in (out / "events.jsonl").read_text().splitlines() if '"complete"' in line}
    assert 9 <= len(done_before) < 18

    cp = subprocess.run([*MQTTLAB, "campaign", "run", str(f), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                        timeout=18 * POINT_BOUND_S)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert f"resuming: {len(done_before)} of 18 points already complete" in cp.stderr
    assert_nothing_left(tmp_path)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    complete = Counter(e["point"] for e in events if e["event"] == "complete")
    order = json.loads((out / "campaign.json").read_text())["order"]
    assert sorted(complete) == sorted(order) and set(complete.values()) == {1}  # none missing, none twice
    cut = next(i for i, e in enumerate(events) if e["event"] == "interrupted")
    started_after = {e["point"] for e in events[cut + 1:] if e["event"] == "start"}
    assert started_after == set(order) - done_before  # the resume ran exactly the points not complete
    for pid in order:
        runs = list((out / "points" / pid / "runs").iterdir())
        assert len(runs) == 1 and json.loads((runs[0] / "manifest.json").read_text())["status"] == "complete", pid
        r = json.loads((out / "points" / pid / "result.json").read_text())
        assert r["expected"] == r["publishers"] * 20 * 3 and r["balancer_kind"] == "nftables"
    interrupted = [e["point"] for e in events if e["event"] == "interrupted"]
    assert len(interrupted) == 1 and (out / "points" / interrupted[0] / "interrupted").is_dir()
    page = (out / "report" / "report.html").read_text()
    assert '<p class="answer">' in page and "18 of 18 points complete" in page
    summary = json.loads((out / "report" / "summary.json").read_text())
    # every run is counted, valid ones in n and the others as invalid (runs this small may fail a fidelity check)
    assert len(summary["configurations"]) == 6 and all(c["n"] + c["invalid"] == 3 for c in summary["configurations"])
    with_runs = Counter(c["levels"]["publishers"] for c in summary["configurations"] if c["n"])
    both = sum(1 for v in with_runs.values() if v == 2)  # loads at which both topologies have valid runs to compare
    assert len(summary["comparisons"]) == 4 * both  # topology at each such load x (loss, p99, throughput, bridge share)
