"""Every key a stack file and a campaign file may hold, as data: names, types, ranges, defaults, units.

A misspelt key must never silently run the default experiment, so the stack file, the command
line's overrides, campaign files and the Azure program all pass through :func:`check_config`
before anything is created: a key this schema does not know is refused, naming its place and the
nearest known key. The value checks that depend on other values (subnets inside the VNet, the
hub among the brokers) stay in :mod:`workloads.describe.config`; this table holds what a reader (the
documentation, ``mqttlab schema``, ``mqttlab config show``, an editor's YAML language server)
needs to know, and tests hold the two to each other (every default and every bound here is the
parser's).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from workloads.base.errors import ConfigError, UnknownKeyError
from workloads.describe.links import MAX_DELAY_MS, MAX_LOSS_PCT, MAX_RATE_MBIT
from workloads.describe.scenario import FIELDS, HEADER_BYTES, MQTT_VERSIONS, QOS_LEVELS, TOPIC_LAYOUTS

NAMESPACE = "mqttlab"
TOPOLOGIES = ("centralized", "distributed")
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "mh")
FORWARDING = ("nat",)
BRIDGE_LAYOUTS = ("star", "none")
# mosquitto.conf(5) log_type values. The default leaves out "debug" (a line per PUBLISH in and
# out, which "all" includes and the reference used): on a 0.25-CPU broker that logging is itself
# a load, so it is a setting with the reference's value one line away ([all]).
LOG_TYPES = ("debug", "error", "warning", "notice", "information", "subscribe", "unsubscribe", "websockets", "none", "all")
DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information", "subscribe", "unsubscribe")
HEALTH_CHECKS = ("none", "mqtt", "tcp")
SECURITY_MODES = ("none", "password", "tls", "mtls")
TLS_VERSIONS = ("tlsv1.2", "tlsv1.3")
LOAD_GENERATORS = ("mqttlab", "emqtt-bench")
# Pulumi's own keys of a stack file beside ``config`` (ProjectStack in pulumi's
# sdk/go/common/workspace/project.go): anything else at the top is a misspelling of one of them
STACK_FILE_KEYS = ("config", "secretsprovider", "encryptedkey", "encryptionsalt", "environment")


@dataclass(frozen=True)
class Key:
    """One setting. ``type`` is a JSON Schema type (``integer``, ``number``, ``string``,
    ``boolean``, ``array``, ``object``) or ``cidr``/``ipv4`` (strings of that form). ``attr`` is
    where :class:`workloads.describe.config.ExperimentConfig` holds the parsed value (dotted), so the
    effective configuration can be read back; keys the lab does not parse have none."""

    name: str
    type: str
    doc: str
    default: Any = None
    default_doc: str = ""  # how an absent value is derived, where it is not a constant
    enum: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    unit: str = ""
    items: Key | None = None
    keys: tuple[Key, ...] = ()
    attr: str = ""
    secret: bool = False
    nullable: bool = False
    reference: str = ""  # the study's value where this project's default differs, or what it left unsaid

    def child(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


def _int(name: str, doc: str, default: Any, lo: float | None = None, hi: float | None = None, unit: str = "", **kw: Any) -> Key:
    return Key(name, "integer", doc, default, minimum=lo, maximum=hi, unit=unit, **kw)


def _num(name: str, doc: str, default: Any, lo: float | None = None, hi: float | None = None, unit: str = "", **kw: Any) -> Key:
    return Key(name, "number", doc, default, minimum=lo, maximum=hi, unit=unit, **kw)


def _enum(name: str, doc: str, default: Any, choices: tuple[Any, ...], **kw: Any) -> Key:
    return Key(name, "string", doc, default, enum=choices, **kw)


NETWORK = Key("network", "object", "addresses: on Azure the VNet, in the lab moved into 198.18.0.0/15 with the same offsets", keys=(
    Key("vnetCidr", "cidr", "the virtual network holding every subnet", "10.0.0.0/13", attr="network.vnet_cidr"),
    Key("brokerSubnet", "cidr", "the broker VM's subnet (its brokers' addresses too)", "10.2.0.0/24", attr="network.broker_subnet"),
    Key("clientSubnets", "array", "one subnet per balancer/client host, in order ipvs1, ipvs2, ...", ["10.3.0.0/24", "10.4.0.0/24"],
        items=Key("subnet", "cidr", "a client host's subnet"), attr="network.client_subnets"),
    Key("brokerHostAddress", "ipv4", "the broker VM's own address", None, default_doc="brokerSubnet + 10", attr="network.broker_host_address"),
    _int("clientHostOffset", "each balancer/client host's address inside its subnet", 10, 4, attr="network.client_host_offset"),
), attr="network")

BROKERS = Key("brokers", "object", "the Mosquitto brokers (containers on Azure, processes in the lab), each capped", keys=(
    _int("count", "how many brokers", 3, 1, 64, attr="brokers.count"),
    Key("addresses", "array", "one address per broker, inside brokerSubnet", None, default_doc="brokerSubnet + 20, + 21, ...",
        items=Key("address", "ipv4", "a broker's address"), attr="brokers.addresses"),
    _int("port", "the brokers' MQTT port (plaintext)", 1883, 1, 65535, attr="brokers.port"),
    _num("cpus", "each broker's CPU cap (a quota: 0.25 is a quarter of one core)", 0.25, 0, exclusive_minimum=True, unit="cores",
         attr="brokers.cpus"),
    _int("memoryMb", "each broker's memory cap", 128, 16, unit="MiB", attr="brokers.memory_mb"),
    Key("image", "string", "the broker image on Azure, a pinned Mosquitto 2.0.x tag (never latest)", "eclipse-mosquitto:2.0.20",
        attr="brokers.image"),
    _int("maxQueuedMessages", "mosquitto max_queued_messages: per client, beyond which QoS 1/2 messages are dropped", 1000, 0,
         unit="messages", attr="brokers.max_queued_messages"),
    _int("maxInflightMessages", "mosquitto max_inflight_messages: QoS 1/2 messages in flight per client", 20, 0, 65535, unit="messages",
         attr="brokers.max_inflight_messages"),
    _int("maxQueuedBytes", "mosquitto max_queued_bytes (0: no limit)", 0, 0, unit="bytes", attr="brokers.max_queued_bytes"),
    _int("memoryLimit", "mosquitto memory_limit (0: no limit)", 0, 0, unit="bytes", attr="brokers.memory_limit"),
    _int("sysInterval", "mosquitto sys_interval: how often $SYS topics are published", 1, 1, 3600, unit="s", attr="brokers.sys_interval"),
    Key("logTypes", "array", "mosquitto log_type lines; must keep notice and warning (the analysis reads them), or be [all]",
        list(DEFAULT_LOG_TYPES), items=_enum("logType", "a mosquitto log type", None, LOG_TYPES), attr="brokers.log_types",
        reference="[all] (a line per PUBLISH)"),
), attr="brokers")

BRIDGE = Key("bridge", "object", "how the brokers share messages: a star of bridges from one hub broker", keys=(
    _enum("layout", "star (the hub bridges to every other broker) or none", "star", BRIDGE_LAYOUTS, attr="bridge.layout"),
    _int("hub", "the hub broker's number (1 is broker1)", 1, 1, None, default_doc="", attr="bridge.hub"),
    _int("qos", "the bridges' QoS; at least the scenario's", 2, 0, 2, attr="bridge.qos"),
    _int("keepaliveS", "mosquitto keepalive_interval of each bridge: how long a silent bridge lives before it queues", 60, 5, 65535,
         unit="s", attr="bridge.keepalive"),
), attr="bridge")

HEALTH_CHECK = Key("healthCheck", "object", "how a balancer proves a broker alive and takes a dead one out", keys=(
    _enum("type", "none (IPVS alone), tcp (the port accepts) or mqtt (a CONNECT gets a CONNACK)", "none", HEALTH_CHECKS,
          attr="balancer.health_check.type"),
    _num("interval", "time between checks", 1.0, 0, 3600, exclusive_minimum=True, unit="s", attr="balancer.health_check.interval"),
    _int("retries", "failed checks in a row before a broker is taken out", 2, 1, 100, attr="balancer.health_check.retries"),
    _num("timeout", "time a check may take; at most interval", 1.0, 0, 3600, exclusive_minimum=True, unit="s",
         attr="balancer.health_check.timeout"),
), attr="balancer.health_check")

BALANCER = Key("balancer", "object", "the L4 balancers (IPVS directors) in front of the brokers", keys=(
    _enum("scheduler", "IPVS scheduler", "lc", SCHEDULERS, attr="balancer.scheduler"),
    Key("weights", "array", "one weight per broker (0 takes a broker out)", None, default_doc="1 for every broker",
        items=_int("weight", "a broker's weight", None, 0, 65535), attr="balancer.weights"),
    _enum("forwarding", "IPVS forwarding method", "nat", FORWARDING, attr="balancer.forwarding"),
    _int("port", "the balancers' MQTT port (plaintext)", 1883, 1, 65535, attr="balancer.port"),
    Key("timeouts", "object", "ipvsadm --set: connection table timeouts", keys=(
        _int("tcp", "established TCP connections", 900, 1, unit="s", attr="balancer.timeout_tcp"),
        _int("tcpfin", "TCP connections after FIN", 120, 1, unit="s", attr="balancer.timeout_tcpfin"),
        _int("udp", "UDP", 300, 1, unit="s", attr="balancer.timeout_udp"),
    )),
    HEALTH_CHECK,
), attr="balancer")

# the scenario's ranges are validate()'s in workloads/describe/scenario.py; its defaults are FIELDS'
_SCENARIO_DOC: dict[str, tuple[str, str, float | None, float | None, str, tuple[Any, ...]]] = {
    # key: (type, doc, minimum, maximum, unit, enum)
    "publishers": ("integer", "publishing clients, spread over the client hosts", 1, 100_000, "clients", ()),
    "subscribers": ("integer", "subscribing clients, spread over the client hosts", 0, 100_000, "clients", ()),
    "messages": ("integer", "messages of the run in total, shared by all publishers (per publisher with messagesPerPublisher)", 1, None,
                 "messages", ()),
    "messagesPerPublisher": ("boolean", "messages counts per publisher instead of for the whole run", None, None, "", ()),
    "qos": ("integer", "MQTT QoS of publishing and subscribing", 0, 2, "", QOS_LEVELS),
    "intervalMs": ("integer", "time between two messages of one publisher", 0, 3_600_000, "ms", ()),
    "payloadBytes": ("integer", f"size of each message's payload (its first {HEADER_BYTES} bytes are the bench's header)", HEADER_BYTES,
                     256 * 1024 * 1024, "bytes", ()),
    "mqttVersion": ("string", "MQTT protocol version", None, None, "", MQTT_VERSIONS),
    "topicLayout": ("string", "shared (every subscriber hears every publisher) or per-publisher", None, None, "", TOPIC_LAYOUTS),
    "topic": ("string", "the topic (per-publisher adds /<publisher>)", None, None, "", ()),
    "connectRate": ("integer", "new connections per second, per client host", 1, None, "connections/s", ()),
    "keepalive": ("integer", "MQTT keepalive of each client", 5, 65535, "s", ()),
    "cleanSession": ("boolean", "MQTT clean session (3.1.1) / clean start (5)", None, None, "", ()),
    "drainS": ("number", "how long subscribers keep listening after the last publish, at most", 0, None, "s", ()),
    "timeLimitS": ("number", "the whole run's time limit; more than drainS", 0, None, "s", ()),
    "reconnectMinMs": ("integer", "a client's first reconnect back-off (doubles per failure, jittered)", 10, 600_000, "ms", ()),
    "reconnectMaxMs": ("integer", "the reconnect back-off's ceiling; at least reconnectMinMs", 10, 600_000, "ms", ()),
}
_SCENARIO_REFERENCE = {"publishers": "480 clients, split not given", "subscribers": "480 clients, split not given",
                       "messages": "6000 per burst", "drainS": "not given", "payloadBytes": "not given"}

SCENARIO = Key("scenario", "object", "the load: what the benchmark's clients do (each key is also a command-line option)", keys=tuple(
    Key(key, typ, doc, default, minimum=lo, maximum=hi, unit=unit, enum=choices, attr=f"scenario.{attr}",
        reference=_SCENARIO_REFERENCE.get(key, ""))
    for key, (attr, _opt, default) in FIELDS.items()
    for typ, doc, lo, hi, unit, choices in [_SCENARIO_DOC[key]]
), attr="scenario")

SECURITY = Key("security", "object", "how clients and bridges reach the brokers", keys=(
    _enum("mode", "none (anonymous, plaintext), password, tls, or mtls (client certificates)", "none", SECURITY_MODES,
          attr="security.mode"),
    _enum("tlsVersion", "the lowest TLS version the brokers accept", "tlsv1.2", TLS_VERSIONS, attr="security.tls_version"),
    Key("ciphers", "string", "TLS 1.2 cipher list, OpenSSL syntax (none: OpenSSL's default)", None, nullable=True, attr="security.ciphers"),
    Key("ciphersTls13", "string", "TLS 1.3 cipher suites (none: OpenSSL's default)", None, nullable=True, attr="security.ciphers_tls13"),
    _int("tlsPort", "MQTT over TLS: replaces the brokers' and balancers' port when TLS is on", 8883, 1, 65535, attr="security.tls_port"),
    _int("certDays", "validity of the generated certificates", 30, 1, 825, unit="days", attr="security.cert_days"),
), attr="security")

def _link(cls: str, doc: str) -> Key:
    a = f"links.{_LINK_ATTR[cls]}"
    return Key(cls, "object", doc, keys=(
        _num("delayMs", "delay added to each packet, in each direction", 0.0, 0, MAX_DELAY_MS, unit="ms", attr=f"{a}.delay_ms"),
        _num("jitterMs", "netem's jitter around delayMs; at most delayMs", 0.0, 0, MAX_DELAY_MS, unit="ms", attr=f"{a}.jitter_ms"),
        _num("lossPct", "share of packets dropped at random, in each direction (all of them is a cut: a fault)", 0.0, 0, MAX_LOSS_PCT, unit="%",
             attr=f"{a}.loss_pct"),
        Key("rateMbit", "number", "the link's rate, in each direction (none: no limit)", None, minimum=0, maximum=MAX_RATE_MBIT,
            exclusive_minimum=True, nullable=True, unit="Mbit/s", attr=f"{a}.rate_mbit"),
    ), attr=a)


_LINK_ATTR = {"clientBalancer": "client_balancer", "balancerBroker": "balancer_broker", "bridge": "bridge"}
LINKS = Key("links", "object", "impaired links (tc netem in the lab; on Azure the network is Azure's and this is only recorded)", keys=(
    _link("clientBalancer", "clients to a director on another host (the centralized topology only)"),
    _link("balancerBroker", "directors to brokers, both ways"),
    _link("bridge", "between the brokers (the bridges)"),
), attr="links")

AZURE = Key("azure", "object", "Azure only: VM sizes, access, the run's limits (the lab ignores this section)", keys=(
    Key("adminCidr", "string|array", "the only source allowed to SSH to the VMs: an IPv4 CIDR or a list of them", None,
        default_doc="required"),
    Key("sshPublicKey", "string", "your OpenSSH public key (ssh-ed25519, or ssh-rsa of 2048 bits or more)", None,
        default_doc="required unless generateSshKey"),
    Key("generateSshKey", "boolean", "let the program generate the key pair (kept as a secret stack output)", False),
    Key("adminUser", "string", "the VMs' Linux user (not root or admin)", "mqttlab"),
    Key("brokerVmSize", "string", "the broker VM's size", "Standard_D2s_v5"),
    Key("balancerVmSize", "string", "each balancer/client VM's size", "Standard_D2s_v5"),
    Key("spot", "boolean", "run the VMs as Spot (cheaper, may be evicted)", False),
    Key("autoShutdown", "string", "when the VMs are deallocated: hours after each pulumi up (+2h), or a daily time HHMM; "
        "never inside the run (none: never)", None, nullable=True),
    Key("autoShutdownTimeZone", "string", "the time zone of autoShutdown (Windows time zone id)", "UTC"),
    Key("mqttCidrs", "array", "sources outside the VNet allowed to reach MQTT", [], items=Key("cidr", "string", "an IPv4 CIDR")),
    _enum("loadGenerator", "mqttlab's engine, or emqtt-bench (the reference's)", "mqttlab", LOAD_GENERATORS),
    _int("benchTimeoutS", "the benchmark's time bound on the VMs", 3600, 60, unit="s"),
))

STACK: tuple[Key, ...] = (
    _enum("topology", "distributed (each balancer the entry point of its own clients) or centralized (one balancer for all)", None,
          TOPOLOGIES, default_doc="the stack's name when it is a topology, else distributed", attr="topology"),
    NETWORK, BROKERS, BRIDGE, BALANCER, SCENARIO, SECURITY, LINKS,
    Key("faults", "array", "faults to inject, e.g. [broker2:kill@5s]: the grammar is in the faults page", [], items=Key("fault", "string", "a fault"),
        attr="faults"),
    AZURE,
    Key("runId", "string", "Azure: names the results prefix; a new one reruns the benchmark", "1"),
    Key("sshPrivateKey", "string", "Azure: the private key of sshPublicKey, for the remote commands (pulumi config set --secret)", None,
        secret=True),
    Key("sshPrivateKeyPassword", "string", "Azure: its passphrase, when it has one", None, secret=True),
)
SECTIONS = tuple(k.name for k in STACK)


# --------------------------------------------------------------------------- checking


def nearest(name: str, known: list[str] | tuple[str, ...]) -> str | None:
    """The known key a misspelt one most likely meant (``schedular`` -> ``scheduler``)."""
    folded = {k.casefold(): k for k in known}
    if name.casefold() in folded:
        return folded[name.casefold()]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:  # a prefix that is a word of its own: cpu -> cpus, keepalive -> keepaliveS
        close = [k for k in known if k.casefold().startswith(name.casefold()) or name.casefold().startswith(k.casefold())][:1]
    return close[0] if close else None


def hint(name: str, known: list[str] | tuple[str, ...], where: str = "", shown: str = "{}") -> str:
    """``did you mean X?`` for the nearest known key (``shown`` places it: ``mqttlab:{}``), else
    the known keys themselves."""
    near = nearest(name, known)
    if near:
        return f"did you mean {shown.replace('{}', near)}?"
    return f"known{' in ' + where if where else ''}: {', '.join(sorted(known))}"


def _near_namespace(ns: str) -> bool:
    return ns != NAMESPACE and (ns.casefold() == NAMESPACE or difflib.SequenceMatcher(None, ns.casefold(), NAMESPACE).ratio() >= 0.75)


def check_stack_file(doc: Mapping[str, Any], path: str) -> None:
    """Pulumi's keys at the top of a stack file; ``config:`` misspelt would run every default."""
    for key in doc:
        if key not in STACK_FILE_KEYS:
            raise UnknownKeyError(f"{path}: {key}", doc[key], hint(str(key), STACK_FILE_KEYS, "a stack file"))


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse every key of the ``mqttlab`` namespace, at any depth, that the schema does not know,
    and keys of a namespace that is a near miss of it; other namespaces (``azure-native:location``)
    belong to their providers and pass."""
    for full, value in sorted(cfg.items(), key=lambda kv: str(kv[0])):
        full = str(full)
        ns, colon, name = full.partition(":")
        if not colon:  # Pulumi itself refuses it: config keys are <namespace>:<name> (config.ParseKey)
            raise UnknownKeyError(full, value, f"a stack file's keys are namespace:name; did you mean {NAMESPACE}:{nearest(full, SECTIONS) or full}?")
        if _near_namespace(ns):
            raise UnknownKeyError(full, value, f"the namespace {ns} is not {NAMESPACE}; did you mean {NAMESPACE}:{name}?")
        if ns != NAMESPACE:
            continue
        key = next((k for k in STACK if k.name == name), None)
        if key is None:
            section, dot, rest = name.partition(".")
            if dot and section in SECTIONS:
                raise UnknownKeyError(full, value, f"settings are nested in a stack file: write {rest.split('.')[0]}: under {NAMESPACE}:{section}: "
                                                   f"(pulumi config set --path '{full}' nests it so)")
            raise UnknownKeyError(full, value, hint(name, SECTIONS, f"{NAMESPACE}", f"{NAMESPACE}:{{}}"))
        check_value(key, value, full)


def check_value(key: Key, value: Any, where: str) -> None:
    """Unknown keys inside a section (and inside lists of sections); value types stay the parser's."""
    if value is None:
        return
    if key.type == "object" and key.keys:
        if not isinstance(value, Mapping):
            if "." not in where:  # a whole section: its keys are many, and documented
                raise ConfigError(where, value, "must be a mapping of settings")
            keys = ", ".join(k.name + (f" ({', '.join(map(str, k.enum))})" if k.enum else "") for k in key.keys)
            raise ConfigError(where, value, f"must be a mapping with {keys}")
        names = [k.name for k in key.keys]
        unknown = sorted(str(n) for n in value if key.child(str(n)) is None)  # the first, sorted: the same whatever the order
        if unknown:
            raise UnknownKeyError(f"{where}.{unknown[0]}", value[unknown[0]], hint(unknown[0], names, where, f"{where}.{{}}"))
        for child in key.keys:
            check_value(child, value.get(child.name), f"{where}.{child.name}")
    elif key.secret and isinstance(value, Mapping):  # an encrypted value: {secure: ...}
        if set(value) != {"secure"}:
            raise ConfigError(where, value, "must be a string, or a secret as pulumi config set --secret writes it ({secure: ...})")


