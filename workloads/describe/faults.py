"""Faults as data: what fails, where, when after publishing starts, and for how long.

A fault is written ``TARGET:ACTION@START[+DURATION]`` on the command line (``--fault``) and in
the stack file (``mqttlab:faults``, a list of the same strings), e.g.::

    broker2:kill@5s                 SIGKILL broker2 five seconds into publishing (it stays dead)
    broker2:pause@5s+3s             SIGSTOP for 3 s, then SIGCONT (alive for TCP, deaf to MQTT)
    broker2:restart@5s              SIGKILL and start it again at once (+2s: after 2 s)
    bridge:broker1-broker3:cut@5s+4s  drop every packet between the two ends of that bridge
    director:ipvs1:kill@5s          the director goes silent: its balancer stops answering and
                                    forwarding (no resets, as when a VM dies); +D brings it back

Parsing and checking are pure, so a bad fault stops a run before anything is created, with the
key (``--fault`` or ``mqttlab:faults[i]``) and what is allowed. Carrying faults out is the
business of the place that runs the experiment: one schedule (:mod:`workloads.hosts.faults`), the
lab's actions (:mod:`workloads.hosts.lab.inject`) and a VM's (:mod:`workloads.hosts.azure.inject`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

ACTIONS = {"broker": ("kill", "pause", "restart"), "bridge": ("cut",), "director": ("kill",)}
NEEDS_DURATION = {("broker", "pause")}
NO_DURATION = {("broker", "kill")}
_TIME = r"(\d+(?:\.\d+)?)(ms|s)?"
_SPEC = re.compile(rf"^(?:(bridge|director):)?([A-Za-z0-9_.-]+):([a-z]+)@{_TIME}(?:\+{_TIME})?$")


class FaultError(ValueError):
    """Raised with a message naming the fault and what is allowed; callers wrap it in ConfigError."""


@dataclass(frozen=True)
class Fault:
    spec: str  # as written
    kind: str  # broker, bridge, director
    target: str  # broker1, broker1-broker3, ipvs1
    action: str
    at_s: float  # seconds after publishing starts
    duration_s: float | None  # None: until the end of the run (kill), or instantaneous (restart)

    @property
    def end_s(self) -> float | None:
        return None if self.duration_s is None else self.at_s + self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seconds(number: str, unit: str | None) -> float:
    return float(number) / (1000.0 if unit == "ms" else 1.0)


def parse_fault(text: str) -> Fault:
    """One ``TARGET:ACTION@START[+DURATION]``; raises :class:`FaultError` saying what is wrong."""
    if not isinstance(text, str):
        raise FaultError("must be a string like broker2:kill@5s")
    m = _SPEC.match(text.strip())
    if not m:
        raise FaultError("must look like broker2:kill@5s, broker2:pause@5s+3s, bridge:broker1-broker3:cut@5s+4s or director:ipvs1:kill@5s "
                         "(times in s or ms)")
    kind = m.group(1) or "broker"
    target, action = m.group(2), m.group(3)
    if kind == "broker" and not re.fullmatch(r"broker\d+", target):
        raise FaultError(f"unknown target {target!r}: a broker (broker1, broker2, ...), bridge:<hub>-<broker> or director:<host>")
    if action not in ACTIONS[kind]:
        raise FaultError(f"a {kind} cannot {action!r}; allowed: {', '.join(ACTIONS[kind])}")
    at = _seconds(m.group(4), m.group(5))
    duration = _seconds(m.group(6), m.group(7)) if m.group(6) else None
    if (kind, action) in NEEDS_DURATION and not duration:
        raise FaultError(f"{kind}:{action} needs a duration > 0, e.g. {target}:{action}@{m.group(4)}{m.group(5) or 's'}+3s")
    if (kind, action) in NO_DURATION and duration is not None:
        raise FaultError(f"{kind}:{action} is final; to bring it back use {target}:restart@...+DOWNTIME")
    if duration is not None and duration <= 0 and (kind, action) != ("broker", "restart"):
        raise FaultError("the duration must be > 0")
    return Fault(text.strip(), kind, target, action, at, duration)


def check_targets(faults: Sequence[Fault], brokers: Sequence[str], bridges: Sequence[str], directors: Sequence[str],
                  time_limit_s: float, keys: Sequence[str]) -> None:
    """Every target exists in this plan, starts inside the run, and no two faults hit one target
    at overlapping times (the second would undo or mask the first). Raises (key, message)."""
    known = {"broker": brokers, "bridge": bridges, "director": directors}
    spans: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for f, key in zip(faults, keys, strict=True):
        names = known[f.kind]
        if f.target not in names:
            have = ", ".join(names) or "none in this topology"
            raise TargetError(key, f.spec, f"no {f.kind} {f.target!r} in this plan; {f.kind}s: {have}")
        if f.at_s >= time_limit_s:
            raise TargetError(key, f.spec, f"starts after the run's time limit ({time_limit_s:g} s)")
        end = f.end_s if f.end_s is not None else (f.at_s if f.action == "restart" else float("inf"))
        for a, b, other in spans.get((f.kind, f.target), []):
            if f.at_s <= b and a <= end:
                raise TargetError(key, f.spec, f"overlaps {other} on the same {f.kind}")
        spans.setdefault((f.kind, f.target), []).append((f.at_s, end, f.spec))


class TargetError(FaultError):
    def __init__(self, key: str, spec: str, why: str) -> None:
        self.key = key
        self.spec = spec
        super().__init__(why)
