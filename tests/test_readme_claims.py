"""What the documentation promises about the bench and the lab, each shown with real Mosquitto brokers
on loopback or a real (small) lab: several entry points, per-publisher topics,
messagesPerPublisher, cleanSession and keepalive as the broker saw them, connectRate, the
default balancer, ``lab up``, ``--keep-addresses``, ``lab run --vm`` and a root namespace that
a lab run leaves exactly as it found it."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MQTTLAB, ROOT
from tests.test_bench import Broker
from workloads.describe import standin
from workloads.hosts.lab import lab as lab_mod
from workloads.hosts.lab import vm


def bench_run(tmp_path: Path, target: str, *args: str) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "run"
    cp = subprocess.run([*MQTTLAB, "bench", "run", "--target", target, "--out", str(out), "--interval-ms", "2", "--json", "--quiet", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert cp.returncode in (0, 1), cp.stderr[-3000:]
    return json.loads(cp.stdout), out


def rows(out: Path, kind: str) -> list[dict[str, str]]:
    return [r for p in sorted(out.glob(f"bench/*/{kind}-*.csv")) for r in csv.DictReader(p.open())]


def connects(log: Path) -> dict[str, str]:
    """client id -> Mosquitto's (protocol, clean, keepalive) note, e.g. ``p2, c1, k60``."""
    return {m.group(1): m.group(2) for m in re.finditer(r"New client connected from \S+ as (\S+) \(([^)]*)\)", log.read_text())}


def test_clients_are_spread_over_several_targets(tmp_path: Path) -> None:
    a, b = Broker(tmp_path), Broker(tmp_path)
    try:
        s, out = bench_run(tmp_path, f"{a.target},{b.target}", "--publishers", "2", "--subscribers", "4", "--messages", "200", "--qos", "1",
                           "--drain-s", "1")
    finally:
        a.stop()
        b.stop()
    entry = {r["client_id"]: r["entry_point"] for r in rows(out, "clients")}
    assert sorted(entry.values()) == sorted([a.target] * 3 + [b.target] * 3)
    # two unbridged brokers: a subscriber hears only the publisher that dialled its own broker
    assert set(connects(a.log)) | set(connects(b.log)) >= set(entry) and not set(connects(a.log)) & set(connects(b.log))
    assert (s["expected"], s["delivered"], s["lost"]) == (4 * 200, 4 * 100, 4 * 100)
    for r in rows(out, "subscribers"):
        same = entry[r["client_id"]] == entry[next(c for c in entry if c.endswith(f"-pub{r['pub']}"))]
        assert int(r["received"]) == (100 if same else 0)


def test_per_publisher_topics_reach_only_their_subscribers(tmp_path: Path) -> None:
    br = Broker(tmp_path)
    try:
        s, out = bench_run(tmp_path, br.target, "--publishers", "3", "--subscribers", "5", "--messages", "301", "--topic-layout",
                           "per-publisher", "--topic", "lab/t", "--qos", "1")
    finally:
        br.stop()
    heard = {(int(r["sub"]), int(r["pub"])): int(r["received"]) for r in rows(out, "subscribers")}
    assert heard == {(0, 0): 101, (1, 1): 100, (2, 2): 100, (3, 0): 101, (4, 1): 100}  # subscriber i hears publisher i mod 3 only
    assert (s["expected"], s["delivered"], s["lost"], s["foreign"]) == (502, 502, 0, 0)