# --------------------------------------------------------------------------- paths (campaigns, overrides)


def leaf_paths() -> dict[str, Key]:
    """``section.key`` (and deeper, ``balancer.healthCheck.type``) for every key, sections too."""
    out: dict[str, Key] = {}

    def walk(prefix: str, key: Key) -> None:
        out[prefix] = key
        for child in key.keys:
            walk(f"{prefix}.{child.name}", child)

    for k in STACK:
        walk(k.name, k)
    return out


def check_path(path: str) -> Key:
    """A dotted override key (``brokers.cpus``) as a campaign or the command line spells it."""
    paths = leaf_paths()
    if path in paths:
        return paths[path]
    parent, _, name = path.rpartition(".")
    if parent in paths and paths[parent].keys:
        siblings = [k.name for k in paths[parent].keys]
        raise UnknownKeyError(path, None, hint(name, siblings, parent, f"{parent}.{{}}"))
    raise UnknownKeyError(path, None, hint(path, list(paths), "the stack file", "{}"))


# --------------------------------------------------------------------------- reading back


def _plain(value: Any) -> Any:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv4Network)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return getattr(value, "spec", None) or dataclasses.asdict(value)
    return value


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def effective(cfg: Any, raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The configuration that will run, every default filled in, in the stack file's own shape:
    what the parser made of each key (``cfg``, an :class:`ExperimentConfig`), and for the keys it
    does not read (Azure's) the file's value over the schema's default. Secrets are never shown."""
    raw = cfg.raw if raw is None else raw

    def value_of(key: Key, given: Any) -> Any:
        if key.secret:
            return "(secret, set)" if given is not None else None
        if key.keys:
            given = given if isinstance(given, Mapping) else {}
            return {k.name: value_of(k, given.get(k.name)) for k in key.keys}
        if key.attr:
            return _plain(_attr(cfg, key.attr))
        return given if given is not None else key.default

    out: dict[str, Any] = {}
    for key in STACK:
        given = raw.get(f"{NAMESPACE}:{key.name}")
        if key.name == "azure" and given is None:
            continue  # a lab-only stack has no Azure section; its defaults would only add noise
        if key.secret and given is None:
            continue
        out[f"{NAMESPACE}:{key.name}"] = value_of(key, given)
    return out


def walk(keys: tuple[Key, ...] = STACK, prefix: str = "") -> Iterator[tuple[str, Key]]:
    """Every key with its dotted path, depth first, sections before their keys."""
    for k in keys:
        path = f"{prefix}{k.name}"
        yield path, k
        yield from walk(k.keys, path + ".")


# --------------------------------------------------------------------------- campaign files

CAPACITY = Key("capacity", "object", "the search of `mqttlab campaign capacity` for the highest offered rate within a loss threshold", keys=(
    _num("thresholdPct", "the loss a rate may have and still count as carried", 0.1, 0, unit="%"),
    _num("startRate", "the first offered rate tried", 100.0, 0, exclusive_minimum=True, unit="msg/s"),
    _num("minRate", "the lowest rate the search goes to", 1.0, 0, exclusive_minimum=True, unit="msg/s"),
    _num("maxRate", "the highest rate the search goes to", 100000.0, 0, exclusive_minimum=True, unit="msg/s"),
    _num("durationS", "publishing time per step", 5.0, 0, exclusive_minimum=True, unit="s"),
    _int("repetitions", "runs per step", 2, 1),
    _num("resolution", "the bracket's width, relative, at which the search stops", 0.1, 0, exclusive_minimum=True),
    _int("maxSteps", "steps at most per configuration", 20, 1),
))

CAMPAIGN: tuple[Key, ...] = (
    Key("name", "string", "the campaign's name (default: the file's name)", None),
    Key("stack", "string", "the base stack: reads Pulumi.<stack>.yaml", None, default_doc="required"),
    _enum("place", "where the points run", "lab", ("lab", "azure")),
    _enum("balancer", "the lab's balancer for every point (ipvs where the kernel has it, else a stand-in)", None,
          ("ipvs", "nftables", "haproxy")),
    _int("repetitions", "runs of each configuration", 1, 1),
    _int("seed", "seeds the randomized order of the points", 1),
    Key("set", "object", "settings fixed for every point: a short name (publishers, cpus, scheduler, ...) or a stack key as section.key", {}),
    Key("factors", "object", "each factor's levels, as a list; every combination is a configuration", {}),
    Key("compare", "string|array", "the factors the report compares (default: the first that is not a load)", None),
    Key("vm", "boolean", "run every point inside the micro-VM (real IPVS)", False),
    CAPACITY,
    Key("projectDir", "string", "the folder with the stack files, relative to the campaign file", None, default_doc="the working directory"),
)


# --------------------------------------------------------------------------- JSON Schema (editors)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SECURE = {"type": "object", "properties": {"secure": {"type": "string"}}, "required": ["secure"], "additionalProperties": False}


def _json(key: Key) -> dict[str, Any]:
    d: dict[str, Any] = {"description": key.doc + (f" ({key.unit})" if key.unit else "")}
    if key.secret:
        d["anyOf"] = [{"type": "string"}, SECURE]
        return d
    if key.type == "string|array":
        d["anyOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    elif key.type == "cidr":
        d.update(type="string", pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")
    elif key.type == "ipv4":
        d.update(type="string", format="ipv4")
    elif key.type == "object":
        d["type"] = "object"
        if key.keys:
            d.update(properties={k.name: _json(k) for k in key.keys}, additionalProperties=False)
    else:
        d["type"] = key.type
        if key.items is not None:
            d["items"] = _json(key.items)
    if key.nullable:
        d["type"] = [d["type"], "null"]
    if key.enum:
        d["enum"] = list(key.enum)
    if key.minimum is not None:
        d["exclusiveMinimum" if key.exclusive_minimum else "minimum"] = key.minimum
    if key.maximum is not None:
        d["maximum"] = key.maximum
    if key.default is not None:
        d["default"] = key.default
    return d


def stack_json_schema() -> dict[str, Any]:
    """A stack file, for a YAML language server: the mqttlab keys closed, other providers' open."""
    config = {"type": "object", "properties": {f"{NAMESPACE}:{k.name}": _json(k) for k in STACK},
              "patternProperties": {rf"^(?!{NAMESPACE}:)[A-Za-z0-9_.-]+:.+$": {"description": "another provider's setting"}},
              "additionalProperties": False}
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "mqttlab stack file (Pulumi.<stack>.yaml)", "type": "object",
            "properties": {"config": config, "secretsprovider": {"type": "string"}, "encryptedkey": {"type": "string"},
                           "encryptionsalt": {"type": "string"}, "environment": {"description": "Pulumi ESC environments"}},
            "additionalProperties": False}


def campaign_json_schema(aliases: Mapping[str, str]) -> dict[str, Any]:
    """A campaign file; ``set`` and ``factors`` take the short names and every stack key path."""
    paths = {p: k for p, k in leaf_paths().items() if not k.secret} | {a: leaf_paths()[p] for a, p in aliases.items()}
    paths["balancer"] = next(k for k in CAMPAIGN if k.name == "balancer")
    props = {k.name: _json(k) for k in CAMPAIGN}
    props["set"] |= {"properties": {p: _json(k) for p, k in sorted(paths.items())}, "additionalProperties": False}
    props["factors"] |= {"properties": {p: {"type": "array", "minItems": 1, "items": _json(k)} for p, k in sorted(paths.items())},
                         "additionalProperties": False}
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "mqttlab campaign file", "type": "object", "properties": props,
            "required": ["stack"], "additionalProperties": False}


# --------------------------------------------------------------------------- documentation


def _default_text(key: Key) -> str:
    if key.default_doc:
        return key.default_doc
    if key.default is None:
        return "none"
    if isinstance(key.default, bool):
        return str(key.default).lower()
    if isinstance(key.default, list):
        return "[" + ", ".join(map(str, key.default)) + "]" if key.default else "[]"
    return str(key.default)


def _allowed_text(key: Key) -> str:
    if key.enum:
        return ", ".join(f"`{v}`" for v in key.enum)
    lo, hi = key.minimum, key.maximum
    num = (lambda v: f"{v:g}") if key.type == "number" else (lambda v: f"{int(v):,}")
    if lo is not None and hi is not None:
        return f"{num(lo)} to {num(hi)}" if not key.exclusive_minimum else f"> {num(lo)}, <= {num(hi)}"
    if lo is not None:
        return f"> {num(lo)}" if key.exclusive_minimum else f">= {num(lo)}"
    if key.type in ("cidr", "ipv4"):
        return "IPv4 CIDR" if key.type == "cidr" else "IPv4 address"
    if key.type == "array" and key.items is not None:
        return f"list of: {_allowed_text(key.items) or key.items.type}"
    return {"boolean": "true, false", "string|array": "one or a list"}.get(key.type, "")


def _md_table(rows: list[tuple[str, Key]]) -> list[str]:
    out = ["| key | meaning | unit | allowed | default |", "| --- | --- | --- | --- | --- |"]
    for path, k in rows:
        ref = f" Reference: {k.reference}." if k.reference else ""
        out.append(f"| `{path}` | {k.doc}{ref} | {k.unit} | {_allowed_text(k)} | {_default_text(k)} |")
    return out + [""]


def markdown_reference(keys: tuple[Key, ...] = STACK, prefix: str = NAMESPACE + ":") -> str:
    """Every key: one table of the single keys, then one per section (``docs/configuration.md``
    holds it for stack files, tests keep it so)."""
    single = [(f"{prefix}{k.name}", k) for k in keys if not k.keys]
    out = ["### Single keys", "", *_md_table(single)]
    for top in (k for k in keys if k.keys):
        out += [f"### `{prefix}{top.name}`", "", top.doc[:1].upper() + top.doc[1:] + ".", ""]
        out += _md_table([(p, k) for p, k in walk(top.keys) if not k.keys])
    return "\n".join(out)


def readme_table() -> str:
    """The README's one-row-per-section table of the stack file."""
    rows = ["| key | holds | default |", "| --- | --- | --- |"]
    for top in STACK:
        if top.keys:
            names = ", ".join(f"`{p}`" for p, k in walk(top.keys) if not k.keys)
            defaults = "; ".join(_default_text(k) for _p, k in walk(top.keys) if not k.keys)
            rows.append(f"| `{NAMESPACE}:{top.name}` | {top.doc}: {names} | {defaults} |")
        else:
            rows.append(f"| `{NAMESPACE}:{top.name}` | {top.doc} | {_default_text(top)} |")
    return "\n".join(rows)


def generated_blocks(aliases: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """What each generated block of the documentation holds: (file, marker) -> text. ``python
    scripts/docs.py`` writes them; a test fails when a file and this table drift apart."""
    short = ", ".join(f"`{a}`" for a in sorted(aliases) if not aliases[a].startswith("scenario."))
    return {
        ("docs/configuration.md", "stack-table"): readme_table(),
        ("docs/configuration.md", "stack-reference"): markdown_reference(),
        ("docs/configuration.md", "campaign-reference"): markdown_reference(CAMPAIGN, "")
        + f"\nShort names in `set` and `factors`: every scenario key (`publishers`, `qos`, ...), and {short}.\n",
    }


def splice(text: str, marker: str, body: str) -> str:
    """``text`` with the block between ``<!-- generated: marker -->`` and ``<!-- end: marker -->`` replaced."""
    begin, end = f"<!-- generated: {marker} -->", f"<!-- end: {marker} -->"
    head, found, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise ValueError(f"no block {begin} ... {end}")
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def block(text: str, marker: str) -> str:
    """The text of one generated block, as written."""
    begin, end = f"<!-- generated: {marker} -->", f"<!-- end: {marker} -->"
    return text.partition(begin)[2].partition(end)[0].strip()
