"""Secured brokers, proven by real Mosquitto: every mode's rendered files load, bridges connect,
a message crosses from every broker to every other through the bench; and the brokers refuse
what they must, with the reason in the run's record (never counted as lost)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MQTTLAB, ROOT, Cluster, wait_for
from workloads.bench import emqtt
from workloads.describe.config import ExperimentConfig
from workloads.describe.plan import Broker, Plan
from workloads.describe.scenario import Scenario
from workloads.hosts.lab import netns
from workloads.render.security import CertificateAuthority, Material, generate, load_client, server_names
from workloads.rundir.records import summarize

BRIDGE_STATE = """
import json, sys, time
import paho.mqtt.client as mqtt
from workloads.render.security import load_client
got = {}
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="check-bridges")
load_client(sys.argv[1], "monitor").apply(c)
c.on_message = lambda _c, _u, m: got.__setitem__(m.topic, m.payload.decode())
c.connect(sys.argv[2], int(sys.argv[3]))
c.subscribe("$SYS/broker/connection/+/state")
end = time.time() + 3
while time.time() < end:
    c.loop(0.1)
print(json.dumps(got))
"""


def ns_python(cl: Cluster, code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", cl.ns, *MQTTLAB[:1], "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def bridge_states(cl: Cluster) -> dict[str, str]:
    hub = cl.plan.brokers[0]
    cp = ns_python(cl, BRIDGE_STATE, str(cl.files / "brokers/security/client.json"), hub.address, str(hub.port))
    assert cp.returncode == 0, cp.stderr
    return dict(json.loads(cp.stdout))


def bench(cl: Cluster, out: Path, role: str, security: Path | None, *opts: str, timeout: float = 120,
          targets: list[Broker] | None = None) -> dict[str, Any]:
    """A bench run in the cluster's namespace (clients spread over every broker, or ``targets``);
    its summary from the run directory."""
    targets_arg = ",".join(f"{b.address}:{b.port}" for b in targets or cl.plan.brokers)
    cmd = ["ip", "netns", "exec", cl.ns, *MQTTLAB, "bench", role, "--target", targets_arg, "--out", str(out), "--quiet", "--workers", "1",
           "--time-limit-s", "8", "--drain-s", "5", "--interval-ms", "20", *opts]
    if security is not None:
        cmd += ["--security", str(security)]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert "Traceback" not in cp.stderr and (out / "manifest.json").is_file(), cp.stdout + cp.stderr
    s = summarize(out)
    s["returncode"] = cp.returncode
    return s


def variant(src: Path, dst: Path, role: str, **changes: Any) -> Path:
    """A copy of a client.json with one role's settings changed (absolute paths kept working)."""
    doc = json.loads(src.read_text())
    for key in ("ca",):
        if doc.get(key):
            doc[key] = str(src.parent / doc[key])
    for r in doc["roles"].values():
        for key in ("cert", "key"):
            if r.get(key):
                r[key] = str(src.parent / r[key])
    top = {k: changes.pop(k) for k in list(changes) if k in ("ca", "mode")}
    doc |= top
    doc["roles"][role] |= changes
    for r in list(doc["roles"]):
        if r != role:
            del doc["roles"][r]
    dst.write_text(json.dumps(doc))
    return dst


def pem_pair(dst: Path, name: str, pair: Any) -> tuple[str, str]:
    (dst / f"{name}.crt").write_text(pair.cert)
    (dst / f"{name}.key").write_text(pair.key)
    (dst / f"{name}.key").chmod(0o600)
    return str(dst / f"{name}.crt"), str(dst / f"{name}.key")


