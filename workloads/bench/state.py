"""What a worker is asked to run (specs) and what it knows about each of its clients (state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workloads.bench.client import BenchClient
from workloads.describe.scenario import Scenario
from workloads.rundir.saturation import Lateness, ReceiveBacklog


@dataclass
class ClientSpec:
    role: str  # "pub" or "sub"
    index: int  # global publisher or subscriber number
    client_id: str
    target: str  # host:port


@dataclass
class WorkerSpec:
    worker: int
    host: str
    out: str  # folder for this host's records
    scenario: Scenario
    tag: int
    clients: list[ClientSpec]
    connect_rate: float  # per second, this worker's share
    role: str = "run"  # run, sub or pub: several bench processes may share a host's folder
    security: dict[str, Any] = field(default_factory=dict)  # role -> workloads.render.security.ClientSecurity

    @property
    def label(self) -> str:
        """File suffix: unique per process role and worker on one host."""
        return f"{self.role}{self.worker}"


@dataclass
class ClientState:
    spec: ClientSpec
    client: BenchClient | None = None
    connected: bool = False
    subscribed: bool = False
    connected_at: float = 0.0
    local: str = ""
    disconnects: int = 0
    attempted: float = 0.0  # last connection attempt, for reconnecting
    connect_s: float = 0.0  # from the successful attempt to its CONNACK
    retry_at: float = 0.0  # earliest next attempt if this one fails (jittered back-off)
    failures: int = 0  # consecutive attempts without a CONNACK
    lost_at: float = 0.0  # when an established connection was lost (0: not lost)
    lost_local: str = ""
    # publisher
    planned: int = 0
    sent: int = 0
    acked: int = 0
    failed: int = 0
    refused: int = 0  # acknowledged with a failure reason (MQTT 5), e.g. not authorized
    first_send: float = 0.0
    last_send: float = 0.0
    max_behind: float = 0.0
    late: Lateness = field(default_factory=Lateness)
    # subscriber: per publisher [bitmap, unique, duplicates, out_of_order, last_seq]
    seen: dict[int, list[Any]] = field(default_factory=dict)
    foreign: int = 0
    backlog: ReceiveBacklog = field(default_factory=lambda: ReceiveBacklog(0.0))
