"""Configuration, validation and the topology plan."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from workloads.base.errors import UnknownKeyError
from workloads.describe.config import ConfigError, load_stack, parse_config, renumber
from workloads.describe.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent


def stack_cfg(stack: str = "distributed") -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"])


def with_value(cfg: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set ``mqttlab:section.key`` (or a top-level key) in a deep copy."""
    out = copy.deepcopy(cfg)
    if "." in path:
        section, key = path.split(".", 1)
        out.setdefault(section, {})
        if "." in key:
            k1, k2 = key.split(".")
            out[section].setdefault(k1, {})[k2] = value
        else:
            out[section][key] = value
    else:
        out[path] = value
    return out


BAD: list[tuple[str, Any, str]] = [
    ("mqttlab:topology", "mesh", "mqttlab:topology"),
    ("mqttlab:balancer.scheduler", "fastest", "mqttlab:balancer.scheduler"),
    ("mqttlab:balancer.forwarding", "dr", "mqttlab:balancer.forwarding"),
    ("mqttlab:network.vnetCidr", "10.0.0.0/33", "mqttlab:network.vnetCidr"),
    ("mqttlab:network.brokerSubnet", "10.2.0.1/24", "mqttlab:network.brokerSubnet"),
    ("mqttlab:network.brokerSubnet", "not-a-cidr", "mqttlab:network.brokerSubnet"),
    ("mqttlab:network.brokerSubnet", "192.168.0.0/24", "mqttlab:network.brokerSubnet"),
    ("mqttlab:network.clientSubnets", ["10.3.0.0/24", "10.3.0.128/25"], "mqttlab:network.clientSubnets[1]"),
    ("mqttlab:network.clientSubnets", ["10.2.0.0/25"], "mqttlab:network.clientSubnets[0]"),
    ("mqttlab:network.clientSubnets", [], "mqttlab:network.clientSubnets"),
    ("mqttlab:network.brokerHostAddress", "10.2.0.2", "mqttlab:network.brokerHostAddress"),
    ("mqttlab:brokers.count", 0, "mqttlab:brokers.count"),
    ("mqttlab:brokers.count", "three", "mqttlab:brokers.count"),
    ("mqttlab:brokers.addresses", ["10.2.0.20", "10.2.0.21", "10.9.0.22"], "mqttlab:brokers.addresses[2]"),
    ("mqttlab:brokers.addresses", ["10.2.0.20", "10.2.0.20", "10.2.0.22"], "mqttlab:brokers.addresses[1]"),
    ("mqttlab:brokers.addresses", ["10.2.0.20", "10.2.0.21"], "mqttlab:brokers.addresses"),
    ("mqttlab:brokers.addresses", ["10.2.0.20", "10.2.0.21", "10.2.0.10"], "mqttlab:brokers.addresses[2]"),
    ("mqttlab:brokers.cpus", 0, "mqttlab:brokers.cpus"),
    ("mqttlab:brokers.cpus", -0.5, "mqttlab:brokers.cpus"),
    ("mqttlab:brokers.memoryMb", 0, "mqttlab:brokers.memoryMb"),
    ("mqttlab:brokers.image", "eclipse-mosquitto:latest", "mqttlab:brokers.image"),
    ("mqttlab:brokers.image", "eclipse-mosquitto:1.6.15", "mqttlab:brokers.image"),
    ("mqttlab:brokers.maxQueuedMessages", -1, "mqttlab:brokers.maxQueuedMessages"),
    ("mqttlab:brokers.port", 70000, "mqttlab:brokers.port"),
    ("mqttlab:bridge.layout", "mesh", "mqttlab:bridge.layout"),
    ("mqttlab:bridge.hub", 4, "mqttlab:bridge.hub"),
    ("mqttlab:bridge.qos", 0, "mqttlab:bridge.qos"),  # below the scenario's qos 1
    ("mqttlab:bridge.keepaliveS", 4, "mqttlab:bridge.keepaliveS"),  # mosquitto refuses keepalive_interval < 5
    ("mqttlab:bridge.keepaliveS", "60", "mqttlab:bridge.keepaliveS"),
    ("mqttlab:balancer.weights", [1, 1], "mqttlab:balancer.weights"),
    ("mqttlab:balancer.weights", [0, 0, 0], "mqttlab:balancer.weights"),
    ("mqttlab:balancer.timeouts.tcp", 0, "mqttlab:balancer.timeouts.tcp"),
    ("mqttlab:scenario.qos", 3, "mqttlab:scenario.qos"),
    ("mqttlab:scenario.publishers", 0, "mqttlab:scenario.publishers"),
    ("mqttlab:scenario.messages", 10, "mqttlab:scenario.messages"),  # fewer than publishers
    ("mqttlab:scenario.payloadBytes", 8, "mqttlab:scenario.payloadBytes"),
    ("mqttlab:scenario.mqttVersion", "4", "mqttlab:scenario.mqttVersion"),
    ("mqttlab:scenario.topic", "bench/#", "mqttlab:scenario.topic"),
    ("mqttlab:scenario.timeLimitS", 5, "mqttlab:scenario.timeLimitS"),  # not above drainS
    ("mqttlab:scenario.color", "blue", "mqttlab:scenario.color"),
    ("mqttlab:brokers", "three", "mqttlab:brokers"),
    ("mqttlab:balancer.healthCheck.timeout", 0, "mqttlab:balancer.healthCheck.timeout"),
    ("mqttlab:balancer.healthCheck.timeout", 3601, "mqttlab:balancer.healthCheck.timeout"),  # above an hour, before the interval rule
    ("mqttlab:security.tlsPort", 65536, "mqttlab:security.tlsPort"),
]


