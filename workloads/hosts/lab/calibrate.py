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
from pathlib import Path

from workloads.base.errors import LabError
from workloads.describe.config import ExperimentConfig, renumber
from workloads.hosts.lab import lab
from workloads.rundir.calibration import Calibration, fanout, measure, offered_per_broker

FLOOD_S = 6.0  # seconds of publishing per attempt
MIN_AT_CAP_S = 2.0  # the broker must be throttled this long for its rate to be its capacity
ATTEMPTS = 3
FIRST_FACTOR = 4.0  # the first attempt offers this many times the plan's per-broker rate


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
        flood = renumber(flood)
    return flood


def calibrate(cfg: ExperimentConfig, runs_dir: Path, balancer_req: str | None, progress: bool = True,
              broker_cpuset: str = "auto") -> Calibration:
    """Flood one capped broker until it has been at its cap for ``MIN_AT_CAP_S``; its rate then."""
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
