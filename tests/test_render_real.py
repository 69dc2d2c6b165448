"""Rendered files proven by the programs that read them: mosquitto, iptables-restore, nft,
docker-compose, haproxy; and the render command's output."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MQTTLAB, ROOT, Cluster, wait_for
from workloads.describe.config import load_stack
from workloads.describe.plan import build_plan
from workloads.hosts.lab import netns
from workloads.render.files import render_files


def bridge_states(cl: Cluster) -> dict[str, str]:
    hub = cl.plan.brokers[0]
    out = cl.ns_run(["mosquitto_sub", "-h", hub.address, "-t", "$SYS/broker/connection/+/state", "-v", "-W", "2"], timeout=10).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_rendered_brokers_start_bridge_and_deliver_everywhere_once(cluster: Callable[..., Cluster]) -> None:
    cl = cluster("distributed")
    names = [b.name for b in cl.plan.bridges]
    wait_for(lambda: all(bridge_states(cl).get(f"$SYS/broker/connection/{n}/state") == "1" for n in names), 20, "both bridges connected")

    for qos in (0, 1, 2):
        topic = f"check/q{qos}"
        subs = {
            b.name: subprocess.Popen(
                ["ip", "netns", "exec", cl.ns, "mosquitto_sub", "-h", b.address, "-t", topic, "-q", str(qos), "-W", "4"],
                stdout=subprocess.PIPE, text=True,
            )
            for b in cl.plan.brokers
        }
        time.sleep(1.0)  # let the three SUBSCRIBEs land before anything is published
        sent = []
        for b in cl.plan.brokers:
            for k in range(5):
                msg = f"{b.name}-q{qos}-{k}"
                sent.append(msg)
                cl.ns_run(["mosquitto_pub", "-h", b.address, "-t", topic, "-q", str(qos), "-m", msg])
        for name, proc in subs.items():
            out, _ = proc.communicate(timeout=20)
            got = Counter(out.split())
            assert set(got) == set(sent), f"{name} at qos {qos} missed {set(sent) - set(got)}"
            assert max(got.values()) == 1, f"{name} at qos {qos} got duplicates {[m for m, c in got.items() if c > 1]}"


def test_bridge_clientids_are_explicit_and_unique_in_every_stack() -> None:
    for stack in ("distributed", "centralized"):
        cfg = load_stack(stack, ROOT)
        files = render_files(build_plan(cfg), cfg)
        ids = [line.split()[1] for text in files.values() for line in text.splitlines() if line.startswith("remote_clientid ")]
        assert len(ids) == 2 and len(set(ids)) == 2
        hub = files["brokers/broker1/mosquitto.conf"]
        assert "listener 1883 10.2.0.20" in hub and "max_queued_messages 1000" in hub and "max_inflight_messages 20" in hub
        assert "connection " not in files["brokers/broker2/mosquitto.conf"]


@pytest.mark.parametrize("stack", ["distributed", "centralized"])
def test_firewall_rules_pass_the_real_tools(stack: str, make_ns: Callable[[str], str], tmp_path: Path) -> None:
    cfg = load_stack(stack, ROOT)
    files = render_files(build_plan(cfg), cfg)
    ns = make_ns("fw")
    netns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], ns=ns)
    for path, text in files.items():
        if path.endswith("rules.v4"):
            cp = netns.run(["iptables-restore", "--test"], ns=ns, check=False, input=text)
            assert cp.returncode == 0, cp.stderr
        elif path.endswith(".nft"):
            f = tmp_path / path.replace("/", "_")
            f.write_text(text)
            cp = netns.run(["nft", "-c", "-f", str(f)], ns=ns, check=False)
            assert cp.returncode == 0, f"{path}: {cp.stderr}"
        elif path.endswith("haproxy.cfg"):
            f = tmp_path / "haproxy.cfg"
            f.write_text(text)
            cp = subprocess.run(["haproxy", "-c", "-f", str(f)], capture_output=True, text=True)
            assert cp.returncode == 0, cp.stdout + cp.stderr
    snat = [line for line in files["ipvs1/rules.v4"].splitlines() if "MASQUERADE" in line]
    assert snat == (["-A POSTROUTING -s 10.4.0.0/24 -o eth0 -j MASQUERADE"] if stack == "centralized" else [])


def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    cfg = load_stack("distributed", ROOT)
    files = render_files(build_plan(cfg), cfg)
    (tmp_path / "docker-compose.yml").write_text(files["brokers/docker-compose.yml"])
    cp = subprocess.run(["docker-compose", "-p", "mqttlab", "-f", str(tmp_path / "docker-compose.yml"), "config"], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert "eclipse-mosquitto:2.0.20" in cp.stdout and "latest" not in cp.stdout
    for addr in ("10.2.0.20", "10.2.0.21", "10.2.0.22"):
        assert f"ipv4_address: {addr}" in cp.stdout
    assert cp.stdout.count("cpus: 0.25") == 3 and cp.stdout.count("mem_limit: 128m") == 3


def test_render_command_differs_exactly_where_the_topology_says(tmp_path: Path) -> None:
    outs = {}
    for stack in ("distributed", "centralized"):
        cp = subprocess.run([*MQTTLAB, "render", "-s", stack, "--out", str(tmp_path / stack)], capture_output=True, text=True, cwd=ROOT)
        assert cp.returncode == 0, cp.stderr
        outs[stack] = {str(p.relative_to(tmp_path / stack)): p.read_text() for p in (tmp_path / stack).rglob("*") if p.is_file()}
    d, c = outs["distributed"], outs["centralized"]
    # centralized: no balancer on ipvs2, so none of its balancer files
    assert set(d) - set(c) == {f"ipvs2/{f}" for f in ("ipvs.rules", "ipvs-timeouts", "rules.v4", "rules.nft", "sysctl.conf", "nft-balancer.nft", "haproxy.cfg")}
    assert set(c) - set(d) == set()
    changed = {k for k in c if c[k] != d[k]}
    header_only = {k for k in changed if [x for x in c[k].splitlines() if "Rendered by" not in x] == [x for x in d[k].splitlines() if "Rendered by" not in x]}
    assert changed - header_only == {"plan.json", "ipvs1/rules.v4", "ipvs1/rules.nft", "ipvs1/sysctl.conf", "ipvs1/nft-balancer.nft", "ipvs2/client.json",
                                      "brokers/broker1/mosquitto.conf"}
    assert json.loads(c["ipvs2/client.json"])["target"] == "10.3.0.10:1883"
    assert json.loads(d["ipvs2/client.json"])["target"] == "10.4.0.10:1883"
    assert "net.ipv4.vs.conntrack = 1" in c["ipvs1/sysctl.conf"] and "conntrack" not in d["ipvs1/sysctl.conf"]
    # the hub's bridges carry the stack name in their client ids, nothing else changes there
    hub_diff = set(c["brokers/broker1/mosquitto.conf"].splitlines()) ^ set(d["brokers/broker1/mosquitto.conf"].splitlines())
    assert all("clientid" in line or "Rendered by" in line for line in hub_diff)


def test_render_refuses_bad_stack_before_writing(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: mqttlab\n")
    (tmp_path / "Pulumi.bad.yaml").write_text("config:\n  mqttlab:balancer:\n    scheduler: fastest\n")
    out = tmp_path / "out"
    cp = subprocess.run([*MQTTLAB, "render", "-s", "bad", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 2
    assert "mqttlab:balancer.scheduler='fastest'" in cp.stderr and "rr, wrr, lc" in cp.stderr
    assert not out.exists()
