"""Capacity: per configuration, the highest offered message rate whose loss stays at or below a
threshold, found by a bracketing search (doubling or halving until the threshold is crossed,
then bisection) with repetitions at every step.

The answer is a bracket: ``capacity`` is the highest rate that passed and ``upper`` the lowest
that failed, so the true capacity lies in ``[capacity, upper)`` as far as these repetitions can
tell; ``upper`` is None when even ``maxRate`` passed (capacity is at least that), ``capacity`` is
None when even ``minRate`` failed. A step passes when the mean loss over its repetitions is at or
below the threshold, so one unlucky repetition does not decide alone.

The rate is realised by the publishers' interval (``intervalMs``, whole milliseconds) with the
publisher count of the configuration, and the total message count is the rate times
``durationS``; the rate actually offered is recorded, and the search stops where whole
milliseconds cannot split the bracket any further.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workloads.campaign.run import CampaignDir, PointFailed, PointRunner, fmt_s, point_record, set_aside
from workloads.campaign.spec import Campaign, CampaignError, Point, config_id
from workloads.describe.schema import CAPACITY, hint
from workloads.rundir.records import write_json_atomic

DEFAULTS: dict[str, Any] = {k.name: k.default for k in CAPACITY.keys}


@dataclass
class Step:
    rate: float
    losses: list[float]
    passed: bool
    points: list[str] = field(default_factory=list)
    bench_saturated: int = 0  # repetitions where the load generator, not the system, was the limit

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


@dataclass
class Capacity:
    capacity: float | None
    upper: float | None
    threshold_pct: float
    steps: list[Step]
    note: str = ""

    def text(self) -> str:
        return self._text() + (f" ({self.note})" if self.note else "")

    def _text(self) -> str:
        if self.capacity is None:
            return f"below {self.upper:.0f} msg/s (even the lowest rate tried lost more than {self.threshold_pct} %)"
        if self.upper is None:
            return f"at least {self.capacity:.0f} msg/s (the highest rate tried still passed)"
        return f"{self.capacity:.0f} msg/s (bracket {self.capacity:.0f} to {self.upper:.0f} msg/s)"

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "upper": self.upper, "threshold_pct": self.threshold_pct, "note": self.note, "text": self.text(),
                "steps": [asdict(s) | {"mean_loss": s.mean_loss} for s in self.steps]}


Probe = Callable[[float], tuple[float, list[float], list[str]]]  # asked rate -> (offered rate, losses, point ids)
SaturationOf = Callable[[list[str]], int]  # point ids -> how many had a saturated load generator


def settings(campaign: Campaign) -> dict[str, Any]:
    """The campaign's ``capacity:`` section over the defaults, checked."""
    s = DEFAULTS | campaign.capacity
    unknown = sorted(set(campaign.capacity) - set(DEFAULTS))
    if unknown:
        raise CampaignError(f"capacity.{unknown[0]}: not a capacity setting; {hint(unknown[0], list(DEFAULTS))}")
    for k in ("thresholdPct", "startRate", "minRate", "maxRate", "durationS", "resolution"):
        v = s[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k != "thresholdPct" and v == 0):
            raise CampaignError(f"capacity.{k}: {v!r} must be a positive number")
    for k in ("repetitions", "maxSteps"):
        if isinstance(s[k], bool) or not isinstance(s[k], int) or s[k] < 1:
            raise CampaignError(f"capacity.{k}: {s[k]!r} must be a whole number >= 1")
    if not s["minRate"] <= s["startRate"] <= s["maxRate"]:
        raise CampaignError(f"capacity.startRate: {s['startRate']!r} must lie between minRate {s['minRate']} and maxRate {s['maxRate']}")
    return s


