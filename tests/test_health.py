"""Health-checked balancing: the configuration keys, keepalived's and HAProxy's checks proven by
the real programs, and the MQTT probe against real brokers (alive, killed, paused)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster, wait_for
from workloads.describe.config import ConfigError, load_stack
from workloads.describe.plan import build_plan
from workloads.hosts.lab import netns
from workloads.hosts.monitor import sample_haproxy
from workloads.render import keepalived
from workloads.render.balancer import haproxy_cfg, ipvs_apply_steps
from workloads.render.files import render_files

HC = {"type": "mqtt", "interval": 1, "retries": 2, "timeout": 0.5}


def test_health_check_defaults_to_none_and_renders_no_keepalived() -> None:
    cfg = load_stack("distributed", ROOT)
    assert cfg.balancer.health_check.type == "none"
    files = render_files(build_plan(cfg), cfg)
    assert not any(k.endswith("keepalived.conf") for k in files)
    assert " check" not in files["ipvs1/haproxy.cfg"]
    steps = [argv[0] for argv, _, _ in ipvs_apply_steps("ipvs1", "lc", files)]
    assert "ipvsadm-restore" in steps  # today's behaviour: the rules themselves


@pytest.mark.parametrize(("value", "key", "needle"), [
    ({"type": "http"}, "mqttlab:balancer.healthCheck.type", "none, mqtt, tcp"),
    ({"type": "mqtt", "interval": 0}, "mqttlab:balancer.healthCheck.interval", "> 0"),
    ({"type": "mqtt", "retries": 0}, "mqttlab:balancer.healthCheck.retries", ">= 1"),
    ({"type": "mqtt", "interval": 1, "timeout": 2}, "mqttlab:balancer.healthCheck.timeout", "must be <= interval"),
    ({"type": "mqtt", "intervl": 1}, "mqttlab:balancer.healthCheck.intervl", "did you mean mqttlab:balancer.healthCheck.interval?"),
    ("mqtt", "mqttlab:balancer.healthCheck", "must be a mapping"),
])
def test_bad_health_check_is_refused_naming_the_key(value: object, key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_stack("distributed", ROOT).with_overrides({"balancer.healthCheck": value})
    assert err.value.key == key and needle in str(err.value)


@pytest.mark.parametrize("kind", ["mqtt", "tcp"])
@pytest.mark.parametrize("stack", ["distributed", "centralized"])
def test_rendered_keepalived_conf_passes_keepalived_config_test(tmp_path: Path, kind: str, stack: str) -> None:
    cfg = load_stack(stack, ROOT).with_overrides({"balancer.healthCheck": HC | {"type": kind, "interval": 1.5, "retries": 3},
                                                   "balancer.weights": [3, 2, 1], "balancer.scheduler": "wlc"})
    plan = build_plan(cfg)
    files = render_files(plan, cfg)
    assert [k for k in files if k.endswith("keepalived.conf")] == [f"{b.host}/keepalived.conf" for b in plan.balancers]
    for bal in plan.balancers:
        conf, _argv = keepalived.prepare(bal, tmp_path / bal.host)  # tmp_path is root's: script security holds
        text = conf.read_text()
        cp = subprocess.run(["keepalived", "--config-test", "-f", str(conf)], capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert f"virtual_server {bal.vip} 1883" in text and "lb_algo wlc" in text and "lb_kind NAT" in text
        assert "delay_loop 1.5" in text and "retry 2" in text and "delay_before_retry 1.5" in text
        assert [line.split()[1] for line in text.splitlines() if "weight" in line] == ["3", "2", "1"]
        if kind == "mqtt":
            assert text.count("MISC_CHECK") == 3 and f'"/bin/bash {tmp_path / bal.host / "probe.sh"} 10.2.0.21 1883 0.5"' in text
        else:
            assert text.count("TCP_CHECK") == 3 and "connect_timeout 0.5" in text
    # keepalived owns the virtual server: the apply steps leave ipvsadm-restore out
    steps = [argv[0] for argv, _, _ in ipvs_apply_steps(plan.balancers[0].host, "wlc", files)]
    assert "ipvsadm-restore" not in steps and "iptables-restore" in steps


def test_keepalived_config_test_rejects_what_keepalived_rejects(tmp_path: Path) -> None:
    """The validator is real: a broken file fails it (so the passing test above means something)."""
    cfg = load_stack("distributed", ROOT).with_overrides({"balancer.healthCheck": HC})
    conf, _ = keepalived.prepare(build_plan(cfg).balancers[0], tmp_path)
    conf.write_text(conf.read_text().replace("misc_timeout 6", "misc_timeout 0.5"))
    cp = subprocess.run(["keepalived", "--config-test", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0 and "misc_timeout" in cp.stdout + cp.stderr


@pytest.mark.parametrize("kind", ["mqtt", "tcp"])
def test_haproxy_checks_pass_haproxy_c(tmp_path: Path, kind: str) -> None:
    cfg = load_stack("distributed", ROOT).with_overrides({"balancer.healthCheck": HC | {"type": kind}})
    text = render_files(build_plan(cfg), cfg)["ipvs1/haproxy.cfg"]
    (tmp_path / "h.cfg").write_text(text)
    cp = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert text.count("check inter 1000ms fall 2 rise 1") == 3 and "timeout check 500ms" in text
    assert ("tcp-check expect binary 2002" in text) == (kind == "mqtt")


def test_probe_passes_a_live_broker_and_fails_a_dead_or_paused_one(cluster: Callable[..., Cluster]) -> None:
    cl = cluster("distributed", {"bridge.layout": "none"})
    b = cl.plan.brokers[1]
    run = ["bash", str(keepalived.PROBE), b.address, str(b.port), "0.5"]
    assert cl.ns_run(run).returncode == 0
    os.kill(cl.procs[1].pid, signal.SIGSTOP)  # accepts TCP in the kernel, never answers CONNECT
    try:
        cp = cl.ns_run(run)
        assert cp.returncode == 1 and "no CONNACK within 0.5s" in cp.stderr  # its own deadline ended it, not a hang
        # a port check would have called it alive
        tcp = cl.ns_run(["python3", "-c", f"import socket; socket.create_connection(({b.address!r}, {b.port}), 1)"])
        assert tcp.returncode == 0
    finally:
        os.kill(cl.procs[1].pid, signal.SIGCONT)
    assert cl.ns_run(run).returncode == 0
    netns.stop(cl.procs[1])
    cp = cl.ns_run(run)
    assert cp.returncode == 1 and "refused" in cp.stderr.lower()


@pytest.mark.parametrize("mode", ["tls", "mtls"])
def test_mqtt_probe_with_tls_brokers_is_refused_naming_the_key(mode: str) -> None:
    """The probe speaks plain MQTT: against a TLS listener it would take every broker out."""
    with pytest.raises(ConfigError) as err:
        load_stack("distributed", ROOT).with_overrides({"balancer.healthCheck": {"type": "mqtt"}, "security.mode": mode})
    assert err.value.key == "mqttlab:balancer.healthCheck.type" and "use type tcp" in str(err.value)
    cfg = load_stack("distributed", ROOT).with_overrides({"balancer.healthCheck": {"type": "tcp"}, "security.mode": mode})
    assert cfg.balancer.health_check.type == "tcp"


def test_probe_counts_a_not_authorized_connack_as_alive(tmp_path: Path) -> None:
    """A broker that requires passwords answers the probe's anonymous CONNECT with return code 5:
    it is alive and speaking MQTT (a real Mosquitto with allow_anonymous false)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "m.conf"
    conf.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n")
    (tmp_path / "passwd").write_text("")
    b = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = ["bash", str(keepalived.PROBE), "127.0.0.1", str(port), "2"]

        def answered() -> bool:
            return subprocess.run(run, capture_output=True, text=True, timeout=30).returncode == 0

        wait_for(answered, 30, "the probe to find the password-only broker alive")
    finally:
        b.terminate()
        b.wait(10)
    cp = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1 and "refused" in cp.stderr.lower()


