"""The load scenario: what the benchmark does, shared by the stack files, the CLI and the bench.

Message counts are totals for the whole run (like emqtt-bench's global ``-L`` and the reference's
6000 per burst); they are split over publishers here, once, so every host agrees on which
publisher sends how many messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from workloads.base.errors import ConfigError

QUIET_S = 3.0  # a drain ends early once no delivery arrived for this long (or all did)
HEADER_BYTES = 28  # publisher id u32, sequence u32, send time ns u64, run tag u32, intended send time ns u64
QOS_LEVELS = (0, 1, 2)
MQTT_VERSIONS = ("3.1.1", "5")
TOPIC_LAYOUTS = ("shared", "per-publisher")

# camelCase key in the stack file -> (attribute, CLI option, default)
FIELDS: dict[str, tuple[str, str, Any]] = {
    "publishers": ("publishers", "--publishers", 240),
    "subscribers": ("subscribers", "--subscribers", 240),
    "messages": ("messages", "--messages", 6000),
    "messagesPerPublisher": ("messages_per_publisher", "--messages-per-publisher", False),
    "qos": ("qos", "--qos", 1),
    "intervalMs": ("interval_ms", "--interval-ms", 500),
    "payloadBytes": ("payload_bytes", "--payload-bytes", 64),
    "mqttVersion": ("mqtt_version", "--mqtt-version", "3.1.1"),
    "topicLayout": ("topic_layout", "--topic-layout", "shared"),
    "topic": ("topic", "--topic", "bench/test"),
    "connectRate": ("connect_rate", "--connect-rate", 100),
    "keepalive": ("keepalive", "--keepalive", 60),
    "cleanSession": ("clean_session", "--clean-session", True),
    "drainS": ("drain_s", "--drain-s", 5.0),
    "timeLimitS": ("time_limit_s", "--time-limit-s", 600.0),
    "reconnectMinMs": ("reconnect_min_ms", "--reconnect-min-ms", 200),
    "reconnectMaxMs": ("reconnect_max_ms", "--reconnect-max-ms", 5000),
}


@dataclass(frozen=True)
class Scenario:
    publishers: int = 240
    subscribers: int = 240
    messages: int = 6000
    messages_per_publisher: bool = False
    qos: int = 1
    interval_ms: int = 500
    payload_bytes: int = 64
    mqtt_version: str = "3.1.1"
    topic_layout: str = "shared"
    topic: str = "bench/test"
    connect_rate: int = 100
    keepalive: int = 60
    clean_session: bool = True
    drain_s: float = 5.0
    time_limit_s: float = 600.0
    reconnect_min_ms: int = 200  # back-off of a client that lost its connection: doubles per failed
    reconnect_max_ms: int = 5000  # attempt up to the max, each wait drawn in [half, full] (jitter)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Scenario:
        """The scenario a manifest recorded (``to_dict``); keys it lacks take their defaults, so a
        run written by an older or partial writer still says what it planned."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    def cli_args(self) -> list[str]:
        """Every setting as the bench's options, so another process runs exactly this scenario."""
        out: list[str] = []
        for attr, opt, _default in FIELDS.values():
            v = getattr(self, attr)
            out += [opt, str(v).lower() if isinstance(v, bool) else str(v)]
        return out

    def messages_of(self, publisher: int) -> int:
        """How many messages publisher ``publisher`` (0-based, global) sends in the burst."""
        if self.messages_per_publisher:
            return self.messages
        base, extra = divmod(self.messages, self.publishers)
        return base + (1 if publisher < extra else 0)

    @property
    def total_messages(self) -> int:
        return sum(self.messages_of(p) for p in range(self.publishers))

    def topic_of(self, publisher: int) -> str:
        return self.topic if self.topic_layout == "shared" else f"{self.topic}/{publisher}"

    def subscription_of(self, subscriber: int) -> tuple[str, int | None]:
        """The topic a subscriber subscribes to, and the one publisher it hears (None: all)."""
        if self.topic_layout == "shared":
            return self.topic, None
        pub = subscriber % self.publishers
        return f"{self.topic}/{pub}", pub

    def planned_pairs(self) -> list[tuple[int, int, int]]:
        """Every (subscriber, publisher it hears, messages that publisher plans) of the run: what
        a run killed before writing its counts is measured against."""
        out: list[tuple[int, int, int]] = []
        for s in range(self.subscribers):
            _, pub = self.subscription_of(s)
            out += [(s, p, self.messages_of(p)) for p in (range(self.publishers) if pub is None else (pub,))]
        return out

    def expected_deliveries(self, subscribers: Iterable[int] | None = None) -> int:
        subs = subscribers if subscribers is not None else range(self.subscribers)
        total = 0
        for s in subs:
            _, pub = self.subscription_of(s)
            total += self.total_messages if pub is None else self.messages_of(pub)
        return total