@pytest.mark.parametrize("mode", ["password", "tls", "mtls"])
def test_every_mode_loads_bridges_and_crosses_every_broker(mode: str, cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    cl = cluster("distributed", {"security.mode": mode})
    port = 8883 if mode != "password" else 1883
    assert {b.port for b in cl.plan.brokers} == {port} and {c.target.rsplit(":")[1] for c in cl.plan.clients} == {str(port)}
    conf = (cl.files / "brokers/broker1/mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf and "remote_username bridge-broker1-broker2" in conf
    assert ("require_certificate true" in conf) == (mode == "mtls") and ("bridge_cafile" in conf) == (mode != "password")
    # private files are the owner's only
    for p in cl.files.rglob("*"):
        if p.suffix == ".key" or p.name == "passwd" or p.parent.name == "security" and p.name == "client.json":
            assert p.stat().st_mode & 0o077 == 0, p
    assert (cl.files / "brokers/broker1/mosquitto.conf").stat().st_mode & 0o077 == 0  # holds the bridges' password
    assert (cl.files / "brokers/broker2/mosquitto.conf").stat().st_mode & 0o077 != 0
    names = [f"$SYS/broker/connection/{b.name}/state" for b in cl.plan.bridges]
    wait_for(lambda: all(bridge_states(cl).get(n) == "1" for n in names), 30, f"both bridges connected under {mode}")

    # 3 publishers and 3 subscribers spread one per broker: every message must cross the star
    s = bench(cl, tmp_path / "run", "run", cl.files / "ipvs1/security/client.json",
              "--publishers", "3", "--subscribers", "3", "--messages", "60", "--qos", "1")
    assert s["clients_connected"] == 6 and s["clients_refused"] == 0, s
    assert s["expected"] == 180 and s["delivered"] == 180 and s["lost"] == 0 and s["duplicates"] == 0, s
    points = {r.split(",")[4] for p in (tmp_path / "run/bench").glob("*/clients-*.csv") for r in p.read_text().splitlines()[1:]}
    assert points == {f"{b.address}:{b.port}" for b in cl.plan.brokers}


def test_password_mode_refuses_anonymous_wrong_password_and_out_of_acl(cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    cl = cluster("distributed", {"security.mode": "password"})
    good = cl.files / "ipvs1/security/client.json"
    small = ("--publishers", "2", "--subscribers", "2", "--messages", "10")

    anon = bench(cl, tmp_path / "anon", "run", None, *small)
    assert anon["clients_connected"] == 0 and anon["clients_refused"] == 4 and anon["lost"] == 0 and anon["returncode"] != 0
    assert anon["refusal_reasons"] == {"connack_error: Not authorized": 4}, anon

    wrong = variant(good, tmp_path / "wrong.json", "pub", password="not-the-password")
    bad = bench(cl, tmp_path / "wrong", "pub", wrong, *small, "--mqtt-version", "5")
    assert bad["clients_refused"] == 2 and bad["sent"] == 0 and bad["lost"] == 0
    # Mosquitto 2.0 answers a wrong password like a missing one (CONNACK 135 at MQTT 5, 5 at 3.1.1)
    assert bad["refusal_reasons"] == {"connack_error: Not authorized": 2}, bad

    # MQTT 5 returns the reason in PUBACK; 3.1.1 drops silently, so the check runs at 5
    acl = bench(cl, tmp_path / "acl", "pub", good, *small, "--mqtt-version", "5", "--qos", "1", "--topic", "elsewhere/x")
    assert acl["clients_connected"] == 2 and acl["sent"] == 10 and acl["publishes_refused"] == 10 and acl["acked"] == 0, acl
    assert acl["refusal_reasons"] == {"publish_refused: Not authorized": 2} and acl["lost"] == 0
    # and the same publishers on the scenario's topic are accepted
    ok = bench(cl, tmp_path / "ok", "pub", good, *small, "--mqtt-version", "5", "--qos", "1")
    assert ok["acked"] == 10 and ok["publishes_refused"] == 0 and ok["clients_refused"] == 0, ok


def test_mtls_refuses_missing_expired_and_foreign_certificates_both_ways(cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    kept: dict[str, CertificateAuthority] = {}

    def material(plan: Plan, cfg: ExperimentConfig) -> Material:
        kept["ca"] = CertificateAuthority("mqttlab test CA", cfg.security.cert_days)
        return generate(plan, cfg.security, kept["ca"])

    cl = cluster("distributed", {"security.mode": "mtls"}, material)
    good = cl.files / "ipvs1/security/client.json"
    small = ("--publishers", "2", "--subscribers", "0", "--messages", "4")
    assert bench(cl, tmp_path / "ok", "pub", good, *small)["clients_connected"] == 2

    def refused(name: str, **changes: Any) -> dict[str, Any]:
        s = bench(cl, tmp_path / name, "pub", variant(good, tmp_path / f"{name}.json", "pub", **changes), *small)
        assert s["clients_connected"] == 0 and s["clients_refused"] == 2 and s["sent"] == 0 and s["lost"] == 0, s
        return dict(s["refusal_reasons"])

    no_cert = refused("nocert", cert=None, key=None)
    assert any("CERTIFICATE_REQUIRED" in k.upper() or "HANDSHAKE_FAILURE" in k.upper() for k in no_cert), no_cert
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    cert, key = pem_pair(tmp_path, "expired", kept["ca"].issue("bench-pub", False, start=past, days=2))
    expired = refused("expired", cert=cert, key=key)
    assert any("EXPIRED" in k.upper() for k in expired), expired
    foreign_ca = CertificateAuthority("someone else's CA", 30)
    cert, key = pem_pair(tmp_path, "foreign", foreign_ca.issue("bench-pub", False))
    foreign = refused("foreign", cert=cert, key=key)
    assert any("UNKNOWN_CA" in k.upper() for k in foreign), foreign
    # the client checks the broker too: a CA that did not sign the broker's certificate is refused by us
    (tmp_path / "other-ca.crt").write_text(_ca_pem(foreign_ca))
    wrong_server = refused("server", ca=str(tmp_path / "other-ca.crt"))
    assert any("CERTIFICATE_VERIFY_FAILED" in k for k in wrong_server), wrong_server
    # a broker whose certificate expired is refused by the client, with that reason
    b2 = cl.plan.brokers[1]
    stale = kept["ca"].issue(b2.name, True, *server_names(cl.plan, b2), start=past, days=2)
    (cl.files / "brokers/broker2/server.crt").write_text(stale.cert)
    (cl.files / "brokers/broker2/server.key").write_text(stale.key)
    netns.stop(cl.procs[1])
    cl.procs[1] = netns.spawn(["mosquitto", "-c", str(cl.files / "brokers/broker2/mosquitto.conf")], cl.ns, cl.files / "broker2-stale.log")
    netns.wait_tcp(cl.ns, b2.address, b2.port)
    s = bench(cl, tmp_path / "stale", "pub", good, *small, targets=[b2])
    assert s["clients_connected"] == 0 and s["clients_refused"] == 2 and s["lost"] == 0, s
    assert any("CERTIFICATE_VERIFY_FAILED" in k and "expired" in k for k in s["refusal_reasons"]), s["refusal_reasons"]


def _ca_pem(ca: CertificateAuthority) -> str:
    from cryptography.hazmat.primitives import serialization

    return ca.cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.lab
@pytest.mark.parametrize("mode", ["password", "tls", "mtls"])
def test_lab_runs_every_mode_through_the_balancers(mode: str, tmp_path: Path) -> None:
    """The whole lab: balancers forward the mode's port, every broker has clients, every
    message reaches every subscriber across the bridges, and nothing secret is on a command line."""
    cp = subprocess.run([*MQTTLAB, "lab", "run", "-s", "distributed", "--security", mode, "--publishers", "9", "--subscribers", "9",
                         "--messages", "270", "--interval-ms", "20", "--drain-s", "10", "--time-limit-s", "120", "--json", "--out", str(tmp_path)],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr[-3000:]
    s = json.loads(cp.stdout)
    assert s["security"] == mode and s["status"] == "complete" and s["clients_connected"] == 18 and s["clients_refused"] == 0
    assert s["expected"] == 270 * 9 and s["delivered"] == s["expected"] and s["lost"] == 0 and s["duplicates"] == 0
    assert all(n > 0 for n in s["connections_per_broker"].values()), s["connections_per_broker"]
    run = Path(s["run_dir"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["security"] == mode and all(t.endswith(":8883") == (mode != "password") for t in (c["target"] for c in manifest["plan"]["clients"]))
    secrets = json.loads((run / "rendered/ipvs1/security/client.json").read_text())["roles"]["pub"]["password"]
    logs = " ".join(p.read_text(errors="replace") for p in (run / "logs").glob("*.log"))
    assert secrets not in logs and secrets not in cp.stderr and secrets not in cp.stdout
    connects = Counter(r.split(",")[8] != "" for p in (run / "bench").glob("*/clients-*.csv") for r in p.read_text().splitlines()[1:])
    assert connects == {True: 18}


def emqtt_bench_binary() -> str | None:
    """emqtt-bench from EMQTT_BENCH or PATH (it is not a Python package)."""
    return os.environ.get("EMQTT_BENCH") or shutil.which("emqtt_bench")


def test_emqtt_bench_connects_with_client_certificates(cluster: Callable[..., Cluster]) -> None:
    binary = emqtt_bench_binary()
    if not binary or not Path(binary).is_file():
        pytest.skip("emqtt-bench not found: set EMQTT_BENCH to its emqtt_bench script or put it on PATH")
    cl = cluster("distributed", {"security.mode": "mtls"})
    sec = {r: load_client(cl.files / "ipvs1/security/client.json", r) for r in ("pub", "sub")}
    b = cl.plan.brokers[1]
    cmd = emqtt.commands(Scenario(publishers=2, subscribers=0, messages=40, interval_ms=50, qos=1), [f"{b.address}:{b.port}"], 2, 0, 40,
                         docker=False, security=sec)["pub"]
    cp = subprocess.run(["ip", "netns", "exec", cl.ns, "timeout", "60", binary, *cmd[1:]], capture_output=True, text=True, timeout=90)
    parsed = emqtt.parse_output(cp.stdout)
    # its per-second counters stop before the last second, so "pub" can show less than was sent
    assert parsed["totals"].get("connect_succ") == 2 and parsed["totals"].get("pub", 0) > 0 and parsed["publish_complete"], cp.stdout[-2000:]
    # and the same command without the client certificate is turned away by the broker
    bare = [a for i, a in enumerate(cmd) if a not in ("--certfile", "--keyfile") and cmd[i - 1] not in ("--certfile", "--keyfile")]
    cp = subprocess.run(["ip", "netns", "exec", cl.ns, "timeout", "15", binary, *bare[1:]], capture_output=True, text=True, timeout=60)
    assert "connect_succ" not in emqtt.parse_output(cp.stdout)["totals"], cp.stdout[-2000:]