def _one_connection(answer: bytes | None) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """probe.sh against a listener that reads its CONNECT and sends ``answer`` (None: closes)."""
    import re
    import socket
    import threading

    got = bytearray()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(20)

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(20)
                while len(got) < 2 or len(got) < 2 + got[1]:
                    chunk = conn.recv(256)
                    if not chunk:
                        return
                    got.extend(chunk)
                if answer is not None:
                    conn.sendall(answer)
                    conn.settimeout(2)
                    try:
                        got.extend(conn.recv(256))  # the DISCONNECT after an accepting CONNACK
                    except OSError:  # silence or a reset: the probe had what it needed
                        pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        cp = subprocess.run(["bash", str(keepalived.PROBE), "127.0.0.1", str(srv.getsockname()[1]), "2"],
                            capture_output=True, text=True, timeout=30)
        t.join(20)
    m = re.search(rb"mqttlab-probe-\d{7}", bytes(got))
    assert m, got
    return cp, bytes(got)


def test_probe_sh_sends_the_connect_haproxy_sends_and_judges_the_answer() -> None:
    """The shell probe's bytes are the CONNECT of :mod:`workloads.render.probe` (the one HAProxy's check
    sends), any CONNACK passes, anything else or nothing fails."""
    from workloads.render.probe import DISCONNECT, connect_packet

    cp, got = _one_connection(bytes((0x20, 0x02, 0x00, 0x00)))
    cid = got[got.index(b"mqttlab-probe-"):][:21].decode()
    assert cp.returncode == 0 and got == connect_packet(cid) + DISCONNECT, (cp.stderr, got)
    cp, got = _one_connection(bytes((0x20, 0x02, 0x00, 0x05)))  # not authorized: alive (no DISCONNECT to send)
    cid = got[got.index(b"mqttlab-probe-"):][:21].decode()
    assert cp.returncode == 0 and got == connect_packet(cid), (cp.stderr, got)
    cp, _ = _one_connection(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert cp.returncode == 1 and "unexpected answer" in cp.stderr
    cp, _ = _one_connection(None)
    assert cp.returncode == 1 and "closed before CONNACK" in cp.stderr


def test_probe_sh_bounds_a_connect_nobody_answers() -> None:
    """A SYN dropped on the way (a silent host) is ended by the probe's own deadline, not the
    kernel's minutes of retries; in a network namespace of the test's own."""
    script = ('ip link set lo up && nft add table ip t && nft add chain ip t o "{ type filter hook output priority 0; }" '
              f'&& nft add rule ip t o tcp dport 9 drop && exec bash {keepalived.PROBE} 127.0.0.1 9 0.5')
    cp = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 1 and "127.0.0.1:9: no CONNACK within 0.5s" in cp.stderr, cp.stderr


def _states(sock: Path) -> dict[str, str]:
    return {str(r["real"]): str(r["status"]) for r in sample_haproxy(str(sock))}


def test_haproxy_mqtt_check_takes_a_killed_broker_out_and_back(cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """HAProxy with the rendered check, in front of real brokers: a killed broker goes DOWN (seen
    through the balancer monitor's sampler) and comes back UP once restarted."""
    cl = cluster("distributed", {"bridge.layout": "none", "balancer.healthCheck": HC})
    bal = build_plan(cl.cfg).balancers[0]
    vip = "198.18.99.1"
    netns.run(["ip", "addr", "add", f"{vip}/32", "dev", "lo"], ns=cl.ns)
    bal = type(bal)(**{**bal.__dict__, "vip": vip})
    sock = tmp_path / "h.sock"
    cfg_file = tmp_path / "h.cfg"
    cfg_file.write_text(haproxy_cfg(bal, maxconn=256, stats_socket=str(sock)))
    hp = netns.spawn(["haproxy", "-W", "-db", "-f", str(cfg_file)], cl.ns, tmp_path / "haproxy.log")
    try:
        b2 = f"{cl.plan.brokers[1].address}:{cl.plan.brokers[1].port}"
        wait_for(lambda: sock.exists() and set(_states(sock).values()) == {"UP"}, 20, "every broker UP")
        netns.stop(cl.procs[1])
        wait_for(lambda: _states(sock)[b2] == "DOWN", 20, "broker2 DOWN")
        assert all(v == "UP" for k, v in _states(sock).items() if k != b2)
        conf = cl.files / "brokers" / "broker2" / "mosquitto.conf"
        cl.procs[1] = netns.spawn(["mosquitto", "-c", str(conf)], cl.ns, cl.files / "broker2-again.log")
        wait_for(lambda: _states(sock)[b2] == "UP", 20, "broker2 UP again")
    finally:
        netns.stop(hp)
