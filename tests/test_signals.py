"""Stop signals and killed supervisors: whatever stops a lab run or a bench run, nothing it
started keeps running; a killed lab leaves at most namespaces and state, reported and removed.

Every process checked here is one the test's own run started: the descendants of the process
the test spawned, identified by PID and start time.
"""

from __future__ import annotations

import functools
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MQTTLAB, ROOT, wait_for
from tests.test_bench import Broker
from tests.test_lab import SMALL, assert_nothing_left, lab_leftovers, lab_run
from workloads.base import procs
from workloads.hosts.lab import lab as lab_mod

# publishing lasts minutes (4 publishers x 20000 messages at 20 ms), so any stop lands mid-run
LONG = ["-s", "distributed", "--balancer", "haproxy", "--scheduler", "lc", "--publishers", "4", "--subscribers", "4", "--messages", "80000",
        "--interval-ms", "20", "--drain-s", "3", "--time-limit-s", "1200"]


def descendants(root: int) -> dict[int, tuple[int | None, str]]:
    """pid -> (start time, command line) of every process below ``root``."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: dict[int, tuple[int | None, str]] = {}
    todo = [root]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                found[child] = (procs.start_time(child), cmd)
                todo.append(child)
    return found


def running(tree: dict[int, tuple[int | None, str]]) -> list[str]:
    return [f"{pid} {cmd}" for pid, (start, cmd) in tree.items() if procs.is_running(pid, start)]


def kinds(tree: dict[int, tuple[int | None, str]]) -> dict[str, int]:
    """How many of each process the lab starts are in ``tree``."""
    cmds = [cmd for _s, cmd in tree.values()]
    return {
        "mosquitto": sum(c.startswith("mosquitto ") for c in cmds),
        "haproxy": sum(c.startswith("haproxy ") for c in cmds),  # master and worker per balancer host
        "monitor": sum("workloads.cli monitor" in c for c in cmds),
        "bench": sum("workloads.cli bench" in c for c in cmds),  # sub and pub parents and their workers
    }


def start_run(tmp_path: Path, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], Path, Path]:
    """A long lab run, returned once messages are being delivered."""
    runs, log = tmp_path / "runs", tmp_path / "lab.log"
    proc = subprocess.Popen([*prefix, *MQTTLAB, "lab", "run", *LONG, "--out", str(runs)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)
    def delivering() -> bool:
        return proc.poll() is not None or any(f.stat().st_size > 0 for f in runs.glob("*/bench/*/deliveries-*.bin"))
    wait_for(delivering, 300, "the run to be delivering")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, log, runs


def lab_tree(proc: subprocess.Popen[str]) -> dict[int, tuple[int | None, str]]:
    """The lab's processes once both bench roles and their workers run."""
    def complete() -> bool:
        k = kinds(descendants(proc.pid))
        # monitors: the brokers', the caps' kernel counters (cgroups) and one per balancer host
        return k["mosquitto"] == 3 and k["haproxy"] >= 4 and k["monitor"] == 4 and k["bench"] >= 8
    wait_for(complete, 120, "every lab process to be running")
    tree = descendants(proc.pid)
    return tree


