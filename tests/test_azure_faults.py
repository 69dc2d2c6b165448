"""``mqttlab:faults`` as the Azure VMs carry them out, run for real where this machine can: the
real fault process (``mqttlab host faults-start`` / ``faults-run``), real nftables tables in
throwaway network namespaces (one per "container" or "director VM", never the host's own), and
a ``docker`` stand-in (tests/fake_docker.py) that records every call and refuses what the
engine refuses. Only the Docker engine and the VMs are missing."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from workloads.describe.cliargs import load
from workloads.describe.plan import build_plan
from workloads.hosts.azure import bench as azure_bench
from workloads.hosts.azure import common, inject
from workloads.hosts.azure import faults as faultsteps

BROKERS = ("broker1", "broker2", "broker3")
# the agreed start, ahead of now: `faults-start` refuses to arm once its first fault's time has
# passed, and starting its interpreter takes seconds on a busy machine
LEAD_S = 10.0


def wait_for(what: str, cond: Callable[[], Any], bound_s: float = 30.0) -> Any:
    """Progress-bound wait: the bound only stops a hung test, it asserts nothing about speed."""
    end = time.time() + bound_s
    while True:
        got = cond()
        if got:
            return got
        if time.time() > end:
            raise AssertionError(f"{what}: not within {bound_s:g}s")
        time.sleep(0.05)


@pytest.fixture
def netns() -> Iterator[Callable[[], int]]:
    """PIDs of sleeping processes, each alone in a new network namespace."""
    procs: list[subprocess.Popen[bytes]] = []
    ours = os.readlink("/proc/self/ns/net")

    def make() -> int:
        p = subprocess.Popen(["unshare", "-n", "sleep", "300"])
        procs.append(p)
        wait_for("a namespace of its own", lambda: os.readlink(f"/proc/{p.pid}/ns/net") != ours)
        return p.pid

    yield make
    for p in procs:
        p.kill()
        p.wait(timeout=10)


def tables(pid: int) -> list[str]:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def listing(pid: int, table: str) -> str:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "nft", "list", "table", "ip", table], capture_output=True, text=True).stdout


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, netns: Callable[[], int]) -> Iterator[Callable[[list[str]], dict[str, Any]]]:
    """A project dir whose stack carries the given faults, a fake docker first on PATH, and one
    namespace per broker container."""

    def make(faults: list[str]) -> dict[str, Any]:
        doc = yaml.safe_load((ROOT / "Pulumi.distributed.yaml").read_text())
        doc["config"]["mqttlab:faults"] = faults
        (tmp_path / "Pulumi.distributed.yaml").write_text(yaml.safe_dump(doc))
        (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        (bindir / "docker").write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests/fake_docker.py'} \"$@\"\n")
        (bindir / "docker").chmod(0o755)
        pids = {b: netns() for b in BROKERS}
        state = tmp_path / "docker" / "state.json"
        state.parent.mkdir(exist_ok=True)
        state.write_text(json.dumps({f"mqttlab-{b}": {"running": True, "paused": False, "pid": pids[b]} for b in BROKERS}))
        monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
        made.append(state)
        return {"dir": tmp_path, "pids": pids, "state": state, "runs": tmp_path / "runs"}

    made: list[Path] = []
    yield make
    for state in made:  # the processes the fake docker started for restarted containers
        for c in json.loads(state.read_text()).values():
            for pid in c.get("started", []):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def args(s: dict[str, Any], host: str, start_at: float, run_id: str = "7") -> argparse.Namespace:
    return argparse.Namespace(stack="distributed", project_dir=str(s["dir"]), runs=str(s["runs"]), run_id=run_id, host=host,
                              load_generator="mqttlab", start_at=start_at)


def docker_calls(s: dict[str, Any]) -> list[list[str]]:
    lines = (s["state"].parent / "calls.jsonl").read_text().splitlines()
    return [c["argv"][:2] for c in map(json.loads, lines) if c["argv"][0] != "inspect"]


def recs(s: dict[str, Any], host: str, run_id: str = "7") -> list[dict[str, Any]]:
    f = s["runs"] / run_id / "faults" / f"{host}.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def test_broker_faults_and_a_bridge_cut_on_the_broker_vm(site: Callable[[list[str]], dict[str, Any]]) -> None:
    faults = ["broker2:pause@0.5s+1s", "broker3:restart@0.5s+0.5s", "bridge:broker1-broker2:cut@0.5s+1.5s", "broker1:kill@2.5s",
              "director:ipvs1:kill@0.5s+1s"]  # the last is ipvs1's, not this VM's
    s = site(faults)
    a = args(s, "brokers", time.time() + LEAD_S)
    cp = subprocess.run([sys.executable, "-m", "workloads.cli", "host", "faults-start", "-s", "distributed", "--project-dir", a.project_dir,
                         "--run-id", "7", "--runs", a.runs, "--host", "brokers", "--start-at", f"{a.start_at:.3f}"],
                        capture_output=True, text=True, timeout=120)  # as the remote command runs it: the fault process outlives it
    assert cp.returncode == 0 and "4 fault(s) armed on brokers" in cp.stdout, cp.stdout + cp.stderr
    rd = s["runs"] / "7"
    assert json.loads((rd / "status" / "brokers-faults.json").read_text())["status"] == "ok"
    hub = s["pids"]["broker1"]
    seen = wait_for("the bridge cut in broker1's namespace", lambda: listing(hub, "mqttlab_fault2"))
    wait_for("the bridge cut undone", lambda: "mqttlab_fault2" not in tables(hub))
    wait_for("broker1 killed", lambda: [r for r in recs(s, "brokers") if r["spec"] == "broker1:kill@2.5s" and r["started_at"]])
    cfg = load(a)
    faultsteps.stop_faults(cfg, build_plan(cfg), rd, "brokers")
    assert not list((rd / "pids").glob("faults*"))  # the fault process is gone

    assert "ip saddr 10.2.0.20 ip daddr 10.2.0.21 tcp dport 1883 drop" in seen  # the hub's bridge to broker2, both ways
    assert "ip saddr 10.2.0.21 tcp sport 1883 ip daddr 10.2.0.20 drop" in seen
    assert all(tables(p) == [] for p in s["pids"].values())
    assert docker_calls(s) == [["pause", "mqttlab-broker2"], ["kill", "mqttlab-broker3"], ["start", "mqttlab-broker3"], ["exec", "mqttlab-broker3"],
                               ["unpause", "mqttlab-broker2"], ["kill", "mqttlab-broker1"]]
    state = json.loads(s["state"].read_text())
    assert [state[f"mqttlab-{b}"]["running"] for b in BROKERS] == [False, True, True] and not state["mqttlab-broker2"]["paused"]
    r = recs(s, "brokers")
    assert [x["index"] for x in r] == [0, 1, 2, 3] and {x["host"] for x in r} == {"brokers"}
    t0 = r[0]["t0"]
    assert t0 == pytest.approx(a.start_at, abs=1e-3)
    for x in r:  # the same record as the lab's, each carried out no earlier than its time
        assert x["started_at"] >= t0 + x["at_s"] and x["run_ended_at"] >= x["started_at"] and "failed" not in x["detail"]
        if x["duration_s"] is not None:
            assert x["ended_at"] >= t0 + x["at_s"] + x["duration_s"]
    assert r[3]["ended_at"] is None  # a kill stays


def test_a_dead_director_stays_until_the_run_ends_then_its_rules_go(site: Callable[[list[str]], dict[str, Any]],
                                                                  netns: Callable[[], int]) -> None:
    s = site(["director:ipvs1:kill@0.2s"])
    vm = netns()  # plays the director VM's own namespace
    start = time.time() + 0.5
    cmd = ["nsenter", "-t", str(vm), "-n", sys.executable, "-m", "workloads.cli", "host", "faults-run", "-s", "distributed",
           "--project-dir", str(s["dir"]), "--run-id", "8", "--runs", str(s["runs"]), "--host", "ipvs1", "--start-at", f"{start:.3f}",
           "--until", f"{start + 300:.3f}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("the director silenced", lambda: [x for x in recs(s, "ipvs1", "8") if x["started_at"]])
        rules = listing(vm, "mqttlab_fault0")
        assert "ip daddr 10.3.0.10 tcp dport 1883 drop" in rules and "10.2.0.20" in rules and "tcp sport 1883 drop" in rules
        p.send_signal(signal.SIGTERM)  # what collect's stop does
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out
    assert tables(vm) == []
    (x,) = recs(s, "ipvs1", "8")
    assert x["ended_at"] >= x["started_at"] and "(at the end of the run)" in x["detail"] and x["run_ended_at"] >= x["started_at"]


def test_cleanup_after_a_killed_fault_process_leaves_nothing(site: Callable[[list[str]], dict[str, Any]]) -> None:
    s = site(["broker2:pause@0.2s+100s", "bridge:broker1-broker3:cut@0.2s+100s"])
    start = time.time() + 0.5
    p = subprocess.Popen([sys.executable, "-m", "workloads.cli", "host", "faults-run", "-s", "distributed", "--project-dir", str(s["dir"]),
                          "--run-id", "9", "--runs", str(s["runs"]), "--host", "brokers", "--start-at", f"{start:.3f}", "--until",
                          f"{start + 300:.3f}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("both faults in force", lambda: len([x for x in recs(s, "brokers", "9") if x["started_at"]]) == 2)
    finally:
        p.kill()  # no chance to undo anything
        p.wait(timeout=10)
    hub = s["pids"]["broker1"]
    assert tables(hub) == ["mqttlab_fault1"] and json.loads(s["state"].read_text())["mqttlab-broker2"]["paused"]
    cfg = load(args(s, "brokers", start))
    done = inject.cleanup(build_plan(cfg), "brokers")
    assert done == ["mqttlab-broker1: table mqttlab_fault1 deleted", "docker unpause mqttlab-broker2"]
    assert tables(hub) == [] and not json.loads(s["state"].read_text())["mqttlab-broker2"]["paused"]
    assert inject.cleanup(build_plan(cfg), "brokers") == []  # idempotent


def test_what_docker_refuses_is_recorded_against_the_fault(site: Callable[[list[str]], dict[str, Any]]) -> None:
    s = site(["broker2:kill@0s"])
    state = json.loads(s["state"].read_text())
    state["mqttlab-broker2"]["running"] = False  # already dead
    s["state"].write_text(json.dumps(state))
    cfg = load(args(s, "brokers", 0))
    inj = inject.HostInjector(build_plan(cfg), inject.faults_on(cfg.faults, "brokers"), "brokers", s["runs"] / "10")
    inj.start(time.time())
    wait_for("the refusal recorded", lambda: "failed" in inj.records[0]["detail"])
    inj.stop()
    assert "container mqttlab-broker2 is not running" in inj.records[0]["detail"] and inj.records[0]["started_at"] is None
    assert inj.error.startswith("broker2:kill@0s: docker kill mqttlab-broker2 failed (1)")


def test_a_fault_step_too_late_for_its_first_fault_refuses_to_arm(site: Callable[[list[str]], dict[str, Any]]) -> None:
    s = site(["broker2:kill@1s"])
    assert faultsteps.cmd_faults_start(args(s, "brokers", time.time() - 5)) == 0  # recorded, the run goes on
    doc = json.loads((s["runs"] / "7" / "status" / "brokers-faults.json").read_text())
    assert doc["status"] == "failed" and "past the first fault (1s)" in doc["detail"]
    assert recs(s, "brokers") == [] and not (s["state"].parent / "calls.jsonl").exists()  # nothing was done


def test_start_epoch_accepts_only_an_epoch() -> None:
    assert azure_bench.start_epoch("1790000000.25\n") == "1790000000.250"
    for bad in ("", '{"host": "bench-start"}', "12.5"):
        with pytest.raises(ValueError, match="bench-start printed"):
            azure_bench.start_epoch(bad)


def test_a_restarted_broker_gets_its_monitor_back_in_its_new_namespace(site: Callable[[list[str]], dict[str, Any]]) -> None:
    """``docker start`` gives the container a new process and network namespace; the monitor
    left in the old one could reach neither, so the fault process replaces it."""
    s = site(["broker3:restart@0.5s+0.5s"])
    base = [sys.executable, "-m", "workloads.cli", "host"]
    step_args = ["-s", "distributed", "--project-dir", str(s["dir"]), "--run-id", "7", "--runs", str(s["runs"])]
    rd = s["runs"] / "7"
    cp = subprocess.run([*base, "monitors-start", *step_args, "--role", "brokers"], capture_output=True, text=True, timeout=120)
    try:
        # a recorded step exits 0 whatever happened: its status file says how it went
        assert json.loads((rd / "status" / "brokers-monitors-start.json").read_text())["status"] == "ok", cp.stderr
        old_mon = int((rd / "pids" / "monitor-broker3.pid").read_text())
        old_ns = os.readlink(f"/proc/{s['pids']['broker3']}/ns/net")
        wait_for("the first monitor in broker3's namespace", lambda: os.readlink(f"/proc/{old_mon}/ns/net") == old_ns if
                 Path(f"/proc/{old_mon}").exists() else False)
        csv3 = rd / "monitor" / "brokers-broker3.csv"
        wait_for("the first monitor's rows", lambda: csv3.exists() and len(csv3.read_text().splitlines()) >= 2, 120)
        start = time.time() + LEAD_S
        cp = subprocess.run([*base, "faults-start", *step_args, "--host", "brokers", "--start-at", f"{start:.3f}"], capture_output=True,
                            text=True, timeout=120)
        assert cp.returncode == 0 and "1 fault(s) armed" in cp.stdout, cp.stdout + cp.stderr
        (r,) = wait_for("the restart done", lambda: [x for x in recs(s, "brokers") if x["ended_at"]])
        new_pid = json.loads(s["state"].read_text())["mqttlab-broker3"]["pid"]
        new_ns = os.readlink(f"/proc/{new_pid}/ns/net")
        mon = int((rd / "pids" / "monitor-broker3.pid").read_text())
        assert new_ns != old_ns and mon != old_mon and f"its monitor started again in the new namespace (pid {mon})" in r["detail"]
        wait_for("the new monitor in the new namespace", lambda: os.readlink(f"/proc/{mon}/ns/net") == new_ns)
        assert not Path(f"/proc/{old_mon}").exists() or Path(f"/proc/{old_mon}/stat").read_text().split(")")[1].split()[0] == "Z"
        others = {b: int((rd / "pids" / f"monitor-{b}.pid").read_text()) for b in ("broker1", "broker2")}
        assert all(Path(f"/proc/{p}").exists() for p in others.values())  # only broker3's was replaced
    finally:
        cfg = load(args(s, "brokers", 0))
        faultsteps.stop_faults(cfg, build_plan(cfg), rd, "brokers")
        common.stop_detached(rd, "monitor")
    assert not list((rd / "pids").glob("*.pid"))
    rows = (rd / "monitor" / "brokers-broker3.csv").read_text().splitlines()
    assert rows[0].startswith("time_s,broker,") and sum(1 for x in rows if x.startswith("time_s")) == 1  # one CSV, one header
