"""Host calibration: what one capped broker delivers per second on this host, so that a run's
load can be stated as its overload ratio.

An offered rate in messages per second means nothing across machines: the same 480 clients
overload a quarter core on one CPU and not on another. What compares is the load against the
capacity of the system under test on the machine it ran on. So a calibration runs one broker
alone, at the plan's cap, QoS, payload, topic layout and per-broker fan-out (the subscribers one
broker of the cluster serves), offered far more than it can carry, and measures the PUBLISH
packets it sends per second while its cgroup is throttled, that is while its cap is the limit.
The run's overload ratio is then the deliveries per second each broker of the cluster is
offered (the total publish rate times its share of the subscribers) over that capacity: below
1 the cap should not bind; above 1 it does, whatever the machine.

It ignores the bridges' own work (a broker of the cluster also forwards every message to the
others), so a cluster saturates a little below ratio 1. The calibration is a normal lab run
(its run directory is kept under ``calibration/`` beside the runs) and is taken again when the
flood did not throttle the broker for long enough, with four times the rate, up to
``ATTEMPTS`` times.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workloads.describe.config import ExperimentConfig
from workloads.hosts.lab.netns import LabError
from workloads.rundir.fidelity import read_rows

FLOOD_S = 6.0  # seconds of publishing per attempt
MIN_AT_CAP_S = 2.0  # the broker must be throttled this long for its rate to be its capacity
ATTEMPTS = 3
FIRST_FACTOR = 4.0  # the first attempt offers this many times the plan's per-broker rate


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


def flood_config(cfg: ExperimentConfig, factor: float) -> ExperimentConfig:
    """One broker at the plan's cap, its share of the subscribers, a third of the publishers (at
    least two) sending ``factor`` times as often, for ``FLOOD_S``; no faults, no health checks."""
    sc = cfg.scenario
    pubs = max(2, math.ceil(sc.publishers / cfg.brokers.count))
    base = sc.interval_ms or 100
    interval = max(1, int(base / factor))
    per_pub = max(2, math.ceil(FLOOD_S * 1000 / interval))
    # the overrides apply to the stack file as written; the lab's own addresses are given again after
    written = (cfg.raw.get("mqttlab:brokers") or {}).get("addresses")
    flood = cfg.with_overrides({
        "brokers.count": 1, "brokers.addresses": list(written[:1]) if written else None, "balancer.weights": [1], "bridge.hub": 1,
        "scenario.publishers": pubs, "scenario.subscribers": fanout(cfg), "scenario.intervalMs": interval,
        "scenario.messages": per_pub, "scenario.messagesPerPublisher": True, "scenario.drainS": 2.0,
        "scenario.timeLimitS": 120.0, "faults": [], "balancer.healthCheck": {"type": "none"},
    })
    if flood.network.broker_subnet != cfg.network.broker_subnet:
        from workloads.describe.plan import renumber

        flood = renumber(flood)
    return flood


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


def calibrate(cfg: ExperimentConfig, runs_dir: Path, balancer_req: str | None, progress: bool = True,
              broker_cpuset: str = "auto") -> Calibration:
    """Flood one capped broker until it has been at its cap for ``MIN_AT_CAP_S``; its rate then."""
    from workloads.hosts.lab import lab

    factor = FIRST_FACTOR
    for attempt in range(1, ATTEMPTS + 1):
        flood = flood_config(cfg, factor)
        if progress:
            print(f"[calibrate] attempt {attempt}/{ATTEMPTS}: one broker at {cfg.brokers.cpus} CPU, {flood.scenario.publishers} publishers "
                  f"every {flood.scenario.interval_ms} ms, {flood.scenario.subscribers} subscribers, QoS {flood.scenario.qos}", flush=True)
        s = lab.run(flood, runs_dir / "calibration", balancer_req, progress=False, broker_cpuset=broker_cpuset)
        rate, at_cap = measure(Path(s["run_dir"]))
        offered = offered_per_broker(flood) or 0.0
        if at_cap >= MIN_AT_CAP_S:
            cal = Calibration(round(rate, 1), round(at_cap, 2), cfg.brokers.cpus, cfg.scenario.qos, cfg.scenario.payload_bytes,
                              fanout(cfg), round(offered, 1), s["run_dir"], attempt)
            if progress:
                print(f"[calibrate] capacity {cal.capacity:.0f} deliveries/s at the cap ({cal.at_cap_s} s at the cap; "
                      f"offered {offered:.0f}/s)", flush=True)
            return cal
        if int(cfg.scenario.interval_ms / factor) <= 1:
            break
        factor *= 4
    raise LabError(f"calibration: the broker never stayed at its cap for {MIN_AT_CAP_S} s in {attempt} floods of up to {factor:g} times "
                   "the plan's rate; its capacity at this cap is above what the load generator can offer on this host")