def test_messages_per_publisher_and_session_settings_as_the_broker_saw_them(tmp_path: Path) -> None:
    br = Broker(tmp_path)
    try:
        s, out = bench_run(tmp_path, br.target, "--publishers", "2", "--subscribers", "2", "--messages", "60", "--messages-per-publisher",
                           "true", "--clean-session", "false", "--keepalive", "17", "--qos", "1")
        _s2, out2 = bench_run(tmp_path / "b", br.target, "--publishers", "1", "--subscribers", "1", "--messages", "5", "--mqtt-version", "5",
                              "--clean-session", "true", "--keepalive", "33")
    finally:
        br.stop()
    assert [int(r["sent"]) for r in rows(out, "publishers")] == [60, 60]
    assert (s["sent"], s["expected"], s["delivered"]) == (120, 240, 240)
    seen = connects(br.log)
    ours = {c: v for c, v in seen.items() if c in {r["client_id"] for r in rows(out, "clients")}}
    assert len(ours) == 4 and set(ours.values()) == {"p2, c0, k17"}  # Mosquitto's p2 is MQTT 3.1.1; persistent session; keepalive 17 s
    five = {c: v for c, v in seen.items() if c in {r["client_id"] for r in rows(out2, "clients")}}
    assert set(five.values()) == {"p5, c1, k33"}


def test_connect_rate_paces_connections(tmp_path: Path) -> None:
    br = Broker(tmp_path)
    try:
        _s, out = bench_run(tmp_path, br.target, "--publishers", "5", "--subscribers", "5", "--messages", "5", "--connect-rate", "8",
                            "--workers", "1")
        _s, fast = bench_run(tmp_path / "f", br.target, "--publishers", "5", "--subscribers", "5", "--messages", "5", "--connect-rate",
                             "10000", "--workers", "1")
    finally:
        br.stop()
    at = sorted(float(r["connected_at"]) for r in rows(out, "clients"))
    assert len(at) == 10 and at[-1] - at[0] >= 9 / 8 * 0.8  # ten clients at 8 per second: at least about 1.1 s from first to last
    at_fast = sorted(float(r["connected_at"]) for r in rows(fast, "clients"))
    assert at_fast[-1] - at_fast[0] < at[-1] - at[0]


def test_default_balancer_is_ipvs_or_the_closest_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without IPVS the default is nftables kernel NAT for every scheduler (docs/stand-in.md, "The faithful
    stand-in"): exact for rr, wrr and sh, round robin for the least-connection schedulers and the
    source hash for mh, and the note and the manifest say which."""
    monkeypatch.setattr(lab_mod, "kernel_has_ipvs", lambda: True)
    assert lab_mod.choose_balancer(None, "lc") == ("ipvs", "") and lab_mod.choose_balancer("ipvs", "rr") == ("ipvs", "")
    assert standin.stood_in("ipvs", "lc") == {"for": "ipvs lc", "by": "ipvs", "kind": "kernel NAT", "scheduler": "lc", "exact": True}
    monkeypatch.setattr(lab_mod, "kernel_has_ipvs", lambda: False)
    how = {"rr": ("round robin (numgen inc)", True),
           "wrr": ("weighted round robin (numgen inc over weight slots)", True),
           "sh": ("source hashing (jhash ip saddr over weight slots)", True),
           "lc": ("round robin (numgen inc): nftables has no least-connection scheduler", False),
           "wlc": ("weighted round robin (numgen inc over weight slots): nftables has no least-connection scheduler", False),
           "mh": ("source hashing (jhash ip saddr): nftables has no maglev hashing", False)}
    for sched, (what, exact) in how.items():
        assert lab_mod.choose_balancer(None, sched) == (
            "nftables", f"no IPVS in this kernel: nftables kernel NAT stands in for IPVS {sched}, {what} (use --vm for real IPVS)")
        assert standin.stood_in("nftables", sched) == {"for": f"ipvs {sched}", "by": "nftables", "kind": "kernel NAT", "scheduler": what,
                                                       "exact": exact}
    with pytest.raises(lab_mod.LabError, match="--vm"):
        lab_mod.choose_balancer("ipvs", "lc")
    # asked for by name: no note where nftables is exact, the approximation named where it is not; HAProxy always says what it changes
    assert lab_mod.choose_balancer("nftables", "wrr") == ("nftables", "")
    assert lab_mod.choose_balancer("nftables", "lc") == (
        "nftables", "nftables balances by round robin (numgen inc): nftables has no least-connection scheduler; IPVS lc is not available there")
    assert lab_mod.choose_balancer("haproxy", "lc") == (
        "haproxy", "haproxy (TCP proxy, leastconn) instead of IPVS lc: it terminates every connection, so brokers see the balancer as "
        "the client and its buffers sit in the data path")
    assert standin.stood_in("haproxy", "mh") == {"for": "ipvs mh", "by": "haproxy", "kind": "TCP proxy", "scheduler": "source consistent hash",
                                                 "exact": False}
    with pytest.raises(lab_mod.LabError, match="--balancer 'lvs': choose one of"):
        lab_mod.choose_balancer("lvs", "rr")


# --------------------------------------------------------------------------- the real lab

SMALL = ["--publishers", "3", "--subscribers", "3", "--messages", "60", "--interval-ms", "20", "--drain-s", "3", "--time-limit-s", "120"]
ROOT_NS_NOISE = re.compile(r"^net\.netfilter\.nf_conntrack_count|^net\.ipv4\.neigh\.|^net\.ipv6\.neigh\.|^net\.ipv4\.route\.gc|"
                           r"^net\.core\.netdev_rss_key|^net\.ipv4\.tcp_fastopen_key|^net\.ipv4\.ip_local_reserved_ports")


def root_namespace_state() -> dict[str, str]:
    """Everything of the host's root network namespace a lab could touch: firewall, routing, sysctls."""
    def out(*cmd: str) -> str:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60).stdout

    sysctls = "\n".join(line for line in out("sysctl", "-a", "--pattern", "^net\\.").splitlines() if not ROOT_NS_NOISE.match(line))
    links = re.sub(r"(?m)^\s+link/.*$|\d+: ", "", out("ip", "-o", "link", "show"))  # interface list, state and flags
    return {"nft": out("nft", "list", "ruleset"), "iptables": re.sub(r"(?m)^#.*$|\[\d+:\d+\]", "", out("iptables-save")),
            "addr": out("ip", "-o", "addr", "show"), "route": out("ip", "route", "show", "table", "all"), "links": links,
            "sysctl": sysctls, "netns": out("ip", "netns", "list")}


