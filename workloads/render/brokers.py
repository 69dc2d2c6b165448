"""Renderers for the broker cluster: plan -> ``mosquitto.conf`` per broker and the compose file.

Pure functions: the same text is written by ``mqttlab render``, started by the local lab and
shipped to the Azure broker VM.
"""

from __future__ import annotations

import yaml

from workloads.describe.config import ExperimentConfig
from workloads.describe.names import container
from workloads.describe.plan import Broker, Plan
from workloads.render import security

HEADER = "# Rendered by mqttlab from stack '{stack}' ({topology}). Edit the stack file, not this file.\n"

def mosquitto_conf(plan: Plan, cfg: ExperimentConfig, broker: Broker, material: security.Material | None = None,
                   root: str = security.CONTAINER_DIR) -> str:
    """``log_type`` lines come from ``brokers.logTypes`` (config.py says why the default is not the
    reference's ``all``); ``root`` is where each broker's folder (passwd, acl, certificates) is seen
    by Mosquitto."""
    b = cfg.brokers
    log_types = b.log_types
    secured = cfg.security.enabled
    if secured and material is None:
        raise ValueError(f"security mode {cfg.security.mode} needs the run's material (workloads.render.security.generate)")
    lines = [
        HEADER.format(stack=plan.stack, topology=plan.topology).rstrip("\n"),
        f"# {broker.name}: {broker.address}:{broker.port}",
        "per_listener_settings false",
        f"listener {broker.port} {broker.address}",
        *(security.listener_lines(cfg, broker, root) if secured else ["allow_anonymous true"]),
        "persistence false",
        "log_dest stdout",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        *(f"log_type {t}" for t in log_types),
        "connection_messages true",
        f"sys_interval {b.sys_interval}",
        f"max_queued_messages {b.max_queued_messages}",
        f"max_inflight_messages {b.max_inflight_messages}",
        f"max_queued_bytes {b.max_queued_bytes}",
        f"memory_limit {b.memory_limit}",
    ]
    for link in plan.bridges:
        if link.local != broker.name:
            continue
        lines += [
            "",
            f"# bridge {link.local} -> {link.remote}",
            f"connection {link.name}",
            f"address {link.remote_address}:{link.remote_port}",
            # leave from the hub's own address, also where brokers share a host: a bridge is then
            # one address pair, which is what a bridge cut (fault injection) drops
            f"bridge_bind_address {broker.address}",
            f"remote_clientid {link.remote_clientid}",
            f"local_clientid {link.remote_clientid}-local",
            *(security.bridge_topics(cfg, link.qos) if secured else [f"topic # both {link.qos}"]),
            "try_private true",
            "cleansession false",
            "bridge_protocol_version mqttv311",
            "start_type automatic",
            "restart_timeout 1 10",
            f"keepalive_interval {cfg.bridge.keepalive}",
            "notifications true",
            f"notification_topic $SYS/broker/connection/{link.name}/state",
        ]
        if secured:
            assert material is not None
            lines += security.bridge_lines(cfg, link, root, material)
    return "\n".join(lines) + "\n"


def compose_file(plan: Plan, cfg: ExperimentConfig, parent_interface: str = "eth0") -> str:
    """Docker compose for the broker host: one capped service per broker on its own address.

    ipvlan gives each container a VNet address of its own that is a secondary IP configuration of
    the NIC. L3 mode, not L2: Azure's SDN does not give L2 semantics (no ARP/broadcast between
    endpoints; it delivers by IP to the NIC that owns the address), so the parent interface must
    route by IP to its children; L3 mode does that and needs no gateway (the children's default
    route is the parent). Source: J. Moreno (Microsoft), "IPvlan with Docker in Azure",
    blog.cloudtrooper.net, 2023-05-10. See the README's "ipvlan on Azure".
    """
    host = plan.host("brokers")
    services = {}
    for br in plan.brokers:
        services[br.name] = {
            "image": plan.broker_image,
            "container_name": container(br.name),
            "restart": "unless-stopped",
            "cpus": plan.broker_cpus,
            "mem_limit": f"{plan.broker_memory_mb}m",
            # secured: the whole folder (passwd, acl, certificates) where mosquitto.conf names it
            "volumes": [f"./{br.name}:{security.CONTAINER_DIR}:ro" if cfg.security.enabled
                        else f"./{br.name}/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro"],
            "networks": {"brokernet": {"ipv4_address": br.address}},
            "logging": {"driver": "json-file", "options": {"max-size": "200m", "max-file": "3"}},
        }
    doc = {  # no top-level "name": Debian's docker-compose 1.29 rejects it; callers pass -p mqttlab
        "services": services,
        "networks": {
            "brokernet": {
                "driver": "ipvlan",
                "driver_opts": {"parent": parent_interface, "ipvlan_mode": "l3"},
                "ipam": {"config": [{"subnet": host.subnet}]},
            }
        },
    }
    head = HEADER.format(stack=plan.stack, topology=plan.topology)
    return head + yaml.safe_dump(doc, sort_keys=False)