def _err(key: str, value: object, allowed: str) -> Exception:
    return ConfigError(key, value, allowed)


def validate(s: Scenario, names: Mapping[str, str]) -> Scenario:
    """Refuse scenarios that cannot run, naming the key as the user wrote it."""

    def whole(attr: str, minimum: int, maximum: int | None = None) -> None:
        v = getattr(s, attr)
        if isinstance(v, bool) or not isinstance(v, int):
            raise _err(names[attr], v, "must be a whole number")
        if v < minimum or (maximum is not None and v > maximum):
            rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise _err(names[attr], v, f"must be {rng}")

    whole("publishers", 1, 100_000)
    whole("subscribers", 0, 100_000)
    whole("messages", 1)
    whole("interval_ms", 0, 3_600_000)
    whole("payload_bytes", HEADER_BYTES, 256 * 1024 * 1024)
    whole("connect_rate", 1)
    whole("keepalive", 5, 65535)
    whole("reconnect_min_ms", 10, 600_000)
    whole("reconnect_max_ms", s.reconnect_min_ms, 600_000)
    if s.qos not in QOS_LEVELS or isinstance(s.qos, bool):
        raise _err(names["qos"], s.qos, "must be 0, 1 or 2")
    if s.mqtt_version not in MQTT_VERSIONS:
        raise _err(names["mqtt_version"], s.mqtt_version, "must be 3.1.1 or 5")
    if s.topic_layout not in TOPIC_LAYOUTS:
        raise _err(names["topic_layout"], s.topic_layout, "must be shared or per-publisher")
    if not s.topic or any(c in s.topic for c in "#+\0"):
        raise _err(names["topic"], s.topic, "must be a non-empty topic name without wildcards")
    for attr in ("clean_session", "messages_per_publisher"):
        if not isinstance(getattr(s, attr), bool):
            raise _err(names[attr], getattr(s, attr), "must be true or false")
    for attr in ("drain_s", "time_limit_s"):
        v = getattr(s, attr)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise _err(names[attr], v, "must be a number of seconds >= 0")
    if s.time_limit_s <= s.drain_s:
        raise _err(names["time_limit_s"], s.time_limit_s, f"must exceed drainS ({s.drain_s}) so publishing has time to run")
    if not s.messages_per_publisher and s.messages < s.publishers:
        raise _err(names["messages"], s.messages, f"must be >= publishers ({s.publishers}): it is the total for the run, shared by all publishers")
    return s


def scenario_from_mapping(sec: Mapping[str, Any], prefix: str, names: Mapping[str, str] | None = None) -> Scenario:
    """Build and validate; errors name ``prefix + key`` or, when given, ``names[key]``."""
    unknown = sorted(set(sec) - set(FIELDS))
    if unknown:
        raise _err(prefix + unknown[0], sec[unknown[0]], f"is not a scenario setting; known: {', '.join(FIELDS)}")
    shown: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, (attr, _opt, default) in FIELDS.items():
        v = sec.get(key, default)
        if attr == "mqtt_version" and v is not None:
            v = str(v)
            v = "5" if v in ("5", "5.0") else v
        values[attr] = default if v is None else v
        shown[attr] = names[key] if names and key in names else prefix + key
    if isinstance(values["drain_s"], int) and not isinstance(values["drain_s"], bool):
        values["drain_s"] = float(values["drain_s"])
    if isinstance(values["time_limit_s"], int) and not isinstance(values["time_limit_s"], bool):
        values["time_limit_s"] = float(values["time_limit_s"])
    return validate(Scenario(**values), shown)


CLI_NAMES = {attr: opt for _k, (attr, opt, _d) in FIELDS.items()}