@pytest.mark.lab
def test_lab_run_with_the_stacks_addresses_leaves_the_root_namespace_untouched(tmp_path: Path) -> None:
    before = root_namespace_state()
    cp = subprocess.run([*MQTTLAB, "lab", "run", "-s", "distributed", "--keep-addresses", *SMALL, "--json", "--quiet", "--out",
                         str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    s = json.loads(cp.stdout)
    after = root_namespace_state()
    for key in before:
        assert after[key] == before[key], key
    assert (s["expected"], s["lost"]) == (3 * 60, 0)
    manifest = json.loads((Path(s["run_dir"]) / "manifest.json").read_text())
    assert [h["address"] for h in manifest["plan"]["hosts"]] == ["10.2.0.10", "10.3.0.10", "10.4.0.10"]  # the stack's own addresses
    assert {e for r in rows(Path(s["run_dir"]), "clients") for e in [r["entry_point"]]} == {"10.3.0.10:1883", "10.4.0.10:1883"}
    # no --balancer: IPVS where the kernel has it, else the nftables stand-in (round robin for the stack's lc)
    assert s["balancer"]["kind"] == ("ipvs" if lab_mod.kernel_has_ipvs() else "nftables") and s["requested_scheduler"] == "lc"
    assert manifest["balancer"] == s["balancer"]["kind"]
    assert manifest["stood_in"] == standin.stood_in(manifest["balancer"], "lc") and manifest["balancer_note"] == s["balancer"]["note"]
    if not lab_mod.kernel_has_ipvs():
        assert manifest["stood_in"]["scheduler"] == "round robin (numgen inc): nftables has no least-connection scheduler"
        assert s["balancer"]["note"] == lab_mod.choose_balancer(None, "lc")[1]


@pytest.mark.lab
def test_lab_up_serves_mqtt_until_lab_down(tmp_path: Path) -> None:
    up = subprocess.run([*MQTTLAB, "lab", "up", "-s", "centralized", "--balancer", "nftables", "--scheduler", "rr", "--out", str(tmp_path)],
                        capture_output=True, text=True, cwd=ROOT, timeout=180)
    lab_id = re.search(r"lab (\S+) is up", up.stdout)
    try:
        assert up.returncode == 0 and lab_id, up.stdout + up.stderr[-3000:]
        subs = re.findall(r"ip netns exec (\S+) mosquitto_sub -h (\S+) -p (\d+)", up.stdout)
        assert len(subs) == 2 and {h for _ns, h, _p in subs} == {"198.18.1.10"}  # centralized: one entry point for both client hosts
        st = subprocess.run([*MQTTLAB, "lab", "status", "--json"], capture_output=True, text=True, cwd=ROOT)
        mine = [lb for lb in json.loads(st.stdout)["labs"] if lb["lab_id"] == lab_id.group(1)]
        assert len(mine) == 1 and all(mine[0]["processes"].values())
        ns, host, port = subs[1]  # from ipvs2, through ipvs1's balancer (masqueraded), to a broker and back
        sub = subprocess.Popen(["ip", "netns", "exec", ns, "mosquitto_sub", "-h", host, "-p", port, "-t", "readme/up", "-C", "1", "-W", "30"],
                               stdout=subprocess.PIPE, text=True)
        got = ""
        for _ in range(50):  # the subscription is in place once a retained-free publish comes back; bounded tries
            subprocess.run(["ip", "netns", "exec", subs[0][0], "mosquitto_pub", "-h", host, "-p", port, "-t", "readme/up", "-m", "hello"],
                           capture_output=True, timeout=10)
            try:
                got = sub.communicate(timeout=0.5)[0]
                break
            except subprocess.TimeoutExpired:
                continue
        if sub.poll() is None:
            sub.kill()
        assert got.strip() == "hello"
    finally:
        if lab_id:
            down = subprocess.run([*MQTTLAB, "lab", "down", "--id", lab_id.group(1)], capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert down.returncode == 0
    st = json.loads(subprocess.run([*MQTTLAB, "lab", "status", "--json"], capture_output=True, text=True, cwd=ROOT).stdout)
    assert lab_id.group(1) not in {lb["lab_id"] for lb in st["labs"]} and not any(lab_id.group(1) in n for n in st["stray_namespaces"])


@pytest.mark.vm
@pytest.mark.lab
@pytest.mark.timeout(2200)
def test_lab_run_vm_uses_real_ipvs(tmp_path: Path) -> None:
    reason = vm.unavailable_reason()
    if reason:
        pytest.skip(f"no micro-VM here: {reason}")
    # the VM runs 480 s, longer while the guest works (at most 1440 s), stopped after two idle
    # minutes (at 600 s); one run takes about 150 s here
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MQTTLAB, "lab", "run", "--vm", "--vm-timeout", "480", "-s", "distributed", "--balancer", "ipvs", "--scheduler", "rr",
                               *SMALL, "--time-limit-s", "900", "--json", "--quiet", "--out", str(tmp_path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=1500)  # the run's time limit as a bound, not an expectation: see tests/test_lab.py

    cp = run()
    if cp.returncode == 3 and "the micro-VM did not finish" in cp.stderr and "the guest last said: [lab " in cp.stderr:
        # a known defect, not yet understood: in two full suites of this machine the guest went idle
        # while setting up the brokers' cgroups (its last line "brokers: ..."), and the VM wait stopped
        # it; standalone and beside a busy neighbour the same command passes. Said, and tried once more
        warnings.warn(f"lab run --vm: a guest went idle and was stopped; trying once more: {cp.stderr.strip().splitlines()[-1]}", stacklevel=1)
        cp = run()
    assert cp.returncode == 0, cp.stderr[-3000:]
    s = json.loads(cp.stdout)
    assert s["balancer"]["kind"] == "ipvs" and (s["expected"], s["lost"]) == (3 * 60, 0)
    assert "ESTABLISHED" in (Path(s["run_dir"]) / "balancer" / "ipvs1-connections.txt").read_text()
