"""What the pure core renders and plans means what the stack file says, checked against texts
and numbers worked out by hand (no micro-VM, no namespaces): NAT forwarding, the scheduler and
the weights in every balancer file, the bridge and caps in every broker file, the plan's
addresses, and the configuration's boundaries. scripts/mutation.sh holds these tests to
planted bugs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from workloads.describe.config import ConfigError, ExperimentConfig, load_stack, parse_config, renumber, stack_file
from workloads.describe.plan import build_plan
from workloads.describe.scenario import CLI_NAMES, Scenario, scenario_from_mapping
from workloads.render import balancer as bal_r
from workloads.render import brokers as brk_r
from workloads.render import security
from workloads.render.files import render_files

ROOT = Path(__file__).resolve().parent.parent


def cfg(stack: str = "distributed", /, **over: Any) -> ExperimentConfig:
    return load_stack(stack, ROOT).with_overrides(over)


# --------------------------------------------------------------------------- balancer files


def test_ipvs_rules_are_nat_with_the_scheduler_and_each_weight() -> None:
    c = cfg("distributed", **{"balancer.scheduler": "wrr", "balancer.weights": [3, 1, 2], "balancer.port": 1884})
    bal = build_plan(c).balancers[1]
    assert bal_r.ipvs_rules(bal) == (
        "-A -t 10.4.0.10:1884 -s wrr\n"
        "-a -t 10.4.0.10:1884 -r 10.2.0.20:1883 -m -w 3\n"
        "-a -t 10.4.0.10:1884 -r 10.2.0.21:1883 -m -w 1\n"
        "-a -t 10.4.0.10:1884 -r 10.2.0.22:1883 -m -w 2\n"
    )
    for line in bal_r.ipvs_rules(bal).splitlines()[1:]:  # masquerading (NAT), never direct routing (-g) or tunnelling (-i)
        assert " -m " in line and " -g" not in line and " -i" not in line
    assert bal_r.ipvs_timeouts(build_plan(cfg(**{"balancer.timeouts": {"tcp": 901, "tcpfin": 121, "udp": 301}})).balancers[0]) == "901 121 301\n"


@pytest.mark.parametrize("scheduler", ["rr", "wrr", "lc", "wlc", "sh", "mh"])
def test_every_scheduler_reaches_ipvs_and_its_haproxy_stand_in(scheduler: str) -> None:
    bal = build_plan(cfg(**{"balancer.scheduler": scheduler})).balancers[0]
    assert bal_r.ipvs_rules(bal).splitlines()[0] == f"-A -t 10.3.0.10:1883 -s {scheduler}"
    text = bal_r.haproxy_cfg(bal)
    algo = {"rr": "roundrobin", "wrr": "roundrobin", "lc": "leastconn", "wlc": "leastconn", "sh": "source", "mh": "source"}[scheduler]
    assert f"\tbalance {algo}\n" in text
    assert ("\thash-type consistent\n" in text) == (scheduler == "mh")  # maglev keeps a source's server when the set changes


def test_iptables_rules_forward_only_broker_traffic_and_masquerade_the_other_subnet() -> None:
    bal = build_plan(cfg("centralized")).balancers[0]
    assert bal_r.iptables_rules(bal) == (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        "-A FORWARD -d 10.2.0.20/32 -p tcp -m tcp --dport 1883 -j ACCEPT\n-A FORWARD -s 10.2.0.20/32 -p tcp -m tcp --sport 1883 -j ACCEPT\n"
        "-A FORWARD -d 10.2.0.21/32 -p tcp -m tcp --dport 1883 -j ACCEPT\n-A FORWARD -s 10.2.0.21/32 -p tcp -m tcp --sport 1883 -j ACCEPT\n"
        "-A FORWARD -d 10.2.0.22/32 -p tcp -m tcp --dport 1883 -j ACCEPT\n-A FORWARD -s 10.2.0.22/32 -p tcp -m tcp --sport 1883 -j ACCEPT\n"
        "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        "-A POSTROUTING -s 10.4.0.0/24 -o eth0 -j MASQUERADE\nCOMMIT\n"
    )
    assert "MASQUERADE" not in bal_r.iptables_rules(build_plan(cfg("distributed")).balancers[0])
    assert "-o ens5 " in bal_r.iptables_rules(bal, out_interface="ens5")


def test_nft_rules_are_the_same_policy_as_iptables() -> None:
    bal = build_plan(cfg("centralized")).balancers[0]
    assert bal_r.nft_rules(bal, out_interface="ens5") == (
        "table ip mqttlab {\n"
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tct state related,established accept\n"
        "\t\tip daddr 10.2.0.20 tcp dport 1883 accept\n\t\tip saddr 10.2.0.20 tcp sport 1883 accept\n"
        "\t\tip daddr 10.2.0.21 tcp dport 1883 accept\n\t\tip saddr 10.2.0.21 tcp sport 1883 accept\n"
        "\t\tip daddr 10.2.0.22 tcp dport 1883 accept\n\t\tip saddr 10.2.0.22 tcp sport 1883 accept\n\t}\n"
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        '\t\tip saddr 10.4.0.0/24 oifname "ens5" masquerade\n\t}\n'
        "}\n"
    )
    assert 'oifname "eth0"' in bal_r.nft_rules(bal)


def test_nft_balancer_gives_each_broker_as_many_slots_as_its_weight() -> None:
    bal = build_plan(cfg("centralized", **{"balancer.scheduler": "wrr", "balancer.weights": [2, 0, 1], "balancer.port": 1884})).balancers[0]
    dnat = "ip daddr 10.3.0.10 tcp dport 1884 dnat to numgen inc mod 3 map { 0 : 10.2.0.20, 1 : 10.2.0.20, 2 : 10.2.0.22 } : 1883"
    assert bal_r.nft_balancer(bal) == (
        "table ip mqttlab_lb {\n"
        f"\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\t{dnat}\n\t}}\n"
        f"\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\t{dnat}\n\t}}\n"
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        "\t\tip saddr 10.4.0.0/24 ip daddr { 10.2.0.20, 10.2.0.21, 10.2.0.22 } masquerade\n\t}\n"
        "}\n"
    )
    # the source-hashing schedulers keep a client on one broker: a hash of its address picks the slot
    for scheduler in ("sh", "mh"):
        hashed = build_plan(cfg("centralized", **{"balancer.scheduler": scheduler, "balancer.weights": [1, 1, 2]})).balancers[0]
        assert "dnat to jhash ip saddr mod 4 map { 0 : 10.2.0.20, 1 : 10.2.0.21, 2 : 10.2.0.22, 3 : 10.2.0.22 }" in bal_r.nft_balancer(hashed)
        assert "numgen" not in bal_r.nft_balancer(hashed)


def test_haproxy_is_a_tcp_proxy_on_the_vip_with_each_weight() -> None:
    bal = build_plan(cfg(**{"balancer.weights": [5, 1, 0], "balancer.timeouts": {"tcp": 77}})).balancers[1]
    assert bal_r.haproxy_cfg(bal, maxconn=123, stats_socket="/run/x.sock") == (
        "global\n\tmaxconn 123\n\tstats socket /run/x.sock mode 600 level admin\n"
        "defaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 77s\n\ttimeout server 77s\n"
        "frontend mqtt\n\tbind 10.4.0.10:1883\n\tdefault_backend brokers\n"
        "backend brokers\n\tbalance leastconn\n"
        "\tserver broker1 10.2.0.20:1883 weight 5\n\tserver broker2 10.2.0.21:1883 weight 1\n\tserver broker3 10.2.0.22:1883 weight 0\n"
    )
    plain = bal_r.haproxy_cfg(bal)
    assert "\tmaxconn 20000\n" in plain and "stats socket" not in plain


def test_apply_steps_are_the_reference_sequence_over_the_rendered_files() -> None:
    c = cfg("centralized", **{"balancer.scheduler": "wlc"})
    plan = build_plan(c)
    files = render_files(plan, c)
    assert bal_r.ipvs_apply_steps("ipvs1", "wlc", files) == [
        (["modprobe", "-a", "ip_vs", "ip_vs_wlc"], None, False),
        (["sysctl", "-w", "net.ipv4.ip_forward=1"], None, True),
        (["sysctl", "-w", "net.ipv4.vs.conntrack=1"], None, True),
        (["ipvsadm", "-C"], None, True),
        (["ipvsadm-restore"], files["ipvs1/ipvs.rules"], True),
        (["ipvsadm", "--set", "900", "120", "300"], None, True),
        (["iptables-restore"], files["ipvs1/rules.v4"], True),
    ]
    assert bal_r.sysctl_conf(plan, "ipvs1") == "net.ipv4.ip_forward = 1\nnet.ipv4.vs.conntrack = 1\n"
    assert bal_r.sysctl_conf(plan, "ipvs2") == "" and "ipvs2/ipvs.rules" not in files
    # health-checked, keepalived creates the virtual server from its own configuration: no ipvsadm-restore
    checked = bal_r.ipvs_apply_steps("ipvs1", "wlc", files | {"ipvs1/keepalived.conf": "virtual_server ..."})
    assert checked == [s for s in bal_r.ipvs_apply_steps("ipvs1", "wlc", files) if s[0] != ["ipvsadm-restore"]] and len(checked) == 6


def test_haproxy_checks_each_broker_as_keepalived_does() -> None:
    """HAProxy's check is keepalived's: a timeout per check, out after ``retries`` failures, back
    after one pass; for mqtt an MQTT CONNECT from the probe's client id, answered by a CONNACK."""
    hc = {"type": "mqtt", "interval": 1.5, "retries": 3, "timeout": 0.25}
    bal = build_plan(cfg(**{"balancer.healthCheck": hc})).balancers[1]
    lines = bal_r.haproxy_cfg(bal).splitlines()
    assert "\tserver broker2 10.2.0.21:1883 weight 1 check inter 1500ms fall 3 rise 1" in lines
    checks = lines[lines.index("\ttimeout check 250ms"):lines.index("\ttimeout check 250ms") + 6]
    assert checks[1:3] == ["\toption tcp-check", "\ttcp-check connect"]
    assert checks[4:] == ["\ttcp-check expect binary 2002", "\ttcp-check send-binary e000"]  # CONNACK, then DISCONNECT
    sent = bytes.fromhex(checks[3].removeprefix("\ttcp-check send-binary "))
    assert sent[0] == 0x10 and sent.endswith(b"mqttlab-probe-ipvs2")  # a CONNECT whose last field is the client id
    tcp = bal_r.haproxy_cfg(build_plan(cfg(**{"balancer.healthCheck": hc | {"type": "tcp"}})).balancers[1])
    assert "\ttimeout check 250ms\n" in tcp and "tcp-check" not in tcp and " check inter 1500ms fall 3 rise 1\n" in tcp