def search(probe: Probe, start: float, min_rate: float, max_rate: float, threshold_pct: float, resolution: float, max_steps: int = 20,
           saturation: SaturationOf | None = None) -> Capacity:
    steps: list[Step] = []

    def step(rate: float) -> Step:
        offered, losses, ids = probe(rate)
        st = Step(offered, losses, bool(losses) and sum(losses) / len(losses) <= threshold_pct, ids,
                  saturation(ids) if saturation else 0)
        steps.append(st)
        return st

    lo: float | None = None
    hi: float | None = None
    note = ""
    first = step(start)
    if first.passed:
        lo = first.rate
        while hi is None and len(steps) < max_steps and lo < max_rate:
            s = step(min(lo * 2, max_rate))
            if s.rate <= lo:
                steps.pop()
                note = f"{lo:.0f} msg/s is the most these publishers can offer (one message per millisecond each)"
                break
            lo, hi = (s.rate, None) if s.passed else (lo, s.rate)
    else:
        hi = first.rate
        while lo is None and len(steps) < max_steps and hi > min_rate:
            s = step(max(hi / 2, min_rate))
            if s.rate >= hi:
                steps.pop()
                break
            lo, hi = (s.rate, hi) if s.passed else (None, s.rate)
    while lo is not None and hi is not None and (hi - lo) / lo > resolution:
        if len(steps) >= max_steps:
            note = f"stopped after {max_steps} steps"
            break
        s = step((lo + hi) / 2)
        if not lo < s.rate < hi:
            note = "the rate cannot be set any finer between the bracket's ends"
            steps.pop()
            break
        lo, hi = (s.rate, hi) if s.passed else (lo, s.rate)
    sat = sorted(s.rate for s in steps if s.bench_saturated)
    if sat:
        note = (note + "; " if note else "") + (f"the load generator was saturated at {', '.join(f'{r:.0f}' for r in sat)} msg/s: "
                                                 "loss there may be the generator's, read the capacity as a lower bound")
    return Capacity(lo, hi, threshold_pct, steps, note)


def rate_overrides(publishers: int, rate: float, duration_s: float) -> tuple[float, dict[str, Any]]:
    """(offered rate, overrides) realising ``rate`` messages/s for all publishers together."""
    interval = max(1, round(publishers * 1000.0 / rate))
    offered = publishers * 1000.0 / interval
    messages = max(publishers, round(offered * duration_s))
    return offered, {"scenario.intervalMs": interval, "scenario.messages": messages, "scenario.messagesPerPublisher": False}


def run_capacity(campaign: Campaign, out: Path, runner: PointRunner, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Search every configuration of the campaign; resumable (finished steps are read back, not rerun)."""
    s = settings(campaign)
    cdir = CampaignDir(out)
    cdir.open(campaign, [], kind="capacity")
    results: dict[str, dict[str, Any]] = {}

    def say(text: str) -> None:
        if progress:
            print(f"[capacity {campaign.name}] {text}", file=sys.stderr, flush=True)

    for levels in campaign.configurations():
        cid = config_id(levels)
        over, bal = campaign.overrides_of(levels)
        base_cfg = campaign.validate_point(over, f"configuration {cid}")

        def probe(rate: float, cid: str = cid, over: dict[str, Any] = over, bal: str | None = bal, pubs: int = base_cfg.scenario.publishers,
                  levels: dict[str, Any] = levels) -> tuple[float, list[float], list[str]]:
            offered, extra = rate_overrides(pubs, rate, float(s["durationS"]))
            losses, ids = [], []
            for rep in range(1, int(s["repetitions"]) + 1):
                pid = f"{cid}-rate{offered:.1f}-r{rep}"
                p = Point(pid, cid, levels | {"offered_rate": offered}, rep, over | extra, bal)
                rec = cdir.result(pid)
                if rec is None:
                    cfg = campaign.validate_point(p.overrides, f"point {pid}")
                    pdir = cdir.point_dir(pid)
                    set_aside(pdir)
                    pdir.mkdir(parents=True, exist_ok=True)
                    say(f"{cid}: {offered:.1f} msg/s, repetition {rep} (about {fmt_s(campaign.estimate_s(cfg))})")
                    cdir.event("start", pid)
                    t0 = time.time()
                    try:
                        summary = runner(p, cfg, pdir)
                    except PointFailed as exc:
                        cdir.event("failed", pid, reason=str(exc))
                        raise CampaignError(f"capacity step {pid} failed: {exc}; fix the cause and run the same command to resume") from None
                    rec = point_record(p, cfg, Path(summary.get("run_dir", "")), summary, time.time() - t0)
                    write_json_atomic(pdir / "result.json", rec)
                    cdir.event("complete", pid)
                losses.append(float(rec["loss_pct"]))
                ids.append(pid)
            say(f"{cid}: {offered:.1f} msg/s lost {', '.join(f'{x:.3f}' for x in losses)} %")
            return offered, losses, ids

        def saturated(ids: list[str]) -> int:
            return sum(1 for pid in ids if (cdir.result(pid) or {}).get("bench_saturated"))

        cap = search(probe, float(s["startRate"]), float(s["minRate"]), float(s["maxRate"]), float(s["thresholdPct"]),
                     float(s["resolution"]), int(s["maxSteps"]), saturation=saturated)
        results[cid] = {"levels": levels, **cap.to_dict()}
        say(f"{cid}: capacity {cap.text()}")
        write_json_atomic(out / "capacity.json", {"settings": s, "configurations": results})
    (out / "capacity.txt").write_text("".join(f"{cid}: {r['text']}\n" for cid, r in results.items()))
    return json.loads((out / "capacity.json").read_text())["configurations"] if results else {}
