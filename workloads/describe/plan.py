"""The topology plan: a pure function of the configuration that every other part reads.

The Azure program, the local lab and the renderers all take their hosts, addresses, bridges and
balancer duties from here, so nothing about the topology is encoded twice.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the plan is built from the settings, which check their faults against it
    from workloads.describe.config import ExperimentConfig, HealthCheckConfig

BROKER_HOST = "brokers"


@dataclass(frozen=True)
class Host:
    name: str
    role: str  # "brokers" or "balancer" (balancer hosts also run the benchmark clients)
    subnet: str
    address: str
    gateway: str  # first usable address of the subnet, as Azure's fabric router


@dataclass(frozen=True)
class Broker:
    name: str
    index: int  # 1-based, as broker1..brokerN
    host: str
    address: str
    port: int


@dataclass(frozen=True)
class BridgeLink:
    name: str  # connection name, also in $SYS/broker/connection/<name>/state
    local: str  # broker that defines the bridge (the hub)
    remote: str
    remote_address: str
    remote_port: int
    remote_clientid: str  # explicit and unique: default ids collide across same-named hosts
    qos: int


@dataclass(frozen=True)
class RealServer:
    broker: str
    address: str
    port: int
    weight: int


@dataclass(frozen=True)
class Balancer:
    host: str
    vip: str
    port: int
    scheduler: str
    forwarding: str
    real_servers: tuple[RealServer, ...]
    snat_sources: tuple[str, ...]  # client subnets whose traffic this balancer masquerades
    timeout_tcp: int
    timeout_tcpfin: int
    timeout_udp: int
    health_check: HealthCheckConfig


@dataclass(frozen=True)
class ClientHost:
    host: str
    address: str
    target_host: str  # the balancer host whose entry point these clients use
    target: str  # "vip:port"


@dataclass(frozen=True)
class Plan:
    stack: str
    topology: str
    vnet: str
    hosts: tuple[Host, ...]
    brokers: tuple[Broker, ...]
    bridges: tuple[BridgeLink, ...]
    balancers: tuple[Balancer, ...]
    clients: tuple[ClientHost, ...]
    broker_cpus: float
    broker_memory_mb: int
    broker_image: str
    security: str = "none"  # the security mode; secrets are never part of the plan

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def balancer_on(self, host: str) -> Balancer | None:
        return next((b for b in self.balancers if b.host == host), None)

    @property
    def balancer_hosts(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == "balancer")

    def sysctls(self, host: str) -> dict[str, str]:
        """Kernel settings a NAT director needs; conntrack only when SNAT meets IPVS."""
        bal = self.balancer_on(host)
        if bal is None:
            return {}
        out = {"net.ipv4.ip_forward": "1"}
        if bal.snat_sources:
            out["net.ipv4.vs.conntrack"] = "1"
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _gateway(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address + 1)


def build_plan(cfg: ExperimentConfig) -> Plan:
    net = cfg.network
    broker_host = Host(BROKER_HOST, "brokers", str(net.broker_subnet), str(net.broker_host_address), _gateway(net.broker_subnet))
    bal_hosts = tuple(
        Host(f"ipvs{i + 1}", "balancer", str(s), str(s.network_address + net.client_host_offset), _gateway(s))
        for i, s in enumerate(net.client_subnets)
    )
    # TLS moves every MQTT port to the TLS port (8883): brokers, bridges and balancers alike
    broker_port = cfg.security.tls_port if cfg.security.tls else cfg.brokers.port
    brokers = tuple(
        Broker(f"broker{i + 1}", i + 1, BROKER_HOST, str(a), broker_port) for i, a in enumerate(cfg.brokers.addresses)
    )
    bridges: tuple[BridgeLink, ...] = ()
    if cfg.bridge.layout == "star":
        hub = brokers[cfg.bridge.hub - 1]
        bridges = tuple(
            BridgeLink(
                name=f"{hub.name}-{b.name}",
                local=hub.name,
                remote=b.name,
                remote_address=b.address,
                remote_port=b.port,
                remote_clientid=f"mqttlab-bridge-{cfg.stack}-{hub.name}-{b.name}",
                qos=cfg.bridge.qos,
            )
            for b in brokers
            if b is not hub
        )
    reals = tuple(RealServer(b.name, b.address, b.port, w) for b, w in zip(brokers, cfg.balancer.weights, strict=True))
    bc = cfg.balancer
    vip_port = cfg.security.tls_port if cfg.security.tls else bc.port

    def balancer(host: Host, snat: tuple[str, ...]) -> Balancer:
        return Balancer(host.name, host.address, vip_port, bc.scheduler, bc.forwarding, reals, snat, bc.timeout_tcp, bc.timeout_tcpfin, bc.timeout_udp,
                        bc.health_check)

    if cfg.topology == "distributed":
        balancers = tuple(balancer(h, ()) for h in bal_hosts)
        clients = tuple(ClientHost(h.name, h.address, h.name, f"{h.address}:{vip_port}") for h in bal_hosts)
    else:
        first = bal_hosts[0]
        balancers = (balancer(first, tuple(h.subnet for h in bal_hosts[1:])),)
        clients = tuple(ClientHost(h.name, h.address, first.name, f"{first.address}:{vip_port}") for h in bal_hosts)
    return Plan(
        stack=cfg.stack,
        topology=cfg.topology,
        vnet=str(net.vnet_cidr),
        hosts=(broker_host, *bal_hosts),
        brokers=brokers,
        bridges=bridges,
        balancers=balancers,
        clients=clients,
        broker_cpus=cfg.brokers.cpus,
        broker_memory_mb=cfg.brokers.memory_mb,
        broker_image=cfg.brokers.image,
        security=cfg.security.mode,
    )
