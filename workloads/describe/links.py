"""Impaired links (``mqttlab:links``): delay, jitter, loss and a rate limit per link class, as
data, and where each class runs in the lab's network, as a pure function of the plan.

The classes are the paths the reference's clean LAN leaves out:

- ``balancerBroker``: between a director and the brokers (the NATed client traffic both ways);
- ``clientBalancer``: between a client host and a director on another host, which only the
  centralized topology has (there ipvs2's clients reach ipvs1's entry point across the network;
  in the distributed topology each host's clients use its own director, with no link between);
- ``bridge``: between the brokers, which the bridges use.

Each value applies in each direction (a delay of 20 ms adds 40 ms to a round trip), as
``tc netem`` (tc-netem(8)) does on the egress of each end. In the lab the switch namespace's
port towards each host carries a ``prio`` qdisc whose bands hold one ``netem`` per class, chosen
by the packet's source subnet (``u32``); the bridges run over the broker host's loopback, which
gets a ``netem`` of its own. On Azure the network is Azure's: the section is recorded, not
carried out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from workloads.base.errors import ConfigError

if TYPE_CHECKING:
    from workloads.describe.plan import Plan

CLASSES = ("clientBalancer", "balancerBroker", "bridge")
MAX_DELAY_MS = 60_000.0
MAX_LOSS_PCT = 99.9  # a link that drops everything is a cut: a fault (bridge:NAME:cut@...)
MAX_RATE_MBIT = 100_000.0
# netem's queue: its default of 1000 packets would drop on its own under a rate limit or a long
# delay (1000 packets of a 480-client burst are in flight within milliseconds), and count it as
# the impairment's loss
NETEM_LIMIT = 100_000


@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # netem's uniform jitter around delay_ms; at most delay_ms
    loss_pct: float = 0.0
    rate_mbit: float | None = None

    @property
    def active(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct or self.rate_mbit)

    @property
    def shown(self) -> str:
        """What the impairment does, in netem's words (its queue limit left out)."""
        return " ".join(self.netem_args()[2:])

    def netem_args(self) -> list[str]:
        """The ``netem`` options of tc-netem(8), in its units."""
        out = ["limit", str(NETEM_LIMIT)]
        if self.delay_ms or self.jitter_ms:
            out += ["delay", f"{self.delay_ms:g}ms"] + ([f"{self.jitter_ms:g}ms"] if self.jitter_ms else [])
        if self.loss_pct:
            out += ["loss", f"{self.loss_pct:g}%"]
        if self.rate_mbit:
            out += ["rate", f"{self.rate_mbit:g}mbit"]
        return out


@dataclass(frozen=True)
class LinksConfig:
    client_balancer: Impairment = field(default_factory=Impairment)
    balancer_broker: Impairment = field(default_factory=Impairment)
    bridge: Impairment = field(default_factory=Impairment)

    def of(self, cls: str) -> Impairment:
        return {"clientBalancer": self.client_balancer, "balancerBroker": self.balancer_broker, "bridge": self.bridge}[cls]

    @property
    def active(self) -> bool:
        return any(self.of(c).active for c in CLASSES)

    def to_dict(self) -> dict[str, Any]:
        return {c: asdict(self.of(c)) for c in CLASSES}


def _number(key: str, value: Any, lo: float, hi: float | None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "must be a number")
    if value < lo or (lo_open and value == lo):
        raise ConfigError(key, value, f"must be {'>' if lo_open else '>='} {lo:g}")
    if hi is not None and value > hi:
        raise ConfigError(key, value, f"must be <= {hi:g}")
    return float(value)


def parse_impairment(sec: Any, key: str) -> Impairment:
    if sec is None:
        return Impairment()
    if not isinstance(sec, Mapping):
        raise ConfigError(key, sec, "must be a mapping with delayMs, jitterMs, lossPct, rateMbit")
    delay = _number(key + ".delayMs", sec.get("delayMs", 0) or 0, 0, MAX_DELAY_MS)
    jitter = _number(key + ".jitterMs", sec.get("jitterMs", 0) or 0, 0, MAX_DELAY_MS)
    if jitter > delay:
        raise ConfigError(key + ".jitterMs", jitter, f"must be <= delayMs ({delay:g}): netem's jitter spreads the delay around it, "
                                                      "and a delay cannot go below zero")
    loss = _number(key + ".lossPct", sec.get("lossPct", 0) or 0, 0, MAX_LOSS_PCT)
    rate = sec.get("rateMbit")
    return Impairment(delay, jitter, loss, None if rate is None else _number(key + ".rateMbit", rate, 0, MAX_RATE_MBIT, lo_open=True))