# --------------------------------------------------------------------------- broker files


def test_mosquitto_conf_carries_every_cap_and_the_hub_alone_defines_bridges() -> None:
    c = cfg(**{"brokers.maxQueuedMessages": 7, "brokers.maxInflightMessages": 3, "brokers.maxQueuedBytes": 9, "brokers.memoryLimit": 11,
               "brokers.sysInterval": 2, "brokers.port": 1999, "bridge.hub": 2, "bridge.qos": 1, "bridge.keepaliveS": 7})
    plan = build_plan(c)
    hub = brk_r.mosquitto_conf(plan, c, plan.brokers[1])
    head = ["# Rendered by mqttlab from stack 'distributed' (distributed). Edit the stack file, not this file.", "# broker2: 10.2.0.21:1999",
            "per_listener_settings false", "listener 1999 10.2.0.21", "allow_anonymous true", "persistence false", "log_dest stdout",
            "log_timestamp true", "log_timestamp_format %Y-%m-%dT%H:%M:%S", "log_type error", "log_type warning", "log_type notice",
            "log_type information", "log_type subscribe", "log_type unsubscribe", "connection_messages true", "sys_interval 2",
            "max_queued_messages 7", "max_inflight_messages 3", "max_queued_bytes 9", "memory_limit 11"]
    assert hub.splitlines()[: len(head)] == head
    # the bridge leaves from the hub's own address: one address pair per bridge, which is what a bridge cut drops
    bridge = ["", "# bridge broker2 -> broker1", "connection broker2-broker1", "address 10.2.0.20:1999", "bridge_bind_address 10.2.0.21",
              "remote_clientid mqttlab-bridge-distributed-broker2-broker1", "local_clientid mqttlab-bridge-distributed-broker2-broker1-local",
              "topic # both 1", "try_private true", "cleansession false", "bridge_protocol_version mqttv311", "start_type automatic",
              "restart_timeout 1 10", "keepalive_interval 7", "notifications true",
              "notification_topic $SYS/broker/connection/broker2-broker1/state"]
    assert hub.splitlines()[len(head):] == bridge + [b.replace("broker1", "broker3").replace("10.2.0.20", "10.2.0.22") for b in bridge]
    leaf = brk_r.mosquitto_conf(plan, c, plan.brokers[0])
    assert leaf.splitlines() == [h.replace("broker2", "broker1").replace("10.2.0.21", "10.2.0.20") for h in head] and leaf.endswith("11\n")
    # log types come from brokers.logTypes, in the stack file's order, replacing the default six
    only = cfg(**{"brokers.logTypes": ["warning", "all"]})
    lines = brk_r.mosquitto_conf(build_plan(only), only, build_plan(only).brokers[0]).splitlines()
    assert [x for x in lines if x.startswith("log_type")] == ["log_type warning", "log_type all"]
    assert lines[lines.index("log_type all") + 1] == "connection_messages true"
    # the bridge keepalive stays Mosquitto's own 60 s (the reference's) unless the stack says otherwise
    default = cfg()
    assert default.bridge.keepalive == 60
    assert [x for x in brk_r.mosquitto_conf(build_plan(default), default, build_plan(default).brokers[0]).splitlines()
            if x.startswith("keepalive_interval")] == ["keepalive_interval 60"] * 2