@pytest.mark.parametrize(("path", "value", "key"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_configuration_names_key_value_and_rule(path: str, value: Any, key: str) -> None:
    cfg = stack_cfg()
    if path.count(".") == 0:
        bad = with_value(cfg, path, value)
    else:
        section, rest = path.split(".", 1)
        bad = with_value(cfg, f"{section}.{rest}", value)
    with pytest.raises(ConfigError) as info:
        parse_config(bad, "distributed")
    assert info.value.key == key
    shown = [str(v) for v in value] if isinstance(value, list) and value else [str(value)]
    assert any(v in str(info.value) for v in shown)  # the offending value (or list element) is named
    assert ("invalid" in str(info.value)) != isinstance(info.value, UnknownKeyError)  # a bad value, or a key that does not exist
    assert info.value.allowed  # says what is allowed


def test_an_mqtt_probe_is_refused_under_tls_and_the_minimal_log_types_are_enough() -> None:
    """The MQTT health check speaks plain MQTT, so with TLS it would mark every broker down; a check
    timeout above an hour is refused as such; and notice plus warning are exactly what the analysis
    reads, so that list alone is accepted."""
    cfg = with_value(with_value(stack_cfg(), "mqttlab:balancer.healthCheck.type", "mqtt"), "mqttlab:security.mode", "tls")
    with pytest.raises(ConfigError) as info:
        parse_config(cfg, "distributed")
    assert info.value.key == "mqttlab:balancer.healthCheck.type" and "'mqtt'" in str(info.value)
    assert "with security mode tls (TLS) use type tcp" in str(info.value)
    assert parse_config(with_value(cfg, "mqttlab:balancer.healthCheck.type", "tcp"), "distributed").security.tls
    with pytest.raises(ConfigError, match="must be <= 3600 seconds"):  # the hour's limit, not the interval's
        parse_config(with_value(stack_cfg(), "mqttlab:balancer.healthCheck.timeout", 3601), "distributed")
    ok = parse_config(with_value(stack_cfg(), "mqttlab:brokers.logTypes", ["warning", "notice"]), "distributed")
    assert ok.brokers.log_types == ("warning", "notice")


def test_at_least_twenty_distinct_bad_configurations() -> None:
    """Counts the rules the parser really enforces: the stack file itself is accepted, so each
    refusal below comes from its one changed value, and each must be a different (key, rule)."""
    parse_config(stack_cfg(), "distributed")
    rules = set()
    for path, value, _key in BAD:
        with pytest.raises(ConfigError) as info:
            parse_config(with_value(stack_cfg(), path, value), "distributed")
        rules.add((info.value.key, info.value.allowed))
    assert len(rules) >= 20


def test_reference_defaults_without_any_setting() -> None:
    cfg = parse_config({}, "distributed")
    assert cfg.topology == "distributed"
    assert [str(a) for a in cfg.brokers.addresses] == ["10.2.0.20", "10.2.0.21", "10.2.0.22"]
    assert (cfg.brokers.cpus, cfg.brokers.memory_mb) == (0.25, 128)
    assert (cfg.brokers.max_queued_messages, cfg.brokers.max_inflight_messages) == (1000, 20)
    assert cfg.balancer.scheduler == "lc"
    assert (cfg.balancer.timeout_tcp, cfg.balancer.timeout_tcpfin) == (900, 120)
    assert [str(s) for s in cfg.network.client_subnets] == ["10.3.0.0/24", "10.4.0.0/24"]
    assert cfg.scenario.messages == 6000 and cfg.scenario.publishers + cfg.scenario.subscribers == 480


def test_stack_files_are_the_reference_and_differ_only_in_topology() -> None:
    d, c = load_stack("distributed", ROOT), load_stack("centralized", ROOT)
    assert (d.topology, c.topology) == ("distributed", "centralized")
    assert d.brokers == c.brokers and d.network == c.network and d.balancer == c.balancer and d.scenario == c.scenario


def test_unknown_stack_lists_known_ones(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.alpha.yaml").write_text("config: {}\n")
    with pytest.raises(ConfigError, match="known stacks here: alpha"):
        load_stack("beta", tmp_path)


def test_overrides_are_validated_like_the_file() -> None:
    cfg = load_stack("distributed", ROOT)
    assert cfg.with_overrides({"balancer.scheduler": "rr", "scenario.qos": 2}).balancer.scheduler == "rr"
    with pytest.raises(ConfigError) as info:
        cfg.with_overrides({"balancer.scheduler": "fair"})
    assert info.value.key == "mqttlab:balancer.scheduler"


def test_distributed_plan_one_balancer_per_client_host() -> None:
    plan = build_plan(load_stack("distributed", ROOT))
    assert [h.name for h in plan.hosts] == ["brokers", "ipvs1", "ipvs2"]
    assert [(b.host, b.vip, b.snat_sources) for b in plan.balancers] == [("ipvs1", "10.3.0.10", ()), ("ipvs2", "10.4.0.10", ())]
    assert [(c.host, c.target) for c in plan.clients] == [("ipvs1", "10.3.0.10:1883"), ("ipvs2", "10.4.0.10:1883")]
    assert [(r.address, r.weight) for r in plan.balancers[0].real_servers] == [("10.2.0.20", 1), ("10.2.0.21", 1), ("10.2.0.22", 1)]
    assert plan.sysctls("ipvs1") == {"net.ipv4.ip_forward": "1"}
    assert [(b.local, b.remote) for b in plan.bridges] == [("broker1", "broker2"), ("broker1", "broker3")]
    assert len({b.remote_clientid for b in plan.bridges}) == 2


def test_centralized_plan_one_balancer_and_snat_of_the_other_subnets() -> None:
    plan = build_plan(load_stack("centralized", ROOT))
    assert [(b.host, b.snat_sources) for b in plan.balancers] == [("ipvs1", ("10.4.0.0/24",))]
    assert [(c.host, c.target) for c in plan.clients] == [("ipvs1", "10.3.0.10:1883"), ("ipvs2", "10.3.0.10:1883")]
    assert plan.sysctls("ipvs1") == {"net.ipv4.ip_forward": "1", "net.ipv4.vs.conntrack": "1"}
    assert plan.sysctls("ipvs2") == {}


def test_scale_out_follows_configuration() -> None:
    cfg = parse_config(
        {
            "mqttlab:topology": "centralized",
            "mqttlab:network": {"clientSubnets": ["10.3.0.0/24", "10.4.0.0/24", "10.5.0.0/24"]},
            "mqttlab:brokers": {"count": 5},
            "mqttlab:bridge": {"hub": 3},
        },
        "big",
    )
    plan = build_plan(cfg)
    assert len(plan.brokers) == 5 and [b.address for b in plan.brokers][-1] == "10.2.0.24"
    assert len(plan.balancer_hosts) == 3 and len(plan.balancers) == 1
    assert plan.balancers[0].snat_sources == ("10.4.0.0/24", "10.5.0.0/24")
    assert {b.local for b in plan.bridges} == {"broker3"} and len(plan.bridges) == 4


def test_renumber_keeps_shape_inside_the_benchmarking_range() -> None:
    cfg = renumber(load_stack("centralized", ROOT))
    plan = build_plan(cfg)
    lab = ipaddress.IPv4Network("198.18.0.0/15")
    addrs = [ipaddress.IPv4Address(h.address) for h in plan.hosts] + [ipaddress.IPv4Address(b.address) for b in plan.brokers]
    assert all(a in lab for a in addrs)
    assert [b.address for b in plan.brokers] == ["198.18.0.20", "198.18.0.21", "198.18.0.22"]
    assert [h.address for h in plan.hosts] == ["198.18.0.10", "198.18.1.10", "198.18.2.10"]
    assert plan.balancers[0].snat_sources == ("198.18.2.0/24",)


def test_health_check_and_tls_settings_reach_the_plan() -> None:
    """Every health-check and TLS setting is read, bounded where a bound matters, and carried to
    what is deployed: the balancers' checks, the VIP port under TLS, the plan's security mode."""
    base = stack_cfg()
    hc = {"type": "tcp", "interval": 7, "retries": 1, "timeout": 3}
    cfg = parse_config(with_value(with_value(base, "mqttlab:balancer.healthCheck", hc), "mqttlab:security.mode", "tls"), "distributed")
    assert (cfg.balancer.health_check.interval, cfg.balancer.health_check.retries, cfg.balancer.health_check.timeout) == (7, 1, 3)
    assert (cfg.security.tls_port, cfg.security.cert_days) == (8883, 30)  # the defaults: IANA's MQTT over TLS, a month
    plan = build_plan(cfg)
    assert plan.security == "tls" and {b.port for b in plan.balancers} == {8883}
    assert {b.health_check for b in plan.balancers} == {cfg.balancer.health_check}
    assert all(c.target.endswith(":8883") for c in plan.clients)
    assert parse_config(with_value(base, "mqttlab:security.certDays", 1), "distributed").security.cert_days == 1
    for path, value in (("mqttlab:balancer.healthCheck.retries", 0), ("mqttlab:security.certDays", 0)):
        with pytest.raises(ConfigError, match=">= 1") as info:
            parse_config(with_value(base, path, value), "distributed")
        assert info.value.key == path
    # both above the hour: the timeout is named when only it is (the interval at exactly 3600 is allowed)
    at_hour = with_value(with_value(base, "mqttlab:balancer.healthCheck.interval", 3600), "mqttlab:balancer.healthCheck.timeout", 3601)
    with pytest.raises(ConfigError, match="must be <= 3600 seconds") as info:
        parse_config(at_hour, "distributed")
    assert info.value.key == "mqttlab:balancer.healthCheck.timeout"


def test_a_fault_on_a_director_is_checked_against_the_plans_balancers() -> None:
    """A director fault names a balancer host of this plan: ipvs2 exists in the distributed
    topology and is accepted; a host that is no balancer is refused, naming the hosts there are."""
    ok = parse_config(with_value(stack_cfg(), "mqttlab:faults", ["director:ipvs2:kill@8s"]), "distributed")
    assert [(f.kind, f.target, f.at_s) for f in ok.faults] == [("director", "ipvs2", 8.0)]
    with pytest.raises(ConfigError, match="directors: ipvs1, ipvs2") as info:
        parse_config(with_value(stack_cfg(), "mqttlab:faults", ["broker1:kill@1s", "director:broker1:kill@5s"]), "distributed")
    assert info.value.key == "mqttlab:faults[1]"
