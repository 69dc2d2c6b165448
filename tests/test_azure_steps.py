"""The Azure-only host steps that need no VM: what a failing step leaves behind, which addresses
brokers-up takes back from eth0, and the broker probe against real Mosquitto on loopback."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workloads.base.errors import LabError
from workloads.bench import command as benchcmd
from workloads.hosts.azure import bench, common
from workloads.hosts.azure.brokers import container_story, probe_brokers, stray_addresses


def args_for(tmp: Path, host: str = "ipvs1") -> argparse.Namespace:
    return argparse.Namespace(stack="distributed", project_dir=str(ROOT), runs=str(tmp / "runs"), run_id="3", host=host, load_generator="mqttlab",
                              start_at=None)


def test_a_failed_publisher_run_is_recorded_and_does_not_stop_collection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rd = tmp_path / "runs" / "3"
    common.record_step(rd, "ipvs1", "bench-subs", "ok")
    fake = [sys.executable, "-c", "import sys; print('{\"complete\": false}'); sys.exit(3)"]  # a real process that fails as the bench does
    monkeypatch.setattr(benchcmd, "mqttlab", lambda: fake)
    assert bench.cmd_bench_pubs(args_for(tmp_path)) == 0
    doc = json.loads((rd / "status" / "ipvs1-bench-pubs.json").read_text())
    assert doc["status"] == "failed" and "exited 3" in doc["detail"] and doc["host"] == "ipvs1"
    common.record_step(rd, "ipvs2", "bench-subs", "failed", "subscribers not ready")
    assert bench.cmd_bench_pubs(args_for(tmp_path, "ipvs2")) == 0  # no subscribers here: publishing would only measure loss
    assert json.loads((rd / "status" / "ipvs2-bench-pubs.json").read_text())["status"] == "skipped"


def test_brokers_up_takes_back_only_the_broker_addresses() -> None:
    shown = ("2: eth0    inet 10.2.0.10/24 metric 100 brd 10.2.0.255 scope global eth0\\       valid_lft forever\n"
             "2: eth0    inet 10.2.0.20/24 brd 10.2.0.255 scope global secondary eth0\\       valid_lft forever\n"
             "2: eth0    inet 10.2.0.22/24 brd 10.2.0.255 scope global secondary eth0\\       valid_lft forever\n")
    assert stray_addresses(shown, ["10.2.0.20", "10.2.0.21", "10.2.0.22"]) == ["10.2.0.20/24", "10.2.0.22/24"]
    assert stray_addresses("", ["10.2.0.20"]) == []


def test_a_broker_that_does_not_answer_is_told_with_what_docker_says_of_its_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The only place a broker that exited on its configuration says why is its container's log."""
    import os

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "docker").write_text('#!/bin/sh\ncase "$1" in\n  inspect) echo "exited (exit 3) ";;\n'
                                 '  logs) echo "1764700000: Error: Unable to open config file /mosquitto/config/mosquitto.conf." >&2;;\n'
                                 '  *) exit 1;;\nesac\n')
    (bin_ / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    told = container_story("mqttlab-broker1")
    assert told == ("container mqttlab-broker1: exited (exit 3); its log: "
                    "1764700000: Error: Unable to open config file /mosquitto/config/mosquitto.conf."), told


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n")
    p = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):  # until it listens (bounded)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    p.terminate()
    p.wait(timeout=10)


def test_probe_names_the_unreachable_broker(broker: int) -> None:
    ok = probe_brokers([("broker1", "127.0.0.1", broker)], attempts=3, pause_s=0.2)
    assert len(ok) == 1 and ok[0].startswith(f"broker1 127.0.0.1:{broker} answers: ")
    dead = free_port()
    with pytest.raises(LabError, match=rf"broker2 127\.0\.0\.1:{dead}") as info:
        probe_brokers([("broker1", "127.0.0.1", broker), ("broker2", "127.0.0.1", dead)], attempts=2, pause_s=0.1)
    assert "broker1" not in str(info.value).split("attempts:")[1]


def test_probe_names_a_broker_that_never_answers_and_gives_up_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped broker container's address answers nothing, so the subscription hangs: that
    attempt fails naming the broker (it used to end the whole probe with a bare "did not
    finish"), and no attempt starts past the probe's bound."""
    from workloads.hosts.azure import brokers

    monkeypatch.setattr(brokers, "PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody answers the CONNECT
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(LabError, match=rf"broker3 127\.0\.0\.1:{port} \(no answer within 0\.5s\)"):
            probe_brokers([("broker3", "127.0.0.1", port)], attempts=30, pause_s=0.1, within_s=2)
        assert time.monotonic() - t0 < 10