def test_secured_brokers_refuse_anonymous_clients_and_their_bridges_authenticate() -> None:
    """mtls on the lab (files in a local folder): TLS port, password and ACL files, certificates,
    client certificates as user names; each hub bridge logs in with its own user and checks the
    remote's certificate against the run's CA."""
    c = cfg(**{"security": {"mode": "mtls", "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"}, "scenario": {"topicLayout": "per-publisher"},
               "bridge.hub": 2})
    plan = build_plan(c)
    with pytest.raises(ValueError, match="security mode mtls needs the run's material"):
        brk_r.mosquitto_conf(plan, c, plan.brokers[1])
    m = security.generate(plan, c.security)
    hub = brk_r.mosquitto_conf(plan, c, plan.brokers[1], m, root="/run/x").splitlines()
    assert hub[1:16] == ["# broker2: 10.2.0.21:8883", "per_listener_settings false", "listener 8883 10.2.0.21", "user root",
                         "allow_anonymous false", "password_file /run/x/broker2/passwd", "acl_file /run/x/broker2/acl",
                         "cafile /run/x/broker2/ca.crt", "certfile /run/x/broker2/server.crt", "keyfile /run/x/broker2/server.key",
                         "tls_version tlsv1.2", "ciphers ECDHE-ECDSA-AES128-GCM-SHA256", "require_certificate true",
                         "use_identity_as_username true", "persistence false"]
    link = hub[hub.index("# bridge broker2 -> broker3"):]
    assert link[2:5] == ["address 10.2.0.22:8883", "bridge_bind_address 10.2.0.21", "remote_clientid mqttlab-bridge-distributed-broker2-broker3"]
    assert link[6] == "topic bench/test/+ both 2" and "topic # both 2" not in hub
    assert link[-7:] == ["remote_username bridge-broker2-broker3", f"remote_password {m.passwords['bridge-broker2-broker3']}",
                         "bridge_cafile /run/x/broker2/ca.crt", "bridge_tls_version tlsv1.2", "bridge_insecure false",
                         "bridge_certfile /run/x/broker2/bridge-broker2-broker3.crt", "bridge_keyfile /run/x/broker2/bridge-broker2-broker3.key"]
    # password only, in a container (already the mosquitto user): no TLS lines, the plain port, no user switch
    pw = cfg(**{"security": {"mode": "password"}, "brokers.port": 1999})
    plan = build_plan(pw)
    leaf = brk_r.mosquitto_conf(plan, pw, plan.brokers[0], security.generate(plan, pw.security)).splitlines()
    assert leaf[2:8] == ["per_listener_settings false", "listener 1999 10.2.0.20", "allow_anonymous false",
                         "password_file /mosquitto/config/broker1/passwd", "acl_file /mosquitto/config/broker1/acl", "persistence false"]


def test_compose_file_caps_each_broker_on_its_own_address() -> None:
    c = cfg(**{"brokers.cpus": 0.5, "brokers.memoryMb": 256})
    plan = build_plan(c)
    text = brk_r.compose_file(plan, c, parent_interface="ens4")
    assert text.startswith("# Rendered by mqttlab from stack 'distributed' (distributed).")
    doc = yaml.safe_load(text)
    assert list(doc["services"]) == ["broker1", "broker2", "broker3"]
    b2 = doc["services"]["broker2"]
    assert b2 == {"image": "eclipse-mosquitto:2.0.20", "container_name": "mqttlab-broker2", "restart": "unless-stopped", "cpus": 0.5,
                  "mem_limit": "256m", "volumes": ["./broker2/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro"],
                  "networks": {"brokernet": {"ipv4_address": "10.2.0.21"}},
                  "logging": {"driver": "json-file", "options": {"max-size": "200m", "max-file": "3"}}}
    # L3 mode, no gateway: Azure delivers by IP to the NIC, so the parent routes to its children (docs/azure.md, "ipvlan on Azure")
    assert doc["networks"] == {"brokernet": {"driver": "ipvlan", "driver_opts": {"parent": "ens4", "ipvlan_mode": "l3"},
                                             "ipam": {"config": [{"subnet": "10.2.0.0/24"}]}}}
    assert "name" not in doc and yaml.safe_load(brk_r.compose_file(plan, c))["networks"]["brokernet"]["driver_opts"]["parent"] == "eth0"
    # with security on, the whole broker folder (config, certificates, password and ACL files) is mounted, read-only
    s = cfg(**{"security.mode": "password"})
    mounted = yaml.safe_load(brk_r.compose_file(build_plan(s), s))["services"]["broker2"]["volumes"]
    assert mounted == ["./broker2:/mosquitto/config:ro"]


# --------------------------------------------------------------------------- plan


def test_plan_hosts_gateways_bridges_and_weights() -> None:
    c = cfg("distributed", **{"bridge.hub": 3, "balancer.weights": [1, 2, 3], "network.clientHostOffset": 7, "brokers.port": 1999})
    plan = build_plan(c)
    assert [(h.name, h.role, h.subnet, h.address, h.gateway) for h in plan.hosts] == [
        ("brokers", "brokers", "10.2.0.0/24", "10.2.0.10", "10.2.0.1"),
        ("ipvs1", "balancer", "10.3.0.0/24", "10.3.0.7", "10.3.0.1"),
        ("ipvs2", "balancer", "10.4.0.0/24", "10.4.0.7", "10.4.0.1")]
    assert [(b.name, b.index, b.host, b.address, b.port) for b in plan.brokers] == [
        ("broker1", 1, "brokers", "10.2.0.20", 1999), ("broker2", 2, "brokers", "10.2.0.21", 1999), ("broker3", 3, "brokers", "10.2.0.22", 1999)]
    assert [(x.name, x.local, x.remote, x.remote_address, x.remote_port, x.qos) for x in plan.bridges] == [
        ("broker3-broker1", "broker3", "broker1", "10.2.0.20", 1999, 2), ("broker3-broker2", "broker3", "broker2", "10.2.0.21", 1999, 2)]
    bal = plan.balancers[0]
    assert [(r.broker, r.address, r.port, r.weight) for r in bal.real_servers] == [
        ("broker1", "10.2.0.20", 1999, 1), ("broker2", "10.2.0.21", 1999, 2), ("broker3", "10.2.0.22", 1999, 3)]
    assert (bal.port, bal.forwarding, bal.timeout_tcp, bal.timeout_tcpfin, bal.timeout_udp) == (1883, "nat", 900, 120, 300)
    assert [h.name for h in plan.balancer_hosts] == ["ipvs1", "ipvs2"] and plan.balancer_on("brokers") is None
    assert plan.host("ipvs2").address == "10.4.0.7" and plan.sysctls("brokers") == {}
    assert (plan.stack, plan.topology, plan.vnet, plan.broker_cpus, plan.broker_memory_mb, plan.broker_image) == (
        "distributed", "distributed", "10.0.0.0/13", 0.25, 128, "eclipse-mosquitto:2.0.20")
    assert plan.to_dict()["brokers"][2] == {"name": "broker3", "index": 3, "host": "brokers", "address": "10.2.0.22", "port": 1999}
    assert build_plan(cfg(**{"bridge.layout": "none"})).bridges == ()


