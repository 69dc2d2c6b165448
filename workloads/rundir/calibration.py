"""A calibration's numbers: one broker's capacity at its cap, read from a flood's records, and the
overload ratio of a run against it (:mod:`workloads.hosts.lab.calibrate` runs the flood)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workloads.describe.config import ExperimentConfig
from workloads.rundir.fidelity import read_rows


@dataclass(frozen=True)
class Calibration:
    """One broker's capacity at a cap, in PUBLISH packets sent per second (deliveries), with how
    it was measured."""

    capacity: float  # deliveries per second while at its cap
    at_cap_s: float  # seconds of the flood during which its cgroup was throttled
    broker_cpus: float
    qos: int
    payload_bytes: int
    fanout: int  # subscribers served by the calibrated broker: the cluster's per-broker share
    offered: float  # deliveries per second offered by the flood
    run_dir: str
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fanout(cfg: ExperimentConfig) -> int:
    """The subscribers one broker of the cluster serves: the balancer spreads them evenly."""
    return max(1, math.ceil(cfg.scenario.subscribers / cfg.brokers.count))


def offered_per_broker(cfg: ExperimentConfig) -> float | None:
    """Deliveries per second each broker of the cluster is offered: every message reaches its
    share of the subscribers (a shared topic; a topic per publisher reaches one subscriber)."""
    sc = cfg.scenario
    if not sc.interval_ms:
        return None
    rate = sc.publishers * 1000.0 / sc.interval_ms
    per = fanout(cfg) if sc.topic_layout == "shared" else 1.0 / cfg.brokers.count
    return rate * per


def overload_ratio(cfg: ExperimentConfig, cal: Calibration | dict[str, Any] | None) -> float | None:
    """Offered deliveries per broker over the calibrated capacity; None without either."""
    cap = cal.capacity if isinstance(cal, Calibration) else (cal or {}).get("capacity")
    offered = offered_per_broker(cfg)
    return round(offered / cap, 3) if offered is not None and cap else None


def measure(run_dir: Path, broker: str = "broker1") -> tuple[float, float]:
    """The broker's PUBLISH packets sent per second over the longest stretch in which its cgroup
    was throttled in at least half of the quota periods (100 ms) of every monitor interval, and
    how long that stretch lasted. The rate is read from the broker's own ``$SYS`` counter at the
    first and last samples inside the stretch (Mosquitto updates it every ``sysInterval``)."""
    thr = sorted((float(r["time_s"]), float(r["nr_throttled"])) for r in read_rows(run_dir / "monitor" / "cgroups.csv")
                 if r.get("group") == broker and r.get("nr_throttled") not in (None, ""))
    best, start = (0.0, 0.0, 0.0), None
    for (t0, n0), (t1, n1) in zip(thr, thr[1:], strict=False):
        at_cap = t1 > t0 and n1 - n0 >= 0.5 * (t1 - t0) / 0.1
        if at_cap and start is None:
            start = t0
        if start is not None and (not at_cap or (t1, n1) == thr[-1]):
            end = t1 if at_cap else t0
            if end - start > best[0]:
                best = (end - start, start, end)
            start = None
    span, ta, tb = best
    sent = sorted((float(r["time_s"]), float(r["msgs_sent"])) for r in read_rows(run_dir / "monitor" / "brokers.csv")
                  if r.get("broker") == broker and r.get("msgs_sent") not in (None, "") and ta <= float(r["time_s"]) <= tb)
    if span <= 0 or len(sent) < 2 or sent[-1][0] <= sent[0][0]:
        return 0.0, 0.0
    return (sent[-1][1] - sent[0][1]) / (sent[-1][0] - sent[0][0]), span