def parse_links(sec: Mapping[str, Any], key: str, topology: str, bridge_layout: str) -> LinksConfig:
    """``mqttlab:links``, each class checked against the topology that would carry it: an
    impairment of a link this experiment does not have is refused, not silently ignored."""
    links = LinksConfig(*(parse_impairment(sec.get(c), f"{key}.{c}") for c in CLASSES))
    if links.client_balancer.active and topology != "centralized":
        raise ConfigError(f"{key}.clientBalancer", sec.get("clientBalancer"),
                          f"the {topology} topology has no link between clients and a balancer (each host's clients use its own "
                          "director): impair balancerBroker, or use the centralized topology")
    if links.bridge.active and bridge_layout == "none":
        raise ConfigError(f"{key}.bridge", sec.get("bridge"), "bridge.layout is none: there is no bridge to impair")
    return links


# --------------------------------------------------------------------------- where, in the lab


@dataclass(frozen=True)
class Placement:
    """One class's netem on one device: ``host``'s namespace (``sw`` is the switch), device
    ``dev``; ``sources``: the subnets whose packets it takes (empty: all of the device's)."""

    cls: str
    host: str
    dev: str
    sources: tuple[str, ...] = ()


def placements(plan: Plan, links: LinksConfig) -> list[Placement]:
    """Where each active class runs in the lab: the switch's port towards each host (``p<j>``,
    ``j`` the host's index in the plan, as the lab names them) for the traffic arriving from the
    class's other end, and the broker host's loopback for the bridges."""
    out: list[Placement] = []
    broker_subnet = next(h.subnet for h in plan.hosts if h.role == "brokers")
    balancer_hosts = {b.host for b in plan.balancers}
    for j, h in enumerate(plan.hosts):
        port = f"p{j}"
        if h.role == "brokers":
            if links.balancer_broker.active:  # every packet into the broker host comes from a director
                out.append(Placement("balancerBroker", "sw", port, tuple(plan.host(b).subnet for b in sorted(balancer_hosts))))
            continue
        if links.balancer_broker.active and h.name in balancer_hosts:
            out.append(Placement("balancerBroker", "sw", port, (broker_subnet,)))
        if links.client_balancer.active:
            if h.name in balancer_hosts:  # from the clients of other hosts that use this director
                others = tuple(c.address for c in plan.clients if c.target_host == h.name and c.host != h.name)
                if others:
                    out.append(Placement("clientBalancer", "sw", port, tuple(f"{a}/32" for a in others)))
            else:  # back to clients whose director is elsewhere
                c = next(c for c in plan.clients if c.host == h.name)
                out.append(Placement("clientBalancer", "sw", port, (f"{plan.host(c.target_host).address}/32",)))
    if links.bridge.active and plan.bridges:
        out.append(Placement("bridge", next(h.name for h in plan.hosts if h.role == "brokers"), "lo"))
    return out


def tc_commands(placements_: list[Placement], links: LinksConfig) -> dict[tuple[str, str], list[list[str]]]:
    """The ``tc`` commands per (host, device): a device with one class and no source filter gets
    that netem as its root; otherwise a ``prio`` root whose default band (every priority mapped
    to it) stays a plain FIFO, one band per class holding its netem, and a ``u32`` filter per
    source subnet sending its packets to the class's band."""
    by_dev: dict[tuple[str, str], list[Placement]] = {}
    for p in placements_:
        by_dev.setdefault((p.host, p.dev), []).append(p)
    out: dict[tuple[str, str], list[list[str]]] = {}
    for (host, dev), ps in by_dev.items():
        if len(ps) == 1 and not ps[0].sources:
            out[(host, dev)] = [["tc", "qdisc", "replace", "dev", dev, "root", "netem", *links.of(ps[0].cls).netem_args()]]
            continue
        bands = len(ps) + 1
        default_band = str(bands - 1)  # priomap counts bands from 0: the last one
        cmds = [["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "prio", "bands", str(bands), "priomap", *([default_band] * 16)]]
        for i, p in enumerate(ps, start=1):
            cmds.append(["tc", "qdisc", "add", "dev", dev, "parent", f"1:{i}", "handle", f"{10 * i}:", "netem", *links.of(p.cls).netem_args()])
            for s in p.sources:
                cmds.append(["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                             "match", "ip", "src", s, "flowid", f"1:{i}"])
        out[(host, dev)] = cmds
    return out