def test_renumber_moves_every_address_and_refuses_what_does_not_fit() -> None:
    c = cfg("centralized", **{"network.brokerSubnet": "10.2.0.0/25", "network.brokerHostAddress": "10.2.0.5",
                              "brokers.addresses": ["10.2.0.30", "10.2.0.31", "10.2.0.32"]})
    r = renumber(c)
    assert str(r.network.vnet_cidr) == "198.18.0.0/15" and str(r.network.broker_subnet) == "198.18.0.0/25"
    assert [str(s) for s in r.network.client_subnets] == ["198.18.1.0/24", "198.18.2.0/24"]  # aligned to their own size
    assert str(r.network.broker_host_address) == "198.18.0.5" and r.network.client_host_offset == 10
    assert [str(a) for a in r.brokers.addresses] == ["198.18.0.30", "198.18.0.31", "198.18.0.32"]
    big = parse_config({"mqttlab:network": {"vnetCidr": "10.0.0.0/8", "brokerSubnet": "10.2.0.0/16", "clientSubnets": ["10.3.0.0/16", "10.4.0.0/16"]}}, "x")
    with pytest.raises(ConfigError, match="do not fit in 198.18.0.0/15"):
        renumber(big)
    two = parse_config({"mqttlab:network": {"vnetCidr": "10.0.0.0/8", "brokerSubnet": "10.2.0.0/16", "clientSubnets": ["10.3.0.0/16"]}}, "x")
    assert [str(s) for s in (renumber(two).network.broker_subnet, *renumber(two).network.client_subnets)] == ["198.18.0.0/16", "198.19.0.0/16"]


# --------------------------------------------------------------------------- configuration boundaries