def check_interrupted(runs: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """Manifest says interrupted (by which signal) and the partial run is readable by the tools."""
    run_dir = next(runs.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["status"], manifest["reason"], manifest["signal"]) == ("partial", "interrupted", sig.name)
    cp = subprocess.run([*MQTTLAB, "bench", "summary", str(run_dir), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cp.returncode == 0, cp.stderr
    s = json.loads(cp.stdout)
    assert s["partial"] and s["delivered"] > 0 and s["sent"] > 0
    cp = subprocess.run([*MQTTLAB, "report", str(run_dir), "--out", str(tmp_path / "report"), "--json"], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    (r,) = json.loads(cp.stdout)
    assert r["partial"] and r["delivered"] == s["delivered"]


@pytest.mark.lab
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stop_signal_mid_run_tears_down_like_ctrl_c(tmp_path: Path, sig: signal.Signals) -> None:
    proc, log, runs = start_run(tmp_path)
    tree = lab_tree(proc)
    proc.send_signal(sig)
    assert proc.wait(180) == 128 + sig, log.read_text()[-3000:]
    assert f"{sig.name}: stopping" in log.read_text()
    assert not running(tree)
    assert_nothing_left(tmp_path)
    check_interrupted(runs, tmp_path, sig)


@pytest.mark.lab
def test_timeout_around_lab_run_leaves_nothing(tmp_path: Path) -> None:
    """`timeout` signals the run and then its whole process group, as CI job runners do."""
    proc, log, runs = start_run(tmp_path, ("timeout", "--preserve-status", "-s", "TERM", "60"))
    assert proc.wait(600) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    text = log.read_text()
    assert "publishing" in text and "SIGTERM: stopping" in text
    assert_nothing_left(tmp_path)
    check_interrupted(runs, tmp_path, signal.SIGTERM)


@pytest.mark.lab
def test_sigkill_of_the_supervisor_leaves_no_process_and_is_reported(tmp_path: Path) -> None:
    proc, _log, runs = start_run(tmp_path)
    tree = lab_tree(proc)
    proc.kill()
    proc.wait(30)
    wait_for(lambda: not running(tree), 60, f"every process of the killed lab to die: {running(tree)}")
    left = lab_leftovers(tmp_path)
    assert left["namespaces"] and not left["processes"], left  # namespaces and state stay, for `lab down`
    lab_id = json.loads(next(runs.glob("*/manifest.json")).read_text())["lab_id"]
    st = subprocess.run([*MQTTLAB, "lab", "status", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    (orphan,) = [lb for lb in json.loads(st.stdout)["labs"] if lb["lab_id"] == lab_id]
    assert orphan["orphaned"] and orphan["supervisor_pid"] == proc.pid and not any(orphan["processes"].values())
    st = subprocess.run([*MQTTLAB, "lab", "status"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert f"orphaned: its supervisor (PID {proc.pid}) is gone; remove it with: mqttlab lab down --id {lab_id}" in st.stdout
    # the next run says so, and runs anyway beside it
    cp = lab_run("-s", "distributed", "--balancer", "nftables", "--scheduler", "rr", *SMALL, "--json", "--quiet", out=tmp_path / "next")
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert f"lab {lab_id} (run) was left by a supervisor that is gone (PID {proc.pid})" in cp.stderr
    assert f"mqttlab lab down --id {lab_id}" in cp.stderr
    assert json.loads(cp.stdout)["lost"] == 0
    down = subprocess.run([*MQTTLAB, "lab", "down", "--id", lab_id], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert down.returncode == 0 and f"namespace mqttlab-{lab_id}-brokers" in down.stdout, down.stdout + down.stderr
    assert_nothing_left(tmp_path)


@pytest.mark.lab
def test_lab_up_is_not_an_orphan_but_a_killed_bring_up_is(tmp_path: Path) -> None:
    """A finished `lab up` is meant to outlive its command; one killed while coming up is not."""
    cp = subprocess.run([*MQTTLAB, "lab", "up", "-s", "distributed", "--balancer", "nftables", "--scheduler", "rr", "--out", str(tmp_path)],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    up_id = cp.stdout.split("lab down --id ")[1].split()[0]
    try:
        labs = json.loads(subprocess.run([*MQTTLAB, "lab", "status", "--json"], capture_output=True, text=True, cwd=ROOT).stdout)["labs"]
        (up,) = [lb for lb in labs if lb["lab_id"] == up_id]
        assert not up["orphaned"] and all(up["processes"].values())  # the brokers outlive `lab up`, as they should
        log = tmp_path / "up2.log"
        proc = subprocess.Popen([*MQTTLAB, "lab", "up", "-s", "distributed", "--balancer", "haproxy", "--scheduler", "lc", "--out",
                                 str(tmp_path / "b")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        wait_for(lambda: "balancer:" in log.read_text() or proc.poll() is not None, 300, "the second lab to start its balancers")
        proc.kill()
        proc.wait(30)
        labs = json.loads(subprocess.run([*MQTTLAB, "lab", "status", "--json"], capture_output=True, text=True, cwd=ROOT).stdout)["labs"]
        assert [lb["orphaned"] for lb in labs if lb["lab_id"] != up_id] == [True]
    finally:
        subprocess.run([*MQTTLAB, "lab", "down"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert_nothing_left(tmp_path)


# ---------------------------------------------------------------------------- the bench alone


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["SIGTERM", "SIGHUP", "SIGKILL"])
def test_bench_workers_never_outlive_it(broker: Broker, tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([*MQTTLAB, "bench", "run", "--target", broker.target, "--out", str(out), "--publishers", "2", "--subscribers", "2",
                             "--messages", "200000", "--interval-ms", "5", "--workers", "2", "--quiet"], cwd=ROOT, start_new_session=True)
    wait_for(lambda: any(p.stat().st_size > 0 for p in out.glob("bench/local/deliveries-*.bin")), 60, "first deliveries on disk")
    workers = descendants(proc.pid)
    assert len(workers) == 2, workers
    proc.send_signal(sig)  # to the bench process only, not to its group
    rc = proc.wait(120)
    wait_for(lambda: not running(workers), 60, "the workers to end")
    manifest = json.loads((out / "manifest.json").read_text())
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL and manifest["status"] == "running"
    else:  # stopped in order: the workers wrote what they measured
        assert rc == 1 and (manifest["status"], manifest["reason"]) == ("partial", "stopped")
    cp = subprocess.run([*MQTTLAB, "bench", "summary", str(out), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cp.returncode == 0 and json.loads(cp.stdout)["partial"]


def started_brokers(log: Path, proc: subprocess.Popen[bytes]) -> bool:
    return "brokers:" in log.read_text() or proc.poll() is not None


@pytest.mark.lab
def test_sigterm_while_lab_up_comes_up_takes_it_down(tmp_path: Path) -> None:
    """The runner is frozen (SIGSTOP) while its state says it is not up yet, signalled, thawed."""
    for attempt in range(3):  # bring-up can outrun the poll on an idle machine; then try again
        log = tmp_path / f"up{attempt}.log"
        proc = subprocess.Popen([*MQTTLAB, "lab", "up", "-s", "distributed", "--balancer", "haproxy", "--scheduler", "lc", "--out",
                                 str(tmp_path / f"up{attempt}")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        wait_for(functools.partial(started_brokers, log, proc), 300, "the lab to start its brokers")
        proc.send_signal(signal.SIGSTOP)
        states = [json.loads(f.read_text()) for f in lab_mod.STATE_DIR.glob("*.json")]
        mine = [st for st in states if st["supervisor_pid"] == proc.pid]
        if proc.poll() is None and mine and not mine[0]["ready"]:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
            assert proc.wait(120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
            assert "interrupted" in log.read_text()
            assert_nothing_left(tmp_path)
            return
        proc.send_signal(signal.SIGCONT)
        proc.wait(120)
        subprocess.run([*MQTTLAB, "lab", "down", "--id", mine[0]["lab_id"]] if mine else ["true"], capture_output=True, cwd=ROOT, timeout=120)
    pytest.fail("lab up finished before it could be signalled, three times")
