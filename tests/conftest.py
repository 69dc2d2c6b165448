"""Shared fixtures: test network namespaces and real Mosquitto brokers in them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workloads.describe.config import ExperimentConfig, load_stack, renumber
from workloads.describe.plan import Plan, build_plan
from workloads.hosts.lab import netns
from workloads.render.files import render_files, write_files
from workloads.render.security import Material, generate

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MQTTLAB = [PY, "-m", "workloads.cli"]


@pytest.fixture
def make_ns() -> Iterator[Callable[[str], str]]:
    """Create namespaces named for this test process; all are deleted afterwards."""
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"mqttlab-test{os.getpid()}-{tag}"
        netns.delete_namespace(name)
        netns.add_namespace(name)
        made.append(name)
        return name

    yield make
    for name in made:
        netns.delete_namespace(name)


@dataclass
class Cluster:
    ns: str
    plan: Plan
    cfg: ExperimentConfig
    files: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    material: Material | None = None

    def addr(self, i: int) -> str:
        return self.plan.brokers[i].address

    def ns_run(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return netns.run(cmd, ns=self.ns, check=False, timeout=timeout)


def start_cluster(ns: str, cfg: ExperimentConfig, out: Path, material: Material | None = None) -> Cluster:
    """The rendered mosquitto.conf of every broker, loaded by real mosquitto processes in ``ns``."""
    plan = build_plan(cfg)
    if material is None and cfg.security.enabled:
        material = generate(plan, cfg.security)
    write_files(render_files(plan, cfg, material, root=str(out / "brokers")), out)
    for b in plan.brokers:
        netns.run(["ip", "addr", "add", f"{b.address}/32", "dev", "lo"], ns=ns)
    cl = Cluster(ns, plan, cfg, out, material=material)
    for b in plan.brokers:
        cl.procs.append(netns.spawn(["mosquitto", "-c", str(out / "brokers" / b.name / "mosquitto.conf")], ns, out / f"{b.name}.log"))
    for b in plan.brokers:
        netns.wait_tcp(ns, b.address, b.port)
    return cl


@pytest.fixture
def cluster(make_ns: Callable[[str], str], tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def make(stack: str = "distributed", overrides: dict[str, object] | None = None,
             material: Callable[[Plan, ExperimentConfig], Material] | None = None) -> Cluster:
        cfg = load_stack(stack, ROOT)
        if overrides:
            cfg = cfg.with_overrides(overrides)
        cfg = renumber(cfg)
        mat = material(build_plan(cfg), cfg) if material else None
        cl = start_cluster(make_ns(f"brk{len(started)}"), cfg, tmp_path / f"cluster{len(started)}", mat)
        started.append(cl)
        return cl

    yield make
    for cl in started:
        for p in cl.procs:
            netns.stop(p)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Pulumi mock runtime leaves its threads and event loop behind in the test process, and
    after the contract-checked programs a paho client running in this process (loop_start) was
    seen to stall: its publishes never reached the broker. The Azure program's tests therefore run
    last, after every test that moves real MQTT traffic from this process."""
    items.sort(key=lambda item: item.path.name.startswith("test_azure"))