def raw(**sections: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(dict(yaml.safe_load(stack_file("distributed", ROOT).read_text())["config"]))
    for name, values in sections.items():
        doc.setdefault(f"mqttlab:{name}", {}).update(values)
    return doc


@pytest.mark.parametrize(("section", "values"), [
    ("brokers", {"count": 1, "addresses": ["10.2.0.20"]}), ("brokers", {"count": 64, "addresses": None}),
    ("brokers", {"port": 1}), ("brokers", {"port": 65535}), ("brokers", {"memoryMb": 16}), ("brokers", {"cpus": 0.01}),
    ("brokers", {"maxQueuedMessages": 0}), ("brokers", {"maxInflightMessages": 65535}), ("brokers", {"sysInterval": 1}),
    ("brokers", {"sysInterval": 3600}), ("brokers", {"image": "eclipse-mosquitto:2.0.18-openssl"}),
    ("bridge", {"hub": 3}), ("bridge", {"qos": 2}), ("balancer", {"weights": [0, 0, 65535]}),
    ("balancer", {"timeouts": {"tcp": 1, "tcpfin": 1, "udp": 1}}), ("balancer", {"port": 65535}),
    ("network", {"brokerHostAddress": "10.2.0.4"}), ("network", {"brokerHostAddress": "10.2.0.254"}),
    ("network", {"clientHostOffset": 4}), ("network", {"clientHostOffset": 254}),
    ("network", {"brokerSubnet": "10.2.0.0/29", "brokerHostAddress": "10.2.0.4", "addresses": None}),
])
def test_the_edges_of_every_range_are_accepted(section: str, values: dict[str, Any]) -> None:
    if section == "network" and "addresses" in values:
        values = dict(values)
        values.pop("addresses")
        doc = raw(network=values, brokers={"count": 1, "addresses": ["10.2.0.5"]}, balancer={"weights": [1]}, bridge={"hub": 1})
    else:
        doc = raw(**{section: values})
        if section == "brokers" and values.get("count") is not None:
            doc["mqttlab:balancer"]["weights"] = [1] * values["count"]
            doc["mqttlab:brokers"]["addresses"] = values.get("addresses")
            if values["count"] == 64:
                doc["mqttlab:network"]["brokerSubnet"] = "10.2.0.0/24"
    c = parse_config(doc, "distributed")
    got = {"brokers": c.brokers, "bridge": c.bridge, "balancer": c.balancer, "network": c.network}[section]
    assert got is not None


@pytest.mark.parametrize(("section", "values", "key", "rule"), [
    ("brokers", {"count": 65}, "mqttlab:brokers.count", "<= 64"),
    ("brokers", {"port": 0}, "mqttlab:brokers.port", ">= 1"),
    ("brokers", {"memoryMb": 15}, "mqttlab:brokers.memoryMb", ">= 16"),
    ("brokers", {"maxInflightMessages": 65536}, "mqttlab:brokers.maxInflightMessages", "<= 65535"),
    ("brokers", {"maxQueuedBytes": -1}, "mqttlab:brokers.maxQueuedBytes", ">= 0"),
    ("brokers", {"memoryLimit": -1}, "mqttlab:brokers.memoryLimit", ">= 0"),
    ("brokers", {"sysInterval": 0}, "mqttlab:brokers.sysInterval", ">= 1"),
    ("brokers", {"sysInterval": 3601}, "mqttlab:brokers.sysInterval", "<= 3600"),
    ("brokers", {"cpus": True}, "mqttlab:brokers.cpus", "must be a number"),
    ("brokers", {"port": True}, "mqttlab:brokers.port", "whole number"),
    ("brokers", {"image": "eclipse-mosquitto"}, "mqttlab:brokers.image", "2.0.x"),
    ("brokers", {"image": "eclipse-mosquitto:2.0.x"}, "mqttlab:brokers.image", "2.0.x"),
    ("brokers", {"addresses": ["10.2.0.20", "10.2.0.21", "10.2.0.3"]}, "mqttlab:brokers.addresses[2]", "usable address"),
    ("brokers", {"addresses": ["10.2.0.20", "10.2.0.21", "10.2.0.255"]}, "mqttlab:brokers.addresses[2]", "usable address"),
    ("brokers", {"addresses": ["10.2.0.20", "10.2.0.21", "nope"]}, "mqttlab:brokers.addresses[2]", "IPv4 address"),
    ("brokers", {"addresses": "10.2.0.20"}, "mqttlab:brokers.addresses", "exactly count=3"),
    ("bridge", {"hub": 0}, "mqttlab:bridge.hub", ">= 1"),
    ("bridge", {"qos": 3}, "mqttlab:bridge.qos", "<= 2"),
    ("balancer", {"weights": [1, 1, 65536]}, "mqttlab:balancer.weights[2]", "<= 65535"),
    ("balancer", {"weights": [1, -1, 1]}, "mqttlab:balancer.weights[1]", ">= 0"),
    ("balancer", {"weights": "1,1,1"}, "mqttlab:balancer.weights", "list of 3 weights"),
    ("balancer", {"port": 65536}, "mqttlab:balancer.port", "<= 65535"),
    ("balancer", {"timeouts": {"tcpfin": 0}}, "mqttlab:balancer.timeouts.tcpfin", ">= 1"),
    ("balancer", {"timeouts": {"udp": 0}}, "mqttlab:balancer.timeouts.udp", ">= 1"),
    ("network", {"brokerHostAddress": "10.2.0.3"}, "mqttlab:network.brokerHostAddress", "offset 4 or more"),
    ("network", {"brokerHostAddress": "10.2.0.255"}, "mqttlab:network.brokerHostAddress", "not broadcast"),
    ("network", {"brokerHostAddress": "10.9.0.10"}, "mqttlab:network.brokerHostAddress", "usable address"),
    ("network", {"brokerHostAddress": "x"}, "mqttlab:network.brokerHostAddress", "IPv4 address"),
    ("network", {"clientHostOffset": 3}, "mqttlab:network.clientHostOffset", ">= 4"),
    ("network", {"clientHostOffset": 255}, "mqttlab:network.clientHostOffset", "clientSubnets[0]"),
    ("network", {"clientSubnets": "10.3.0.0/24"}, "mqttlab:network.clientSubnets", "non-empty list"),
    ("network", {"brokerSubnet": "10.2.0.0/30"}, "mqttlab:network.brokerSubnet", "/29 or larger"),
    ("network", {"clientSubnets": ["10.3.0.0/24", "10.2.0.0/24"]}, "mqttlab:network.clientSubnets[1]", "must not overlap brokerSubnet 10.2.0.0/24"),
    ("network", {"clientSubnets": ["10.3.0.0/24", "10.3.0.0/25"]}, "mqttlab:network.clientSubnets[1]", "must not overlap clientSubnets[0] 10.3.0.0/24"),
    ("network", {"clientSubnets": ["10.3.0.0/24", "10.8.0.0/24"]}, "mqttlab:network.clientSubnets[1]", "inside vnetCidr 10.0.0.0/13"),
])
def test_one_past_every_edge_is_refused_with_the_rule(section: str, values: dict[str, Any], key: str, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw(**{section: values}), "distributed")
    assert info.value.key == key and rule in info.value.allowed


def test_values_come_from_the_file_and_defaults_fill_the_rest() -> None:
    c = parse_config({"mqttlab:brokers": {"cpus": 2, "memoryMb": 64, "image": "eclipse-mosquitto:2.0.18", "maxQueuedBytes": 5,
                                          "memoryLimit": 6, "sysInterval": 7, "maxInflightMessages": 8, "maxQueuedMessages": 9, "port": 1999},
                      "mqttlab:balancer": {"forwarding": "nat", "timeouts": {"tcp": 10}}, "mqttlab:bridge": {"layout": "none", "qos": 0}}, "centralized")
    b = c.brokers
    assert (b.cpus, b.memory_mb, b.image, b.max_queued_bytes, b.memory_limit, b.sys_interval, b.max_inflight_messages,
            b.max_queued_messages, b.port) == (2.0, 64, "eclipse-mosquitto:2.0.18", 5, 6, 7, 8, 9, 1999)
    assert isinstance(b.cpus, float)
    assert c.topology == "centralized" and c.stack == "centralized"  # the stack's name is its topology when it names one
    assert (c.balancer.timeout_tcp, c.balancer.timeout_tcpfin, c.balancer.timeout_udp, c.balancer.weights, c.balancer.port) == (10, 120, 300, (1, 1, 1), 1883)
    assert (c.bridge.layout, c.bridge.hub, c.bridge.qos) == ("none", 1, 0)  # no bridge: its qos may be below the scenario's
    n = c.network
    assert (str(n.vnet_cidr), str(n.broker_subnet), str(n.broker_host_address), n.client_host_offset) == ("10.0.0.0/13", "10.2.0.0/24", "10.2.0.10", 10)
    assert str(parse_config({"mqttlab:network": {"brokerSubnet": "10.5.0.0/24"}}, "x").network.broker_host_address) == "10.5.0.10"
    assert [str(a) for a in parse_config({"mqttlab:network": {"brokerSubnet": "10.5.0.0/24"}}, "x").brokers.addresses][0] == "10.5.0.20"
    assert parse_config({"mqttlab:scenario": None, "mqttlab:brokers": None}, "x").brokers.count == 3
    assert parse_config({"mqttlab:brokers": {"port": None}}, "x").brokers.port == 1883  # an empty key is its default


def test_overrides_set_top_level_keys_skip_none_and_refuse_non_mappings() -> None:
    c = cfg("distributed")
    assert c.with_overrides({"topology": "centralized", "scenario.qos": None}).topology == "centralized"
    assert c.with_overrides({"scenario.qos": None}).scenario.qos == c.scenario.qos
    with pytest.raises(ConfigError, match="must be a mapping") as info:
        parse_config({**c.raw, "mqttlab:brokers": "x"}, "d").with_overrides({})
    assert info.value.key == "mqttlab:brokers"
    bad = parse_config(c.raw, "d")
    object.__setattr__(bad, "raw", {**c.raw, "mqttlab:brokers": ["x"]})
    with pytest.raises(ConfigError, match="must be a mapping") as info:
        bad.with_overrides({"brokers.count": 2})
    assert c.with_overrides({"brokers.count": 1, "brokers.addresses": ["10.2.0.20"], "balancer.weights": [1]}).raw["mqttlab:brokers"]["count"] == 1
    assert c.raw["mqttlab:brokers"].get("count") != 1  # the original is left as it was


def test_stack_files_that_are_not_a_mapping_are_refused(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.a.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_stack("a", tmp_path)
    (tmp_path / "Pulumi.b.yaml").write_text("config: [\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_stack("b", tmp_path)
    (tmp_path / "Pulumi.c.yaml").write_text("")
    assert load_stack("c", tmp_path).topology == "distributed"
    with pytest.raises(ConfigError, match="'config:' mapping"):
        parse_config(["x"], "d")  # type: ignore[arg-type]
    assert stack_file("q") == Path.cwd() / "Pulumi.q.yaml"


# --------------------------------------------------------------------------- scenario


def test_messages_split_over_publishers_and_per_publisher_topics() -> None:
    s = Scenario(publishers=3, subscribers=5, messages=10, topic="t", topic_layout="per-publisher")
    assert [s.messages_of(p) for p in range(3)] == [4, 3, 3] and s.total_messages == 10
    assert [s.topic_of(p) for p in range(3)] == ["t/0", "t/1", "t/2"]
    assert [s.subscription_of(i) for i in range(5)] == [("t/0", 0), ("t/1", 1), ("t/2", 2), ("t/0", 0), ("t/1", 1)]
    assert s.expected_deliveries() == 4 + 3 + 3 + 4 + 3 and s.expected_deliveries([1, 2]) == 6
    assert s.planned_pairs() == [(0, 0, 4), (1, 1, 3), (2, 2, 3), (3, 0, 4), (4, 1, 3)]
    shared = Scenario(publishers=2, subscribers=2, messages=5, topic="t")
    assert shared.topic_of(1) == "t" and shared.subscription_of(1) == ("t", None)
    assert shared.expected_deliveries() == 10 and shared.planned_pairs() == [(0, 0, 3), (0, 1, 2), (1, 0, 3), (1, 1, 2)]
    each = Scenario(publishers=3, subscribers=1, messages=7, messages_per_publisher=True)
    assert [each.messages_of(p) for p in range(3)] == [7, 7, 7] and each.expected_deliveries() == 21


def test_scenario_round_trips_through_cli_options_and_manifests() -> None:
    s = Scenario(publishers=3, messages=9, messages_per_publisher=True, qos=2, clean_session=False, drain_s=1.5)
    args = s.cli_args()
    assert args[:6] == ["--publishers", "3", "--subscribers", "240", "--messages", "9"]
    assert args[args.index("--clean-session") + 1] == "false" and args[args.index("--messages-per-publisher") + 1] == "true"
    assert len(args) == 2 * len(CLI_NAMES)
    parsed = dict(zip(args[::2], args[1::2], strict=True))
    assert parsed["--drain-s"] == "1.5" and parsed["--qos"] == "2"
    assert Scenario.from_dict({**s.to_dict(), "unknown": 1}) == s and Scenario.from_dict({"qos": 0}) == Scenario(qos=0)


def test_scenario_edges() -> None:
    ok = {"publishers": 1, "subscribers": 0, "messages": 1, "intervalMs": 0, "payloadBytes": 28, "connectRate": 1, "keepalive": 5,
          "drainS": 0, "timeLimitS": 0.5, "mqttVersion": 5.0}
    s = scenario_from_mapping(ok, "p.")
    assert (s.publishers, s.subscribers, s.payload_bytes, s.keepalive, s.mqtt_version, s.drain_s, s.time_limit_s) == (1, 0, 28, 5, "5", 0.0, 0.5)
    assert isinstance(s.drain_s, float) and isinstance(scenario_from_mapping({"timeLimitS": 9}, "p.").time_limit_s, float)
    assert scenario_from_mapping({"mqttVersion": "5.0", "keepalive": 65535, "publishers": 100_000, "messages": 100_000,
                                  "intervalMs": 3_600_000}, "p.").mqtt_version == "5"
    assert scenario_from_mapping({"qos": None}, "p.").qos == 1
    bad: list[tuple[dict[str, Any], str, str]] = [({"publishers": 100_001}, "p.publishers", "between 1 and 100000"), ({"subscribers": -1}, "p.subscribers", "between 0 and 100000"),
           ({"messages": 0}, "p.messages", ">= 1"), ({"intervalMs": 3_600_001}, "p.intervalMs", "between"),
           ({"payloadBytes": 27}, "p.payloadBytes", "between 28"), ({"connectRate": 0}, "p.connectRate", ">= 1"),
           ({"keepalive": 4}, "p.keepalive", "between 5 and 65535"), ({"keepalive": 65536}, "p.keepalive", "between 5"),
           ({"qos": True}, "p.qos", "0, 1 or 2"), ({"publishers": 2.0}, "p.publishers", "whole number"),
           ({"topicLayout": "tree"}, "p.topicLayout", "shared or per-publisher"), ({"topic": ""}, "p.topic", "without wildcards"),
           ({"topic": "a+"}, "p.topic", "wildcards"), ({"cleanSession": "yes"}, "p.cleanSession", "true or false"),
           ({"messagesPerPublisher": 1}, "p.messagesPerPublisher", "true or false"), ({"drainS": -1}, "p.drainS", ">= 0"),
           ({"drainS": True}, "p.drainS", "seconds"), ({"timeLimitS": "9"}, "p.timeLimitS", "seconds"),
           ({"timeLimitS": 5, "drainS": 5}, "p.timeLimitS", "must exceed drainS (5.0)"),
           ({"publishers": 5, "messages": 4}, "p.messages", "must be >= publishers (5)"), ({"mqttVersion": 4}, "p.mqttVersion", "3.1.1 or 5")]
    for values, key, rule in bad:
        with pytest.raises(ConfigError) as info:
            scenario_from_mapping(values, "p.")
        assert info.value.key == key and rule in info.value.allowed, values
    assert scenario_from_mapping({"publishers": 5, "messages": 4, "messagesPerPublisher": True}, "p.").total_messages == 20
    with pytest.raises(ConfigError) as info:
        scenario_from_mapping({"qos": 5}, "p.", names={"qos": "--qos"})
    assert info.value.key == "--qos"


# --------------------------------------------------------------------------- every refusal, word for word


def refusal(fn: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn()
    return info.value


def test_each_refusal_names_key_value_and_rule_exactly(tmp_path: Path) -> None:
    base = cfg("distributed")
    cases: list[tuple[Any, str, Any]] = [
        (lambda: parse_config(["x"], "d"), "config config=['x'] is invalid: the stack file must have a 'config:' mapping", ["x"]),  # type: ignore[arg-type]
        (lambda: parse_config({"mqttlab:brokers": "x"}, "d"), "config mqttlab:brokers='x' is invalid: must be a mapping of settings", "x"),
        (lambda: parse_config(raw(brokers={"count": "three"}), "d"), "config mqttlab:brokers.count='three' is invalid: must be a whole number", "three"),
        (lambda: parse_config(raw(brokers={"cpus": "a"}), "d"), "config mqttlab:brokers.cpus='a' is invalid: must be a number", "a"),
        (lambda: parse_config(raw(brokers={"cpus": 0}), "d"), "config mqttlab:brokers.cpus=0 is invalid: must be > 0", 0),
        (lambda: parse_config(raw(balancer={"scheduler": "x"}), "d"),
         "config mqttlab:balancer.scheduler='x' is invalid: must be one of rr, wrr, lc, wlc, sh, mh", "x"),
        (lambda: parse_config(raw(network={"brokerSubnet": "10.2.0.0/30"}), "d"),
         "config mqttlab:network.brokerSubnet='10.2.0.0/30' is invalid: prefix must be /29 or larger to hold hosts", "10.2.0.0/30"),
        (lambda: parse_config(raw(network={"brokerHostAddress": "x"}), "d"),
         "config mqttlab:network.brokerHostAddress='x' is invalid: must be an IPv4 address", "x"),
        (lambda: parse_config(raw(network={"clientSubnets": "a"}), "d"),
         "config mqttlab:network.clientSubnets='a' is invalid: must be a non-empty list of CIDRs, one per balancer/client host", "a"),
        (lambda: parse_config(raw(network={"clientSubnets": ["10.3.0.0/24", "10.4.0.0/30"]}), "d"),
         "config mqttlab:network.clientSubnets[1]='10.4.0.0/30' is invalid: prefix must be /29 or larger to hold hosts", "10.4.0.0/30"),
        (lambda: parse_config(raw(network={"clientHostOffset": 255}), "d"),
         "config mqttlab:network.clientHostOffset=255 is invalid: must be a usable offset inside clientSubnets[0] 10.3.0.0/24", 255),
        (lambda: parse_config(raw(brokers={"addresses": ["10.2.0.20", "10.2.0.20", "10.2.0.22"]}), "d"),
         "config mqttlab:brokers.addresses[1]='10.2.0.20' is invalid: must be unique and differ from brokerHostAddress", "10.2.0.20"),
        (lambda: parse_config(raw(brokers={"image": "eclipse-mosquitto:latest"}), "d"),
         "config mqttlab:brokers.image='eclipse-mosquitto:latest' is invalid: must pin a Mosquitto 2.0.x tag, e.g. eclipse-mosquitto:2.0.20 "
         "(never latest)", "eclipse-mosquitto:latest"),
        (lambda: parse_config(raw(balancer={"weights": [0, 0, 0]}), "d"),
         "config mqttlab:balancer.weights=[0, 0, 0] is invalid: at least one broker needs a weight > 0", [0, 0, 0]),
        (lambda: renumber(parse_config({"mqttlab:network": {"vnetCidr": "10.0.0.0/8", "brokerSubnet": "10.2.0.0/16",
                                                            "clientSubnets": ["10.3.0.0/16", "10.4.0.0/16"]}}, "x")),
         "config network='10.4.0.0/16' is invalid: the plan's subnets do not fit in 198.18.0.0/15 for the lab; use --keep-addresses", "10.4.0.0/16"),
        (lambda: scenario_from_mapping({"color": "blue"}, "p."),
         "config p.color='blue' is invalid: is not a scenario setting; known: " + ", ".join(["publishers", "subscribers", "messages",
         "messagesPerPublisher", "qos", "intervalMs", "payloadBytes", "mqttVersion", "topicLayout", "topic", "connectRate", "keepalive",
         "cleanSession", "drainS", "timeLimitS", "reconnectMinMs", "reconnectMaxMs"]), "blue"),
        (lambda: scenario_from_mapping({"reconnectMinMs": 9}, "p."), "config p.reconnectMinMs=9 is invalid: must be between 10 and 600000", 9),
        (lambda: scenario_from_mapping({"reconnectMinMs": 300, "reconnectMaxMs": 299}, "p."),
         "config p.reconnectMaxMs=299 is invalid: must be between 300 and 600000", 299),
        (lambda: scenario_from_mapping({"publishers": 1.5}, "p."), "config p.publishers=1.5 is invalid: must be a whole number", 1.5),
        (lambda: scenario_from_mapping({"keepalive": 4}, "p."), "config p.keepalive=4 is invalid: must be between 5 and 65535", 4),
        (lambda: scenario_from_mapping({"messages": 0}, "p."), "config p.messages=0 is invalid: must be >= 1", 0),
        (lambda: scenario_from_mapping({"qos": 3}, "p."), "config p.qos=3 is invalid: must be 0, 1 or 2", 3),
        (lambda: scenario_from_mapping({"mqttVersion": "4"}, "p."), "config p.mqttVersion='4' is invalid: must be 3.1.1 or 5", "4"),
        (lambda: scenario_from_mapping({"topicLayout": "tree"}, "p."), "config p.topicLayout='tree' is invalid: must be shared or per-publisher", "tree"),
        (lambda: scenario_from_mapping({"topic": "a/#"}, "p."), "config p.topic='a/#' is invalid: must be a non-empty topic name without wildcards",
         "a/#"),
        (lambda: scenario_from_mapping({"cleanSession": "no"}, "p."), "config p.cleanSession='no' is invalid: must be true or false", "no"),
        (lambda: scenario_from_mapping({"drainS": -2}, "p."), "config p.drainS=-2.0 is invalid: must be a number of seconds >= 0", -2.0),
        (lambda: scenario_from_mapping({"payloadBytes": 256 * 1024 * 1024 + 1}, "p."),
         "config p.payloadBytes=268435457 is invalid: must be between 28 and 268435456", 268435457),
        # security
        (lambda: parse_config(raw(security={"mode": "tls1"}), "d"),
         "config mqttlab:security.mode='tls1' is invalid: must be one of none, password, tls, mtls", "tls1"),
        (lambda: parse_config(raw(security={"tlsVersion": "tlsv1.1"}), "d"),
         "config mqttlab:security.tlsVersion='tlsv1.1' is invalid: must be one of tlsv1.2, tlsv1.3", "tlsv1.1"),
        (lambda: parse_config(raw(security={"user": "x"}), "d"),
         "config mqttlab:security.user='x' is not a known setting: known in mqttlab:security: certDays, ciphers, ciphersTls13, mode, tlsPort, tlsVersion",
         "x"),
        (lambda: parse_config(raw(security={"ciphers": "AES 128"}), "d"),
         "config mqttlab:security.ciphers='AES 128' is invalid: must be an OpenSSL cipher list such as "
         "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305", "AES 128"),
        (lambda: parse_config(raw(security={"ciphersTls13": "A::B"}), "d"),
         "config mqttlab:security.ciphersTls13='A::B' is invalid: must be an OpenSSL cipher list such as "
         "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305", "A::B"),
        (lambda: parse_config(raw(security={"certDays": 826}), "d"), "config mqttlab:security.certDays=826 is invalid: must be <= 825", 826),
        (lambda: parse_config(raw(security={"tlsPort": 0}), "d"), "config mqttlab:security.tlsPort=0 is invalid: must be >= 1", 0),
        # the balancer's health check
        (lambda: parse_config(raw(balancer={"healthCheck": "mqtt"}), "d"),
         "config mqttlab:balancer.healthCheck='mqtt' is invalid: must be a mapping with type (none, mqtt, tcp), interval, retries, timeout", "mqtt"),
        (lambda: parse_config(raw(balancer={"healthCheck": {"port": 1, "delay": 2}}), "d"),  # the first unknown key, sorted
         "config mqttlab:balancer.healthCheck.delay=2 is not a known setting: known in mqttlab:balancer.healthCheck: interval, retries, timeout, type", 2),
        (lambda: parse_config(raw(balancer={"healthCheck": {"interval": 3600.5, "timeout": 1}}), "d"),
         "config mqttlab:balancer.healthCheck.interval=3600.5 is invalid: must be <= 3600 seconds", 3600.5),
        (lambda: parse_config(raw(balancer={"healthCheck": {"interval": 2, "timeout": 2.5}}), "d"),
         "config mqttlab:balancer.healthCheck.timeout=2.5 is invalid: must be <= interval (2.0): a check must end before the next one starts", 2.5),
        (lambda: parse_config(raw(balancer={"healthCheck": {"interval": 0}}), "d"),
         "config mqttlab:balancer.healthCheck.interval=0 is invalid: must be > 0", 0),
        (lambda: parse_config(raw(balancer={"healthCheck": {"type": "http"}}), "d"),
         "config mqttlab:balancer.healthCheck.type='http' is invalid: must be one of none, mqtt, tcp", "http"),
        (lambda: parse_config(raw(balancer={"healthCheck": {"retries": 101}}), "d"),
         "config mqttlab:balancer.healthCheck.retries=101 is invalid: must be <= 100", 101),
        # the brokers' log types: the analysis reads notice (connections) and warning (drops)
        (lambda: parse_config(raw(brokers={"logTypes": []}), "d"),
         "config mqttlab:brokers.logTypes=[] is invalid: must be a non-empty list of mosquitto log types (debug, error, warning, notice, "
         "information, subscribe, unsubscribe, websockets, none, all); the reference used [all]", []),
        (lambda: parse_config(raw(brokers={"logTypes": ["notice", "warn"]}), "d"),
         "config mqttlab:brokers.logTypes[1]='warn' is invalid: must be one of debug, error, warning, notice, information, subscribe, "
         "unsubscribe, websockets, none, all", "warn"),
        (lambda: parse_config(raw(brokers={"logTypes": ["error", "notice"]}), "d"),
         "config mqttlab:brokers.logTypes=['error', 'notice'] is invalid: must include notice and warning (connections and drop warnings, "
         "which the analysis reads), or be [all]", ["error", "notice"]),
        # faults, checked against this very plan (hub broker1 bridges to broker2 and broker3; the stack's time limit is 900 s)
        (lambda: parse_config({**raw(), "mqttlab:faults": "broker2:kill@5s"}, "d"),
         "config mqttlab:faults='broker2:kill@5s' is invalid: must be a list of faults like broker2:kill@5s", "broker2:kill@5s"),
        (lambda: parse_config({**raw(), "mqttlab:faults": ["broker2:kill@5s", "broker2:pause@5s"]}, "d"),
         "config mqttlab:faults[1]='broker2:pause@5s' is invalid: broker:pause needs a duration > 0, e.g. broker2:pause@5s+3s",
         "broker2:pause@5s"),
        (lambda: parse_config({**raw(), "mqttlab:faults": ["bridge:broker2-broker3:cut@1s+1s"]}, "d"),
         "config mqttlab:faults[0]='bridge:broker2-broker3:cut@1s+1s' is invalid: no bridge 'broker2-broker3' in this plan; "
         "bridges: broker1-broker2, broker1-broker3", "bridge:broker2-broker3:cut@1s+1s"),
        (lambda: parse_config({**raw(), "mqttlab:faults": ["broker1:kill@900s"]}, "d"),
         "config mqttlab:faults[0]='broker1:kill@900s' is invalid: starts after the run's time limit (900 s)", "broker1:kill@900s"),
        (lambda: parse_config({**raw(), "mqttlab:faults": ["broker3:pause@1s+2s", "broker3:restart@3s"]}, "d"),  # touching is overlapping
         "config mqttlab:faults[1]='broker3:restart@3s' is invalid: overlaps broker3:pause@1s+2s on the same broker", "broker3:restart@3s"),
    ]
    # one step inside each of those edges is accepted
    ok = parse_config({**raw(security={"certDays": 825, "tlsPort": 1}, balancer={"healthCheck": {"interval": 3600, "timeout": 3600, "retries": 100}}),
                       "mqttlab:faults": ["broker1:kill@899999ms", "broker3:pause@1s+2s", "broker3:restart@3001ms"]}, "d")
    assert [f.spec for f in ok.faults] == ["broker1:kill@899999ms", "broker3:pause@1s+2s", "broker3:restart@3001ms"]
    assert (ok.security.cert_days, ok.balancer.health_check.timeout) == (825, 3600)
    assert scenario_from_mapping({"reconnectMinMs": 10, "reconnectMaxMs": 10}, "p.").reconnect_max_ms == 10
    assert parse_config(raw(brokers={"logTypes": ["all"]}), "d").brokers.log_types == ("all",)
    e = refusal(lambda: load_stack("beta", tmp_path))
    assert (str(e), e.value) == (f"config stack='beta' is invalid: no file {tmp_path}/Pulumi.beta.yaml; known stacks here: none", "beta")
    (tmp_path / "Pulumi.a.yaml").write_text("- 1\n")
    (tmp_path / "Pulumi.b.yaml").write_text("config: [\n")
    cases += [(lambda: load_stack("a", tmp_path), f"config stack='{tmp_path}/Pulumi.a.yaml' is invalid: must be a YAML mapping with a 'config:' key",
               f"{tmp_path}/Pulumi.a.yaml")]
    for fn, text, value in cases:
        e = refusal(fn)
        assert (str(e), e.value) == (text, value)
    e = refusal(lambda: load_stack("b", tmp_path))
    assert (e.key, e.value) == ("stack", f"{tmp_path}/Pulumi.b.yaml") and str(e).startswith(f"config stack='{tmp_path}/Pulumi.b.yaml' is invalid: must be valid YAML (")
    assert str(refusal(lambda: load_stack("z", tmp_path))).endswith("known stacks here: a, b")
    bad = parse_config(base.raw, "d")
    object.__setattr__(bad, "raw", {**base.raw, "mqttlab:brokers": ["x"]})
    e = refusal(lambda: bad.with_overrides({"brokers.count": 2}))
    assert (str(e), e.value) == ("config mqttlab:brokers=['x'] is invalid: must be a mapping of settings", ["x"])


def test_more_edges_of_ports_queues_images_and_overrides() -> None:
    assert parse_config(raw(balancer={"port": 1}, brokers={"maxInflightMessages": 0}, bridge={"qos": 2}), "d").balancer.port == 1
    for section, values, key in (("balancer", {"port": 0}, "mqttlab:balancer.port"), ("brokers", {"maxInflightMessages": -1}, "mqttlab:brokers.maxInflightMessages"),
                                 ("bridge", {"qos": -1}, "mqttlab:bridge.qos"), ("brokers", {"port": 65536}, "mqttlab:brokers.port"),
                                 ("brokers", {"image": "2.0.5"}, "mqttlab:brokers.image"), ("brokers", {"image": "eclipse-mosquitto:2.0.x5"}, "mqttlab:brokers.image")):
        assert refusal(lambda s=section, v=values: parse_config(raw(**{s: v}), "d")).key == key
    assert parse_config(raw(brokers={"image": "registry.example:5000/eclipse-mosquitto:2.0.20"}), "d").brokers.image.endswith(":2.0.20")
    d = parse_config({}, "x").brokers
    assert (d.image, d.max_queued_bytes, d.memory_limit, d.sys_interval, d.port, d.max_inflight_messages) == ("eclipse-mosquitto:2.0.20", 0, 0, 1, 1883, 20)
    # overrides after a None or a top-level key still apply; a section missing from the file is created
    c = cfg("distributed").with_overrides({"scenario.qos": None, "topology": "centralized", "balancer.scheduler": "rr", "scenario.keepalive": 30})
    assert (c.topology, c.balancer.scheduler, c.scenario.keepalive) == ("centralized", "rr", 30)
    assert parse_config({}, "x").with_overrides({"brokers.cpus": 1.5}).brokers.cpus == 1.5
    assert "Bench/T" in Scenario(topic="Bench/T").cli_args() and "XYZ" == scenario_from_mapping({"topic": "XYZ"}, "p.").topic
    assert scenario_from_mapping({"payloadBytes": 256 * 1024 * 1024}, "p.").payload_bytes == 268435456
    plan = build_plan(cfg("centralized"))
    assert [(c.host, c.address, c.target_host, c.target) for c in plan.clients] == [("ipvs1", "10.3.0.10", "ipvs1", "10.3.0.10:1883"),
                                                                                 ("ipvs2", "10.4.0.10", "ipvs1", "10.3.0.10:1883")]
    plan = build_plan(cfg("distributed"))
    assert [(c.host, c.address, c.target_host, c.target) for c in plan.clients] == [("ipvs1", "10.3.0.10", "ipvs1", "10.3.0.10:1883"),
                                                                                 ("ipvs2", "10.4.0.10", "ipvs2", "10.4.0.10:1883")]
    c2 = cfg()
    svc = yaml.safe_load(brk_r.compose_file(build_plan(c2), c2))["services"]["broker1"]
    assert list(svc) == ["image", "container_name", "restart", "cpus", "mem_limit", "volumes", "networks", "logging"]  # as written, not sorted
