"""keepalived with the rendered configuration in a real IPVS kernel (the micro-VM where this
kernel has none): a killed broker leaves the virtual server, a restarted one comes back, and the
balancer monitor's CSV shows both. The delays are measured and written to ``result.json``
(the test asserts what happened, not how fast: timings under emulation are not the product's)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_ipvs_vm import host_has_ipvs
from workloads.hosts.lab import vm

GUEST = textwrap.dedent('''
    import json, subprocess, sys, time
    from pathlib import Path
    from workloads.render import keepalived
    from workloads.base import procs
    from workloads.describe.config import load_stack
    from workloads.describe.plan import build_plan
    from workloads.render.files import render_files, write_files

    work = Path(sys.argv[1])
    # under CPU emulation every program start is slow and a busy broker can be slow to answer,
    # so the checks here are slower than a real host would use
    hc = {"type": "mqtt", "interval": 2, "retries": 2, "timeout": 2}
    cfg = load_stack("distributed", Path(sys.argv[2])).with_overrides({"balancer.healthCheck": hc, "bridge.layout": "none"})
    plan = build_plan(cfg)
    write_files(render_files(plan, cfg), work / "rendered")
    bal = plan.balancers[0]
    def sh(*a): return subprocess.run(list(a), capture_output=True, text=True, timeout=60)
    sh("modprobe", "-a", "ip_vs", "ip_vs_lc")
    sh("ip", "link", "add", "eth0", "type", "dummy"); sh("ip", "link", "set", "eth0", "up"); sh("ip", "link", "set", "lo", "up")
    sh("ip", "addr", "add", bal.vip + "/32", "dev", "eth0")
    for b in plan.brokers:
        sh("ip", "addr", "add", b.address + "/32", "dev", "eth0")
    def start(b):
        return subprocess.Popen(["mosquitto", "-c", str(work / "rendered/brokers" / b.name / "mosquitto.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mosq = {b.name: start(b) for b in plan.brokers}
    conf, argv = keepalived.prepare(bal, Path("/run/mqttlab-kvm"))
    (work / "keepalived.conf").write_text(conf.read_text())
    ka = subprocess.Popen(argv, stdout=open(work / "keepalived.log", "w"), stderr=subprocess.STDOUT)
    mon = subprocess.Popen([sys.executable, "-m", "workloads.cli", "monitor", "balancer", "--kind", "ipvs", "--host", bal.host,
                            "--interval", "1", "--out", str(work / "balancer.csv")], stdout=open(work / "monitor.log", "w"), stderr=subprocess.STDOUT)
    def reals():
        return keepalived.ipvs_reals(sh("ipvsadm", "-Ln").stdout, bal.vip, bal.port)
    def until(pred, limit, *awaited):
        # past the limit, on while what is awaited still computes (slow under emulation on a busy
        # machine), at most three times the limit
        done = procs.wait_progressing(pred, limit, lambda: procs.tree_cpu_s(p.pid for p in awaited), poll=0.5)
        return time.time() if done else None
    def rows_since(t):
        # [stamp, real] of the monitor's complete rows stamped at or after t
        lines = [line for line in (work / "balancer.csv").read_text().splitlines(keepends=True)[1:] if line.endswith(chr(10))]
        return [[float(r[0]), r[4]] for r in (line.split(",") for line in lines) if float(r[0]) >= t]
    def sampled_since(t):
        return bool(rows_since(t))
    res = {}
    everyone = {f"{b.address}:{b.port}" for b in plan.brokers}
    b2 = f"{plan.brokers[1].address}:{plan.brokers[1].port}"
    res["all_in_at"] = until(lambda: reals() == everyone, 120, ka, *mosq.values())
    # what one probe costs here (a shell start + CONNECT/CONNACK; emulation makes it slower), timed
    # once keepalived has found every broker answering: a broker still starting refuses it
    t = time.time()
    res["probe_rc"] = [sh(*keepalived.probe_command(plan.brokers[0].address, 1883, 2, probe=conf.parent / keepalived.PROBE.name).split()).returncode
                       for _ in range(3)]
    res["probe_s"] = (time.time() - t) / 3
    # the monitor is a whole interpreter with paho and friends to import: slow under emulation
    res["monitor_at"] = until(lambda: (work / "balancer.csv").exists() and len((work / "balancer.csv").read_text().splitlines()) > 3, 240, mon)
    time.sleep(2)
    res["before"] = sorted(reals())
    mosq["broker2"].kill(); res["killed_at"] = time.time()
    res["removed_at"] = until(lambda: b2 not in reals(), 60, ka)
    res["during"] = sorted(reals())
    # the monitor stamps a sample before it reads the table, and a read under emulation on a busy
    # machine takes seconds: only a sample stamped after the removal was seen, and written before
    # the restart, must lack broker2; wait for one (by the monitor's progress), keep what it wrote
    res["sampled_removed_at"] = until(lambda: sampled_since(res["removed_at"]), 60, mon)
    res["rows_removed"] = rows_since(res["removed_at"])
    mosq["broker2"] = start(plan.brokers[1]); res["restarted_at"] = time.time()
    res["readded_at"] = until(lambda: b2 in reals(), 60, ka, mosq["broker2"])
    res["after"] = sorted(reals())
    res["sampled_readded_at"] = until(lambda: sampled_since(res["readded_at"]), 60, mon)
    res["rows_readded"] = rows_since(res["readded_at"])
    res["ipvsadm"] = sh("ipvsadm", "-Ln").stdout
    mon.terminate(); mon.wait(20)
    ka.terminate(); ka.wait(20)
    # the Azure step on the same kernel: `mqttlab host balancer-apply` starts keepalived as a daemon
    import yaml
    doc = yaml.safe_load((Path(sys.argv[2]) / "Pulumi.distributed.yaml").read_text())
    doc["config"]["mqttlab:balancer"]["healthCheck"] = hc
    (work / "project").mkdir(exist_ok=True)
    (work / "project" / "Pulumi.distributed.yaml").write_text(yaml.safe_dump(doc))
    sh("ipvsadm", "-C")
    cp = subprocess.run([sys.executable, "-m", "workloads.cli", "host", "balancer-apply", "-s", "distributed", "--project-dir",
                         str(work / "project"), "--host", "ipvs1"], capture_output=True, text=True, timeout=300)
    res["apply_rc"], res["apply_out"], res["apply_err"] = cp.returncode, cp.stdout, cp.stderr[-2000:]
    pid = Path("/run/mqttlab/keepalived/ipvs1/keepalived.pid")
    res["apply_daemon"] = pid.exists()
    if pid.exists():
        subprocess.run(["kill", pid.read_text().split()[0]])
    for p in mosq.values():
        p.kill()
    (work / "result.json").write_text(json.dumps(res, indent=1))
''')


@pytest.mark.vm
@pytest.mark.timeout(1200)
def test_keepalived_removes_a_killed_broker_and_adds_it_back(tmp_path: Path) -> None:
    reason = vm.unavailable_reason()
    if reason and not host_has_ipvs():
        pytest.skip(f"no IPVS in this kernel and no micro-VM: {reason}")
    work = tmp_path / "kvm"
    work.mkdir()
    (work / "guest.py").write_text(GUEST)
    script = f"cd {ROOT}\n{sys.executable} {work / 'guest.py'} {work} {ROOT} > {work / 'guest.log'} 2>&1\n"
    if host_has_ipvs():
        subprocess.run(["bash", "-c", script], timeout=600)
    else:
        vm.run_in_vm(script, [work], timeout=380)  # longer while the guest works, at most 1140 s
    assert (work / "result.json").exists(), (work / "guest.log").read_text()[-3000:] if (work / "guest.log").exists() else "no guest log"
    res = json.loads((work / "result.json").read_text())
    assert res["monitor_at"], (work / "monitor.log").read_text()[-3000:]
    assert res.get("probe_rc", [0]) == [0, 0, 0], res  # the timed probes found broker1 alive
    b2 = "10.2.0.21:1883"
    assert res["all_in_at"], (work / "keepalived.log").read_text()[-3000:]
    assert b2 in res["before"] and len(res["before"]) == 3
    assert res["removed_at"] and b2 not in res["during"]
    assert res["readded_at"] and b2 in res["after"]
    # the balancer monitor saw it: broker2 in a sample before the kill, out of every sample taken
    # after keepalived removed it and written before the restart, back in one after the re-add
    rows = [line.split(",") for line in (work / "balancer.csv").read_text().splitlines()[1:]]
    assert any(r[4] == b2 and float(r[0]) < res["killed_at"] for r in rows)
    assert res["sampled_removed_at"] and res["sampled_readded_at"], res
    during = res["rows_removed"]
    assert during and all(real != b2 for _, real in during), during
    assert {real for _, real in during} <= set(res["before"]) - {b2}  # a sample can be cut at a buffer's edge
    assert any(real == b2 for _, real in res["rows_readded"]), res["rows_readded"]
    t2 = sorted(float(r[0]) for r in rows if r[4] == b2)
    gap = max((b - a, a) for a, b in zip(t2, t2[1:], strict=False))  # how long the monitor did not see it
    # the Azure host step brought the same service up through keepalived, every broker in
    assert res["apply_rc"] == 0 and res["apply_daemon"], res["apply_err"]
    assert "-A -t 10.3.0.10:1883 -s lc" in res["apply_out"] and res["apply_out"].count("-m -w 1") == 3, res["apply_out"]
    delays = {"removed_after_s": round(res["removed_at"] - res["killed_at"], 2),
              "readded_after_s": round(res["readded_at"] - res["restarted_at"], 2),
              "monitor_gap_s": round(gap[0], 2), "bound_s": 2 * 2 + 1, "one_probe_s": round(res["probe_s"], 2)}
    (work / "delays.json").write_text(json.dumps(delays))
    print(f"keepalived in a real IPVS kernel: {delays}")
