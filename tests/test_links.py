"""Impaired links as data (``mqttlab:links``): the checks, where each class goes in the lab's
network and the tc commands that carry it out; and locality, from a run whose truth is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workloads.analysis.load import load_run
from workloads.analysis.locality import locality, routes
from workloads.analysis.metrics import client_brokers
from workloads.analysis.synthetic import reference_truth, write_run
from workloads.base.errors import ConfigError
from workloads.describe.config import parse_config
from workloads.describe.links import placements, tc_commands
from workloads.describe.plan import build_plan


def cfg_with(links: dict[str, Any], topology: str = "distributed", more: dict[str, Any] | None = None) -> Any:
    return parse_config({"mqttlab:topology": topology, "mqttlab:links": links, **(more or {})}, topology)


@pytest.mark.parametrize(("links", "topology", "key", "why"), [
    ({"clientBalancer": {"delayMs": 5}}, "distributed", "mqttlab:links.clientBalancer", "no link between clients and a balancer"),
    ({"bridge": {"delayMs": 5, "jitterMs": 6}}, "distributed", "mqttlab:links.bridge.jitterMs", "must be <= delayMs"),
    ({"bridge": {"lossPct": 100}}, "distributed", "mqttlab:links.bridge.lossPct", "must be <= 99.9"),
    ({"balancerBroker": {"rateMbit": 0}}, "centralized", "mqttlab:links.balancerBroker.rateMbit", "must be > 0"),
    ({"balancerBroker": {"delayMs": "20ms"}}, "centralized", "mqttlab:links.balancerBroker.delayMs", "must be a number"),
    ({"bridge": {"delay": 5}}, "distributed", "mqttlab:links.bridge.delay", "did you mean mqttlab:links.bridge.delayMs"),
])
def test_an_impairment_that_cannot_be_carried_out_is_one_line_naming_its_key(links: dict[str, Any], topology: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg_with(links, topology)
    assert info.value.key == key and why in str(info.value), str(info.value)


def test_a_bridge_impairment_without_bridges_is_refused() -> None:
    with pytest.raises(ConfigError, match="no bridge to impair"):
        cfg_with({"bridge": {"delayMs": 5}}, more={"mqttlab:bridge": {"layout": "none"}})


def test_the_bridges_delay_goes_on_the_broker_hosts_loopback_alone() -> None:
    cfg = cfg_with({"bridge": {"delayMs": 20, "jitterMs": 2}})
    cmds = tc_commands(placements(build_plan(cfg), cfg.links), cfg.links)
    assert cmds == {("brokers", "lo"): [["tc", "qdisc", "replace", "dev", "lo", "root", "netem", "limit", "100000", "delay", "20ms", "2ms"]]}
    assert not cfg_with({}).links.active and placements(build_plan(cfg_with({})), cfg_with({}).links) == []


def test_each_class_goes_to_the_switch_port_it_arrives_on_chosen_by_source() -> None:
    """Centralized: ipvs1 is the only director (it masquerades ipvs2's clients), so the brokers
    hear only ipvs1, ipvs1 hears the brokers and ipvs2's clients, ipvs2 hears only ipvs1."""
    cfg = cfg_with({"balancerBroker": {"delayMs": 5}, "clientBalancer": {"delayMs": 3, "lossPct": 1, "rateMbit": 100}}, "centralized")
    plan = build_plan(cfg)
    assert [h.name for h in plan.hosts] == ["brokers", "ipvs1", "ipvs2"]  # the lab's switch ports p0, p1, p2
    got = {(p.cls, p.host, p.dev, p.sources) for p in placements(plan, cfg.links)}
    assert got == {("balancerBroker", "sw", "p0", ("10.3.0.0/24",)), ("balancerBroker", "sw", "p1", ("10.2.0.0/24",)),
                   ("clientBalancer", "sw", "p1", ("10.4.0.10/32",)), ("clientBalancer", "sw", "p2", ("10.3.0.10/32",))}
    p1 = tc_commands(placements(plan, cfg.links), cfg.links)[("sw", "p1")]
    assert p1[0] == ["tc", "qdisc", "replace", "dev", "p1", "root", "handle", "1:", "prio", "bands", "3", "priomap", *["2"] * 16]
    assert ["netem", "limit", "100000", "delay", "3ms", "loss", "1%", "rate", "100mbit"] == p1[3][p1[3].index("netem"):]
    assert p1[2][-6:] == ["match", "ip", "src", "10.2.0.0/24", "flowid", "1:1"] and p1[4][-6:] == ["match", "ip", "src", "10.4.0.10/32", "flowid", "1:2"]


def test_distributed_directors_each_get_the_brokers_traffic_impaired() -> None:
    cfg = cfg_with({"balancerBroker": {"delayMs": 5}})
    got = {(p.host, p.dev, p.sources) for p in placements(build_plan(cfg), cfg.links)}
    assert got == {("sw", "p0", ("10.3.0.0/24", "10.4.0.0/24")), ("sw", "p1", ("10.2.0.0/24",)), ("sw", "p2", ("10.2.0.0/24",))}


def test_routes_follow_the_bridges() -> None:
    star = [{"name": "broker1-broker2", "local": "broker1", "remote": "broker2"}, {"name": "broker1-broker3", "local": "broker1", "remote": "broker3"}]
    r = routes(["broker1", "broker2", "broker3"], star)
    assert r[("broker1", "broker1")] == [] and r[("broker2", "broker1")] == ["broker1-broker2"]
    assert r[("broker2", "broker3")] == ["broker1-broker2", "broker1-broker3"]
    assert ("broker1", "broker2") not in routes(["broker1", "broker2"], [])


def test_locality_counts_what_crossed_each_bridge_from_the_runs_own_records(tmp_path: Path) -> None:
    """reference_truth: pub0 on broker1, pub1 on broker2; subscribers on broker1 (two), broker2,
    broker3; broker3's subscriber (the only one two bridges from pub1) sees 5 ms, the rest 1 ms."""
    run_dir = write_run(tmp_path / "r", reference_truth(100))
    doc = json.loads((run_dir / "manifest.json").read_text())
    doc["plan"]["bridges"] = [{"name": f"broker1-{b}", "local": "broker1", "remote": b} for b in ("broker2", "broker3")]
    doc["scenario"]["payload_bytes"] = 64
    (run_dir / "manifest.json").write_text(json.dumps(doc))
    run = load_run(run_dir)
    loc = locality(run, client_brokers(run))
    assert loc is not None
    # first deliveries: 0 bridges 90 + 100 + 99; 1 bridge 100 + 100 + 99 + 99; 2 bridges 100 - 5 - 1
    assert {k: v["deliveries"] for k, v in loc["by_bridges_crossed"].items()} == {"0": 289, "1": 398, "2": 94}
    assert loc["deliveries"] == 781 and loc["unrouted"] == 0 and loc["local_pct"] == round(100 * 289 / 781, 3) and loc["crossed_pct"] == round(100 * 492 / 781, 3)
    assert loc["by_bridges_crossed"]["2"]["latency_ms"]["p50"] == 5.0 and loc["by_bridges_crossed"]["0"]["latency_ms"]["p50"] == 1.0
    assert loc["per_bridge"] == {"broker1-broker2": {"messages": 199, "payload_bytes": 199 * 64},
                                 "broker1-broker3": {"messages": 194, "payload_bytes": 194 * 64}}
    doc["plan"]["bridges"] = [doc["plan"]["bridges"][0]]  # broker3 joined by nothing: its subscriber's 100 + 94 had no route
    (run_dir / "manifest.json").write_text(json.dumps(doc))
    run = load_run(run_dir)
    cut = locality(run, client_brokers(run))
    assert cut is not None and cut["unrouted"] == 194 and cut["deliveries"] == 781 - 194
