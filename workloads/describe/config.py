"""Experiment configuration, read from a Pulumi stack file without the Pulumi engine.

One file (``Pulumi.<stack>.yaml``) describes a stack for Azure and for the local lab alike, so
both read it through this module. Every value is checked here, once, and the first problem found
is raised as a :class:`ConfigError` that names the key, the value and what is allowed, before
anything is created anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workloads.base.errors import ConfigError
from workloads.describe.faults import Fault, FaultError, TargetError, check_targets, parse_fault
from workloads.describe.links import LinksConfig, parse_links
from workloads.describe.plan import build_plan
from workloads.describe.scenario import Scenario, scenario_from_mapping
from workloads.describe.schema import (
    BRIDGE_LAYOUTS,
    DEFAULT_LOG_TYPES,
    FORWARDING,
    HEALTH_CHECKS,
    LOG_TYPES,
    NAMESPACE,
    SCHEDULERS,
    SECURITY_MODES,
    TLS_VERSIONS,
    TOPOLOGIES,
    check_config,
    check_path,
    check_stack_file,
)

_CIPHERS = re.compile(r"^[A-Za-z0-9_+!@=-]+(:[A-Za-z0-9_+!@=-]+)*$")


@dataclass(frozen=True)
class NetworkConfig:
    vnet_cidr: ipaddress.IPv4Network
    broker_subnet: ipaddress.IPv4Network
    client_subnets: tuple[ipaddress.IPv4Network, ...]
    broker_host_address: ipaddress.IPv4Address
    client_host_offset: int


@dataclass(frozen=True)
class BrokerConfig:
    count: int
    addresses: tuple[ipaddress.IPv4Address, ...]
    port: int
    cpus: float
    memory_mb: int
    image: str
    max_queued_messages: int
    max_inflight_messages: int
    max_queued_bytes: int
    memory_limit: int
    sys_interval: int
    log_types: tuple[str, ...] = DEFAULT_LOG_TYPES


@dataclass(frozen=True)
class BridgeConfig:
    layout: str
    hub: int
    qos: int
    # Mosquitto's bridge keepalive_interval (its default 60 s, which the reference leaves): how long
    # a silent bridge connection lives before it is declared dead. Only then does the bridge queue
    # messages (and drop past max_queued_messages); before that it writes them into TCP, which
    # retransmits after a cut, so a cut shorter than this loses nothing.
    keepalive: int = 60


@dataclass(frozen=True)
class HealthCheckConfig:
    """How a balancer proves a broker is alive: ``none`` (IPVS alone, as the reference), ``tcp``
    (the port accepts) or ``mqtt`` (a CONNECT is answered by a CONNACK). A broker is taken out
    after ``retries`` failed checks ``interval`` seconds apart, each bounded by ``timeout``."""

    type: str = "none"
    interval: float = 1.0
    retries: int = 2
    timeout: float = 1.0


@dataclass(frozen=True)
class BalancerConfig:
    scheduler: str
    weights: tuple[int, ...]
    forwarding: str
    port: int
    timeout_tcp: int
    timeout_tcpfin: int
    timeout_udp: int
    health_check: HealthCheckConfig = HealthCheckConfig()


@dataclass(frozen=True)
class SecurityConfig:
    """How clients and bridges reach the brokers; ``none`` is the reference (anonymous, plaintext)."""

    mode: str = "none"
    tls_version: str = "tlsv1.2"  # the minimum, as Mosquitto 2.0's ``tls_version``
    ciphers: str | None = None  # TLS 1.2 cipher list (OpenSSL syntax); None: OpenSSL's default
    ciphers_tls13: str | None = None  # TLS 1.3 suites; None: OpenSSL's default
    tls_port: int = 8883  # MQTT over TLS (IANA); replaces the broker and balancer port when TLS is on
    cert_days: int = 30

    @property
    def tls(self) -> bool:
        return self.mode in ("tls", "mtls")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything about the experiment that is not Azure-specific."""

    stack: str
    topology: str
    network: NetworkConfig
    brokers: BrokerConfig
    bridge: BridgeConfig
    balancer: BalancerConfig
    scenario: Scenario
    security: SecurityConfig = field(default_factory=SecurityConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    faults: tuple[Fault, ...] = ()
    links: LinksConfig = field(default_factory=LinksConfig)

    def with_overrides(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """Re-validate with ``{"section.key": value}`` overrides (any depth:
        ``balancer.healthCheck.type``), so the command line and campaigns obey the same rules as
        the stack file (``{"topology": "centralized"}`` sets a top-level key); a key the schema
        does not know is refused before anything else."""
        raw: dict[str, Any] = copy.deepcopy(dict(self.raw))
        for dotted, value in overrides.items():
            if value is None:
                continue
            check_path(dotted)
            section, *path = dotted.split(".")
            if not path:
                raw[f"{NAMESPACE}:{section}"] = value
                continue
            node = raw.setdefault(f"{NAMESPACE}:{section}", {})
            where = f"{NAMESPACE}:{section}"
            for part in path[:-1]:
                if not isinstance(node, dict):
                    raise ConfigError(where, node, "must be a mapping of settings")
                node = node.setdefault(part, {})
                where += f".{part}"
            if not isinstance(node, dict):
                raise ConfigError(where, node, "must be a mapping of settings")
            node[path[-1]] = value
        return parse_config(raw, self.stack)


# --------------------------------------------------------------------------- helpers


def _get(section: Mapping[str, Any], key: str, default: Any) -> Any:
    value = section.get(key, default)
    return default if value is None else value


def _int(key: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, value, "must be a whole number")
    if minimum is not None and value < minimum:
        raise ConfigError(key, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, value, f"must be <= {maximum}")
    return value


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "must be a number")
    if value <= 0:
        raise ConfigError(key, value, "must be > 0")
    return float(value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(key, value, f"must be one of {', '.join(allowed)}")
    return str(value)


def _network(key: str, value: Any) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise ConfigError(key, value, f"must be an IPv4 CIDR with no host bits set ({exc})") from None
    if net.prefixlen > 29:
        raise ConfigError(key, value, "prefix must be /29 or larger to hold hosts")
    return net


def _address(key: str, value: Any) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ConfigError(key, value, "must be an IPv4 address") from None


def _section(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = cfg.get(f"{NAMESPACE}:{name}", {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{NAMESPACE}:{name}", value, "must be a mapping of settings")
    return value


def _usable(net: ipaddress.IPv4Network, addr: ipaddress.IPv4Address) -> bool:
    """Azure reserves the first four and the last address of every subnet; so does the lab."""
    offset = int(addr) - int(net.network_address)
    return addr in net and 4 <= offset < net.num_addresses - 1


# --------------------------------------------------------------------------- parsing


def _parse_network(cfg: Mapping[str, Any]) -> NetworkConfig:
    sec = _section(cfg, "network")
    p = f"{NAMESPACE}:network."
    vnet = _network(p + "vnetCidr", _get(sec, "vnetCidr", "10.0.0.0/13"))
    broker_subnet = _network(p + "brokerSubnet", _get(sec, "brokerSubnet", "10.2.0.0/24"))
    raw_clients = _get(sec, "clientSubnets", ["10.3.0.0/24", "10.4.0.0/24"])
    if not isinstance(raw_clients, list) or not raw_clients:
        raise ConfigError(p + "clientSubnets", raw_clients, "must be a non-empty list of CIDRs, one per balancer/client host")
    clients = tuple(_network(f"{p}clientSubnets[{i}]", c) for i, c in enumerate(raw_clients))
    subnets = [("brokerSubnet", broker_subnet)] + [(f"clientSubnets[{i}]", c) for i, c in enumerate(clients)]
    for name, net in subnets:
        if not net.subnet_of(vnet):
            raise ConfigError(p + name, str(net), f"must lie inside vnetCidr {vnet}")
    for i, (name_a, a) in enumerate(subnets):
        for name_b, b in subnets[i + 1 :]:
            if a.overlaps(b):
                raise ConfigError(p + name_b, str(b), f"must not overlap {name_a} {a}")
    host_addr = _address(p + "brokerHostAddress", _get(sec, "brokerHostAddress", str(broker_subnet.network_address + 10)))
    if not _usable(broker_subnet, host_addr):
        raise ConfigError(p + "brokerHostAddress", str(host_addr), f"must be a usable address of brokerSubnet {broker_subnet} (offset 4 or more, not broadcast)")
    offset = _int(p + "clientHostOffset", _get(sec, "clientHostOffset", 10), 4)
    for i, net in enumerate(clients):
        if offset >= net.num_addresses - 1:
            raise ConfigError(p + "clientHostOffset", offset, f"must be a usable offset inside clientSubnets[{i}] {net}")
    return NetworkConfig(vnet, broker_subnet, clients, host_addr, offset)


def _parse_brokers(cfg: Mapping[str, Any], network: NetworkConfig) -> BrokerConfig:
    sec = _section(cfg, "brokers")
    p = f"{NAMESPACE}:brokers."
    count = _int(p + "count", _get(sec, "count", 3), 1, 64)
    raw_addrs = sec.get("addresses")
    if raw_addrs is None:
        start = network.broker_subnet.network_address + 20
        addrs = tuple(start + i for i in range(count))
    else:
        if not isinstance(raw_addrs, list) or len(raw_addrs) != count:
            raise ConfigError(p + "addresses", raw_addrs, f"must be a list of exactly count={count} addresses")
        addrs = tuple(_address(f"{p}addresses[{i}]", a) for i, a in enumerate(raw_addrs))
    seen: set[ipaddress.IPv4Address] = {network.broker_host_address}
    for i, a in enumerate(addrs):
        if not _usable(network.broker_subnet, a):
            raise ConfigError(f"{p}addresses[{i}]", str(a), f"must be a usable address inside brokerSubnet {network.broker_subnet}")
        if a in seen:
            raise ConfigError(f"{p}addresses[{i}]", str(a), "must be unique and differ from brokerHostAddress")
        seen.add(a)
    image = str(_get(sec, "image", "eclipse-mosquitto:2.0.20"))
    tag = image.rpartition(":")[2] if ":" in image else ""
    if not tag.startswith("2.0.") or not tag[4:].split("-")[0].isdigit():
        raise ConfigError(p + "image", image, "must pin a Mosquitto 2.0.x tag, e.g. eclipse-mosquitto:2.0.20 (never latest)")
    return BrokerConfig(
        count=count,
        addresses=addrs,
        port=_int(p + "port", _get(sec, "port", 1883), 1, 65535),
        cpus=_positive_float(p + "cpus", _get(sec, "cpus", 0.25)),
        memory_mb=_int(p + "memoryMb", _get(sec, "memoryMb", 128), 16),
        image=image,
        max_queued_messages=_int(p + "maxQueuedMessages", _get(sec, "maxQueuedMessages", 1000), 0),
        max_inflight_messages=_int(p + "maxInflightMessages", _get(sec, "maxInflightMessages", 20), 0, 65535),
        max_queued_bytes=_int(p + "maxQueuedBytes", _get(sec, "maxQueuedBytes", 0), 0),
        memory_limit=_int(p + "memoryLimit", _get(sec, "memoryLimit", 0), 0),
        sys_interval=_int(p + "sysInterval", _get(sec, "sysInterval", 1), 1, 3600),
        log_types=_log_types(p + "logTypes", _get(sec, "logTypes", list(DEFAULT_LOG_TYPES))),
    )


def _log_types(key: str, value: Any) -> tuple[str, ...]:
    """Mosquitto's log types; the analysis reads connection lines (notice) and the queue-full drop
    warnings (warning), so a list without them (or "all") would make the run unreadable."""
    if not isinstance(value, list) or not value:
        raise ConfigError(key, value, f"must be a non-empty list of mosquitto log types ({', '.join(LOG_TYPES)}); the reference used [all]")
    for i, t in enumerate(value):
        if t not in LOG_TYPES:
            raise ConfigError(f"{key}[{i}]", t, f"must be one of {', '.join(LOG_TYPES)}")
    if "all" not in value and not {"notice", "warning"} <= set(value):
        raise ConfigError(key, value, "must include notice and warning (connections and drop warnings, which the analysis reads), or be [all]")
    return tuple(value)


def _parse_bridge(cfg: Mapping[str, Any], brokers: BrokerConfig) -> BridgeConfig:
    sec = _section(cfg, "bridge")
    p = f"{NAMESPACE}:bridge."
    layout = _choice(p + "layout", _get(sec, "layout", "star"), BRIDGE_LAYOUTS)
    hub = _int(p + "hub", _get(sec, "hub", 1), 1, brokers.count)
    qos = _int(p + "qos", _get(sec, "qos", 2), 0, 2)
    # Mosquitto refuses a keepalive_interval below 5 s; 65535 is MQTT's 16-bit keepalive field
    keepalive = _int(p + "keepaliveS", _get(sec, "keepaliveS", 60), 5, 65535)
    return BridgeConfig(layout, hub, qos, keepalive)


def _parse_balancer(cfg: Mapping[str, Any], brokers: BrokerConfig) -> BalancerConfig:
    sec = _section(cfg, "balancer")
    p = f"{NAMESPACE}:balancer."
    raw_weights = _get(sec, "weights", [1] * brokers.count)
    if not isinstance(raw_weights, list) or len(raw_weights) != brokers.count:
        raise ConfigError(p + "weights", raw_weights, f"must be a list of {brokers.count} weights, one per broker")
    weights = tuple(_int(f"{p}weights[{i}]", w, 0, 65535) for i, w in enumerate(raw_weights))
    if not any(weights):
        raise ConfigError(p + "weights", raw_weights, "at least one broker needs a weight > 0")
    return BalancerConfig(
        scheduler=_choice(p + "scheduler", _get(sec, "scheduler", "lc"), SCHEDULERS),
        weights=weights,
        forwarding=_choice(p + "forwarding", _get(sec, "forwarding", "nat"), FORWARDING),
        port=_int(p + "port", _get(sec, "port", 1883), 1, 65535),
        timeout_tcp=_int(p + "timeouts.tcp", _get(_get(sec, "timeouts", {}), "tcp", 900), 1),
        timeout_tcpfin=_int(p + "timeouts.tcpfin", _get(_get(sec, "timeouts", {}), "tcpfin", 120), 1),
        timeout_udp=_int(p + "timeouts.udp", _get(_get(sec, "timeouts", {}), "udp", 300), 1),
        health_check=_parse_health_check(_get(sec, "healthCheck", {}), p + "healthCheck"),
    )


def _parse_health_check(sec: Any, key: str) -> HealthCheckConfig:
    if not isinstance(sec, Mapping):
        raise ConfigError(key, sec, "must be a mapping with type (none, mqtt, tcp), interval, retries, timeout")
    d = HealthCheckConfig()
    interval = _positive_float(key + ".interval", _get(sec, "interval", d.interval))
    timeout = _positive_float(key + ".timeout", _get(sec, "timeout", d.timeout))
    if interval > 3600 or timeout > 3600:
        raise ConfigError(key + (".interval" if interval > 3600 else ".timeout"), max(interval, timeout), "must be <= 3600 seconds")
    if timeout > interval:
        raise ConfigError(key + ".timeout", timeout, f"must be <= interval ({interval}): a check must end before the next one starts")
    return HealthCheckConfig(
        type=_choice(key + ".type", _get(sec, "type", d.type), HEALTH_CHECKS),
        interval=interval,
        retries=_int(key + ".retries", _get(sec, "retries", d.retries), 1, 100),
        timeout=timeout,
    )


def _optional_ciphers(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CIPHERS.match(value):
        raise ConfigError(key, value, "must be an OpenSSL cipher list such as ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305")
    return value


def _parse_security(cfg: Mapping[str, Any]) -> SecurityConfig:
    sec = _section(cfg, "security")
    p = f"{NAMESPACE}:security."
    return SecurityConfig(
        mode=_choice(p + "mode", _get(sec, "mode", "none"), SECURITY_MODES),
        tls_version=_choice(p + "tlsVersion", _get(sec, "tlsVersion", "tlsv1.2"), TLS_VERSIONS),
        ciphers=_optional_ciphers(p + "ciphers", sec.get("ciphers")),
        ciphers_tls13=_optional_ciphers(p + "ciphersTls13", sec.get("ciphersTls13")),
        tls_port=_int(p + "tlsPort", _get(sec, "tlsPort", 8883), 1, 65535),
        cert_days=_int(p + "certDays", _get(sec, "certDays", 30), 1, 825),
    )


def parse_config(cfg: Mapping[str, Any], stack: str) -> ExperimentConfig:
    """Build and validate the experiment from a stack file's ``config:`` mapping."""
    if not isinstance(cfg, Mapping):
        raise ConfigError("config", cfg, "the stack file must have a 'config:' mapping")
    check_config(cfg)
    topology = _choice(f"{NAMESPACE}:topology", _get(cfg, f"{NAMESPACE}:topology", stack if stack in TOPOLOGIES else "distributed"), TOPOLOGIES)
    network = _parse_network(cfg)
    brokers = _parse_brokers(cfg, network)
    bridge = _parse_bridge(cfg, brokers)
    balancer = _parse_balancer(cfg, brokers)
    scenario = scenario_from_mapping(_section(cfg, "scenario"), prefix=f"{NAMESPACE}:scenario.")
    security = _parse_security(cfg)
    if bridge.layout != "none" and bridge.qos < scenario.qos:
        raise ConfigError(f"{NAMESPACE}:bridge.qos", bridge.qos, f"must be >= the scenario's qos {scenario.qos}, or the bridge downgrades the test's guarantees")
    if balancer.health_check.type == "mqtt" and security.tls:
        raise ConfigError(f"{NAMESPACE}:balancer.healthCheck.type", "mqtt",
                          f"the MQTT probe speaks plain MQTT; with security mode {security.mode} (TLS) use type tcp")
    links = parse_links(_section(cfg, "links"), f"{NAMESPACE}:links", topology, bridge.layout)
    exp = ExperimentConfig(stack, topology, network, brokers, bridge, balancer, scenario, security, raw=dict(cfg), links=links)
    faults = _parse_faults(cfg.get(f"{NAMESPACE}:faults"), exp)
    return dataclasses.replace(exp, faults=faults) if faults else exp


def _parse_faults(value: Any, exp: ExperimentConfig) -> tuple[Fault, ...]:
    """``mqttlab:faults``: a list of fault strings (see :mod:`workloads.describe.faults`), checked against
    this very plan, so a fault on a broker or bridge that does not exist is refused up front."""
    key = f"{NAMESPACE}:faults"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(key, value, "must be a list of faults like broker2:kill@5s")
    keys = [f"{key}[{i}]" for i in range(len(value))]
    faults = []
    for k, text in zip(keys, value, strict=True):
        try:
            faults.append(parse_fault(text))
        except FaultError as exc:
            raise ConfigError(k, text, str(exc)) from None
    plan = build_plan(exp)
    try:
        check_targets(faults, [b.name for b in plan.brokers], [b.name for b in plan.bridges], [b.host for b in plan.balancers],
                      exp.scenario.time_limit_s, keys)
    except TargetError as exc:
        raise ConfigError(exc.key, exc.spec, str(exc)) from None
    return tuple(faults)


def stack_file(stack: str, project_dir: Path | None = None) -> Path:
    base = project_dir or Path.cwd()
    return base / f"Pulumi.{stack}.yaml"


def load_stack(stack: str, project_dir: Path | None = None) -> ExperimentConfig:
    """Read ``Pulumi.<stack>.yaml`` (from ``project_dir`` or the working directory)."""
    path = stack_file(stack, project_dir)
    if not path.is_file():
        known = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in path.parent.glob("Pulumi.*.yaml"))
        raise ConfigError("stack", stack, f"no file {path}; known stacks here: {', '.join(known) or 'none'}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:  # not YAML, or not text
        raise ConfigError("stack", str(path), f"must be valid YAML ({exc})") from None
    if not isinstance(doc, Mapping):
        raise ConfigError("stack", str(path), "must be a YAML mapping with a 'config:' key")
    check_stack_file(doc, path.name)
    return parse_config(doc.get("config") or {}, stack)


LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")


def renumber(cfg: ExperimentConfig, into: ipaddress.IPv4Network = LAB_RANGE) -> ExperimentConfig:
    """Move every subnet into ``into`` keeping prefix lengths and host offsets.

    The local lab lives in the benchmarking range so it can never collide with, or leak to, a
    real network; keeping offsets keeps the plan recognisable (10.2.0.20 -> 198.18.0.20).
    """
    net = cfg.network
    olds = [net.broker_subnet, *net.client_subnets]
    cursor = int(into.network_address)
    mapping: dict[ipaddress.IPv4Network, ipaddress.IPv4Network] = {}
    for old in olds:
        size = old.num_addresses
        cursor = (cursor + size - 1) // size * size  # align
        new = ipaddress.IPv4Network((cursor, old.prefixlen))
        if not new.subnet_of(into):
            raise ConfigError("network", str(old), f"the plan's subnets do not fit in {into} for the lab; use --keep-addresses")
        mapping[old] = new
        cursor += size

    def move(addr: ipaddress.IPv4Address, old: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
        return mapping[old].network_address + (int(addr) - int(old.network_address))

    new_net = NetworkConfig(
        vnet_cidr=into,
        broker_subnet=mapping[net.broker_subnet],
        client_subnets=tuple(mapping[s] for s in net.client_subnets),
        broker_host_address=move(net.broker_host_address, net.broker_subnet),
        client_host_offset=net.client_host_offset,
    )
    new_brokers = dataclasses.replace(cfg.brokers, addresses=tuple(move(a, net.broker_subnet) for a in cfg.brokers.addresses))
    return dataclasses.replace(cfg, network=new_net, brokers=new_brokers)
