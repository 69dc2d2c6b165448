"""The real local lab, end to end: namespaces, capped brokers, balancers, bench, teardown."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MQTTLAB, ROOT, wait_for
from workloads.describe import standin
from workloads.hosts.lab import lab as lab_mod
from workloads.hosts.lab import netns, vm

SMALL = ["--publishers", "6", "--subscribers", "6", "--messages", "300", "--interval-ms", "20", "--drain-s", "3", "--time-limit-s", "120"]


def lab_run(*args: str, out: Path, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MQTTLAB, "lab", "run", *args, "--out", str(out)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


def lab_leftovers(mine: Path | None = None) -> dict[str, list[str]]:
    """What any lab (not the test suite's own namespaces) has left on this machine; processes
    only those whose command line names ``mine`` (a test's own folder) when given."""
    cg = [str(p) for base in (Path("/sys/fs/cgroup"), *(Path("/sys/fs/cgroup") / h for h in ("cpu", "cpuacct", "cpuset", "memory", "pids")))
          for p in base.glob("mqttlab-*")]
    procs = subprocess.run(["pgrep", "-af", "rendered/brokers|workloads.cli (bench|monitor)|haproxy-lab.cfg"], capture_output=True,
                           text=True).stdout.splitlines()
    state = [str(p) for p in lab_mod.STATE_DIR.glob("*")] if lab_mod.STATE_DIR.is_dir() else []
    return {"namespaces": [n for n in netns.list_namespaces() if not n.startswith("mqttlab-test")], "cgroups": cg,
            "processes": [p for p in procs if "pgrep" not in p and (mine is None or str(mine) in p)], "state": state,
            "mounts": [m for m in Path("/proc/mounts").read_text().splitlines() if "/run/netns/mqttlab-" in m and "mqttlab-test" not in m]}


def assert_nothing_left(mine: Path | None = None) -> None:
    left = lab_leftovers(mine)
    assert not any(left.values()), left


def client_brokers(run_dir: Path, tag: int) -> dict[str, tuple[str, str]]:
    """client id -> (broker, source address the broker saw), from the brokers' own logs."""
    out = {}
    for log in (run_dir / "logs").glob("broker*.log"):
        for m in re.finditer(r"New client connected from (\S+):\d+ as (\S+)", log.read_text()):
            if m.group(2).startswith(f"mqttlab-{tag:08x}-"):
                out[m.group(2)] = (log.stem, m.group(1))
    return out


def client_hosts(run_dir: Path) -> dict[str, tuple[str, str]]:
    """client id -> (client host, entry point)."""
    out = {}
    for f in (run_dir / "bench").glob("*/clients-*.csv"):
        for line in f.read_text().splitlines()[1:]:
            cid, _role, _i, _w, entry, *_ = line.split(",")
            out[cid] = (f.parent.name, entry)
    return out


def check_run(cp: subprocess.CompletedProcess[str], topology: str, balancer: str, scheduler: str) -> dict[str, Any]:
    assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr[-4000:]
    s = json.loads(cp.stdout)
    assert (s["lost"], s["duplicates"], s["loss_pct"]) == (0, 0, 0.0) and s["expected"] == 300 * 6 and s["delivered"] == 1800
    assert s["clients_connected"] == s["clients"] == 12 and s["disconnects"] == 0 and not s["partial"]
    assert s["balancer"]["kind"] == balancer and s["topology"] == topology and s["requested_scheduler"] == scheduler
    assert s["scheduler"] == standin.balancing(balancer, scheduler).scheduler
    run_dir = Path(s["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    plan = manifest["plan"]
    landed = client_brokers(run_dir, manifest["tag"])
    hosts = client_hosts(run_dir)
    assert set(landed) == set(hosts) and len(landed) == 12
    assert sum(s["connections_per_broker"].values()) == 12 and all(v > 0 for v in s["connections_per_broker"].values())
    ipvs1, ipvs2 = plan["hosts"][1]["address"], plan["hosts"][2]["address"]
    if topology == "centralized":
        assert s["balancer"]["hosts"] == ["ipvs1"]
        assert {entry for _h, entry in hosts.values()} == {f"{ipvs1}:1883"}
        assert not (run_dir / "monitor" / "balancer-ipvs2.csv").exists()
        if balancer != "haproxy":  # NAT: ipvs2's clients are masqueraded by ipvs1, so brokers see ipvs1 only
            assert {src for _b, src in landed.values()} == {ipvs1}
    else:
        assert s["balancer"]["hosts"] == ["ipvs1", "ipvs2"]
        assert {hosts[c][1] for c in hosts if hosts[c][0] == "ipvs2"} == {f"{ipvs2}:1883"}
        if balancer != "haproxy":
            assert {landed[c][1] for c in landed if hosts[c][0] == "ipvs2"} == {ipvs2}
    # the spread the scheduler implies, per balancing counter
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for cid, (broker, _src) in landed.items():
        host = hosts[cid][0]
        key = host if (balancer == "nftables" or topology == "distributed") else "one"
        groups[key][broker] += 1
    # a connection attempt that failed before its CONNACK (a slow handshake under emulation) was
    # still a connection the balancer counted and scheduled: each such attempt may skew the spread by one
    failed: Counter[str] = Counter()
    for f in (run_dir / "bench").glob("*/events-*.csv"):
        for line in f.read_text().splitlines()[1:]:
            if line.split(",")[2] in ("connect_error", "connack_error"):
                failed[f.parent.name if (balancer == "nftables" or topology == "distributed") else "one"] += 1
    for key, counts in groups.items():
        per = [counts.get(f"broker{i}", 0) for i in (1, 2, 3)]
        if balancer == "ipvs" and scheduler == "lc":
            # the kernel's lc weighs a connection still in its handshake as 1/256 of an established
            # one (ip_vs.h, ip_vs_dest_conn_overhead: activeconns << 8 + inactconns), so clients whose handshakes overlap
            # (slow under emulation) can land on one broker: what lc guarantees is that no broker
            # with fewer established connections is passed over, so every broker gets some
            assert min(per) >= 1, (key, per, failed)
        elif balancer == "haproxy" and scheduler == "lc":
            # HAProxy runs a thread per CPU, and leastconn picks under the balancer's lock held
            # for reading (src/lb_fwlc.c, fwlc_get_next_server): two threads accepting at once can
            # both take the same least-loaded server (seen beside a busy loop: 3/2/1 of 6, no
            # failed connect), so the same guarantee as the kernel's lc
            assert min(per) >= 1, (key, per, failed)
        else:
            assert max(per) - min(per) <= 1 + failed[key], (key, per, failed)
    caps = manifest["broker_caps"]
    assert set(caps) == {"broker1", "broker2", "broker3"}
    for c in caps.values():
        assert c["cpus"] == pytest.approx(0.25) and c["memory_bytes"] == 128 * 1024 * 1024 and c["broker_pid"] in c["pids"]
    assert manifest["cgroup_version"] in ("v1", "v2")
    for csv_name in ["brokers.csv", *[f"balancer-{h}.csv" for h in s["balancer"]["hosts"]]]:
        assert len((run_dir / "monitor" / csv_name).read_text().splitlines()) > 2, csv_name
    return s


@pytest.mark.lab
@pytest.mark.parametrize(("topology", "balancer", "scheduler"), [
    ("distributed", "nftables", "rr"), ("centralized", "nftables", "rr"),
    ("distributed", "haproxy", "lc"), ("centralized", "haproxy", "rr"),
])
def test_lab_end_to_end(tmp_path: Path, topology: str, balancer: str, scheduler: str) -> None:
    cp = lab_run("-s", topology, "--balancer", balancer, "--scheduler", scheduler, *SMALL, "--json", "--quiet", out=tmp_path)
    check_run(cp, topology, balancer, scheduler)
    assert_nothing_left(tmp_path)


@pytest.mark.lab
def test_caps_follow_overrides(tmp_path: Path) -> None:
    cp = lab_run("-s", "distributed", "--balancer", "nftables", "--scheduler", "rr", "--broker-cpus", "0.5", "--broker-memory-mb", "64",
                 *SMALL, "--json", "--quiet", out=tmp_path)
    assert cp.returncode == 0, cp.stderr[-3000:]
    caps = json.loads((Path(json.loads(cp.stdout)["run_dir"]) / "manifest.json").read_text())["broker_caps"]
    assert {c["cpus"] for c in caps.values()} == {0.5} and {c["memory_bytes"] for c in caps.values()} == {64 * 1024 * 1024}


def start_long_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "lab.log"
    proc = subprocess.Popen([*MQTTLAB, "lab", "run", "-s", "distributed", "--balancer", "nftables", "--scheduler", "rr", "--publishers", "4",
                             "--subscribers", "4", "--messages", "4000", "--interval-ms", "20", "--out", str(tmp_path / "runs")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    wait_for(lambda: "publishing" in log.read_text(), 120, "the run to be publishing")
    return proc, log


@pytest.mark.lab
def test_ctrl_c_mid_run_tears_everything_down(tmp_path: Path) -> None:
    proc, log = start_long_run(tmp_path)
    assert lab_leftovers(tmp_path)["namespaces"]  # it really was up
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130, log.read_text()[-2000:]
    assert_nothing_left(tmp_path)
    manifest = json.loads(next((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "partial" and manifest["reason"] == "interrupted"


@pytest.mark.lab
def test_a_bench_process_killed_mid_run_fails_the_run_naming_it(tmp_path: Path) -> None:
    """Its numbers are missing: the run must not pass as complete with what the others wrote."""
    proc, log = start_long_run(tmp_path)
    runs = tmp_path / "runs"
    states = [json.loads(p.read_text()) for p in lab_mod.STATE_DIR.glob("*.json")]
    mine = next(st for st in states if str(st["run_dir"]).startswith(str(runs)))
    os.kill(mine["pids"]["bench-pub-ipvs2"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    err = log.read_text()
    assert proc.returncode == 1, err[-2000:]
    assert "bench processes were killed: bench-pub-ipvs2 by SIGKILL" in err.splitlines()[-1]
    manifest = json.loads(next(runs.glob("*/manifest.json")).read_text())
    assert manifest["status"] == "partial" and "bench-pub-ipvs2 by SIGKILL" in manifest["reason"]
    assert_nothing_left(tmp_path)


@pytest.mark.lab
def test_kill_9_then_lab_down_leaves_nothing(tmp_path: Path) -> None:
    proc, _log = start_long_run(tmp_path)
    proc.kill()
    proc.wait(10)
    wait_for(lambda: not lab_leftovers(tmp_path)["processes"], 60, "the killed runner's processes to die with it")
    left = lab_leftovers(tmp_path)
    assert left["namespaces"] and left["cgroups"] and left["state"]  # a killed runner leaves namespaces and state behind ...
    st = subprocess.run([*MQTTLAB, "lab", "status"], capture_output=True, text=True, cwd=ROOT)
    assert "lab " in st.stdout and "0/" in st.stdout and "processes alive" in st.stdout and "orphaned" in st.stdout
    down = subprocess.run([*MQTTLAB, "lab", "down"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert down.returncode == 0 and "namespace" in down.stdout
    assert_nothing_left(tmp_path)  # ... and lab down removes all of it
    again = subprocess.run([*MQTTLAB, "lab", "down"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "nothing to remove" in again.stdout  # idempotent


@pytest.mark.lab
def test_bad_input_stops_before_anything_is_created(tmp_path: Path) -> None:
    before = lab_leftovers(tmp_path)
    out = tmp_path / "runs"
    cp = lab_run("-s", "nosuchstack", out=out)
    assert cp.returncode == 2 and "no file" in cp.stderr and "known stacks here: centralized, distributed, smoke" in cp.stderr
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "Pulumi.yaml").write_text("name: mqttlab\n")
    (proj / "Pulumi.bad.yaml").write_text("config:\n  mqttlab:brokers:\n    cpus: -1\n")
    cp = lab_run("-s", "bad", "--project-dir", str(proj), out=out)
    assert cp.returncode == 2 and "mqttlab:brokers.cpus=-1" in cp.stderr
    cp = lab_run("-s", "distributed", "--qos", "7", out=out)
    assert cp.returncode == 2 and "--qos=7" in cp.stderr
    env = dict(os.environ, PATH="/nonexistent")
    cp = subprocess.run([*MQTTLAB, "lab", "run", "-s", "distributed", "--balancer", "haproxy", "--out", str(out)], capture_output=True,
                        text=True, cwd=ROOT, env=env)
    assert cp.returncode == 3 and "missing tools" in cp.stderr and "apt-get install" in cp.stderr
    if not lab_mod.kernel_has_ipvs():
        cp = lab_run("-s", "distributed", "--balancer", "ipvs", out=out)
        assert cp.returncode == 3 and "--vm" in cp.stderr
    # an unprivileged user who can read the project (a clone under a private folder, mktemp -d's
    # 0700, is out of its reach: then this part says nothing and is not run)
    if all(d.stat().st_mode & 0o001 for d in (ROOT, *ROOT.parents)):
        nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *MQTTLAB, "lab", "run", "-s", "distributed",
                                 "--balancer", "haproxy", "--out", str(tmp_path / "nobody")], capture_output=True, text=True, cwd=ROOT)
        assert nobody.returncode == 3 and "as root" in nobody.stderr, nobody.stderr
    assert not out.exists() or not any(out.iterdir())
    assert lab_leftovers(tmp_path) == before


@pytest.mark.vm
@pytest.mark.lab
@pytest.mark.timeout(2200)
def test_real_ipvs_lab_in_the_micro_vm(tmp_path: Path) -> None:
    """lc and rr, both topologies, with the kernel's IPVS: one VM boot for two runs (each costs
    minutes under emulation; the third pairing, distributed rr, runs through `lab run --vm`)."""
    reason = vm.unavailable_reason()
    if reason and not lab_mod.kernel_has_ipvs():
        pytest.skip(f"no IPVS here and no micro-VM: {reason}")
    runs = tmp_path / "runs"
    # distributed rr through `mqttlab lab run --vm` itself: tests/test_readme_claims.py. Each case
    # impairs links (the host kernel has no netem): the bridges in one, the other two classes in the other
    cases = [("distributed", "lc"), ("centralized", "rr")]
    links = {"distributed": ["--set", f"links.bridge.delayMs={BRIDGE_DELAY_MS}"],
             "centralized": ["--set", "links.clientBalancer.delayMs=5", "--set", "links.balancerBroker.delayMs=2"]}
    py = vm.guest_python()
    lines = ["set -e", "mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup", "modprobe ip_vs", f"cd {ROOT}"]
    for i, (topology, sched) in enumerate(cases):
        # the time limit is a bound, not an expectation: a run ends when it is done, and under
        # emulation on a busy machine starting the clients alone takes minutes; the VM's own wait
        # is bounded by the guest's progress (vm.run_in_vm)
        lines.append(f"{py} -m workloads.cli lab run -s {topology} --balancer ipvs --scheduler {sched} {' '.join(SMALL)} --time-limit-s 900 "
                     f"{' '.join(links[topology])} "
                     f"--json --quiet --out {runs} > {runs}/case{i}.json 2> {runs}/case{i}.err")
    lines.append(f"ip netns list > {runs}/netns-after.txt")
    runs.mkdir()
    t0 = time.time()
    if lab_mod.kernel_has_ipvs():
        cp = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=1200)
    else:
        cp = vm.run_in_vm("\n".join(lines), [runs], timeout=700)  # longer while the guest works, at most 2100 s
    for i, (topology, sched) in enumerate(cases):
        out = (runs / f"case{i}.json").read_text() if (runs / f"case{i}.json").exists() else ""
        err = (runs / f"case{i}.err").read_text() if (runs / f"case{i}.err").exists() else cp.stderr[-3000:]
        s = check_run(subprocess.CompletedProcess([], 0 if out else 1, out, err), topology, "ipvs", sched)
        conns = (Path(s["run_dir"]) / "balancer" / "ipvs1-connections.txt").read_text()
        assert "ESTABLISHED" in conns  # the IPVS connection table, collected at the end
        check_links(Path(s["run_dir"]), topology)
    assert (runs / "netns-after.txt").read_text().strip() == ""
    print(f"{len(cases)} IPVS lab runs in the micro-VM took {time.time() - t0:.0f}s")


BRIDGE_DELAY_MS = 50


def check_links(run_dir: Path, topology: str) -> None:
    """The impairment as the kernel holds it (read back into the manifest), and as the deliveries
    felt it: every delivery that crossed a bridge took at least the bridge's delay."""
    from workloads.analysis import metrics
    from workloads.analysis.load import load_run
    from workloads.analysis.locality import locality

    links = json.loads((run_dir / "manifest.json").read_text())["links"]
    assert links["carried_out"] == "lab: tc netem"
    netems = {(a["host"], a["dev"]): [q for q in a["qdiscs"] if q["kind"] == "netem"] for a in links["applied"]}
    counted = {(c["host"], c["dev"]): c["qdiscs"] for c in links["counters"]}
    if topology == "distributed":
        assert set(netems) == {("brokers", "lo")}
        [q] = netems[("brokers", "lo")]
        assert q["options"]["delay"]["delay"] == pytest.approx(BRIDGE_DELAY_MS / 1000), q
        assert counted[("brokers", "lo")][0]["packets"] > 0  # the bridges' traffic went through it
        run = load_run(run_dir)
        loc = locality(run, metrics.client_brokers(run))
        assert loc is not None and loc["unrouted"] == 0 and loc["by_bridges_crossed"].get("1"), loc
        assert loc["by_bridges_crossed"]["1"]["latency_ms"]["min"] >= BRIDGE_DELAY_MS * 0.99, loc  # netem delays every packet by it
    else:
        assert set(netems) == {("sw", "p0"), ("sw", "p1"), ("sw", "p2")}  # brokers, ipvs1 (brokers and ipvs2), ipvs2 (ipvs1)
        assert len(netems[("sw", "p1")]) == 2 and len(netems[("sw", "p0")]) == 1
        p1 = next(a for a in links["applied"] if a["dev"] == "p1")
        assert len([f for f in p1["filters"] if f.get("options", {}).get("match")]) == 2, p1["filters"]


@pytest.mark.lab
@pytest.mark.timeout(600)
def test_lab_with_emqtt_bench_sets_its_totals_beside_the_engines(tmp_path: Path) -> None:
    """--load-generator emqtt-bench: the engine's exact run, then the same scenario through the
    real emqtt-bench on the same lab; the summary carries both."""
    from workloads.bench import emqtt
    from workloads.hosts.lab.cli import format_lab_summary

    if emqtt.find_native() is None:
        pytest.skip(emqtt.missing_native())
    cp = lab_run("-s", "distributed", "--balancer", "haproxy", *SMALL, "--load-generator", "emqtt-bench", "--json", "--quiet", out=tmp_path)
    s = check_run(cp, "distributed", "haproxy", "lc")
    em = s["emqtt_bench"]
    assert em["estimated"] and em["publish_complete"] and em["planned"] == em["sent"] == 300
    assert em["expected"] == 1800 and em["delivered"] == 1800 and em["lost"] == 0, em
    run_dir = Path(s["run_dir"])
    assert json.loads((run_dir / "manifest.json").read_text())["emqtt_bench"] == em
    assert sorted(p.name for p in run_dir.glob("bench/*/emqtt-*.log")) == ["emqtt-pub.log", "emqtt-pub.log", "emqtt-sub.log", "emqtt-sub.log"]
    text = format_lab_summary(s)
    assert "emqtt-bench (same scenario, its own totals, estimated): sent 300  delivered 1800/1800" in text
    assert "engine, exact: delivered 1800/1800" in text
    assert_nothing_left()


def bare_lc(text: str) -> list[str]:
    """Every place ``text`` calls something lc other than as what a stand-in stood in for
    (``ipvs-lc``, ``IPVS lc``), with some context to read it by."""
    text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "data:", text)  # an embedded figure's bytes can spell "+lc+"
    return re.findall(r".{0,40}(?<![\w-])lc(?![\w-]).{0,40}", re.sub(r"(?i)ipvs[- ]lc", "", text))


def saved_labels(monkeypatch: pytest.MonkeyPatch, *modules: Any) -> dict[str, list[str]]:
    """The legend entries, tick labels and figure title of every plot the modules save, by file
    name, read from the figures as they are written."""
    seen: dict[str, list[str]] = {}
    for module in modules:
        save = module.save_figure

        def capture(fig: Any, path: Path, save: Any = save) -> Path:
            seen[path.name] = [t.get_text() for ax in fig.axes for t in (*(ax.get_legend().get_texts() if ax.get_legend() else ()),
                                                                             *ax.get_xticklabels())]
            seen[path.name] += [fig._suptitle.get_text()] if fig._suptitle is not None else []
            return Path(save(fig, path))
        monkeypatch.setattr(module, "save_figure", capture)
    return seen


@pytest.mark.lab
def test_a_run_asked_for_lc_without_ipvs_is_named_nftables_rr_standing_in_for_ipvs_lc_everywhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run id, manifest, the campaign's runs.csv and report, the run's report and its plot legends
    all say what ran and what it stood in for; none calls the run plain lc."""
    from workloads.analysis import report as run_report
    from workloads.analysis.load import load_run
    from workloads.campaign import report as campaign_report

    if lab_mod.kernel_has_ipvs():
        pytest.skip("this kernel has IPVS: nothing stands in for it")
    f = tmp_path / "c.yaml"
    f.write_text("name: names\nstack: distributed\nrepetitions: 1\nseed: 1\n"
                 "set: {scheduler: lc, publishers: 2, subscribers: 2, messages: 20, messagesPerPublisher: true, intervalMs: 20, drainS: 2, "
                 "timeLimitS: 60}\nfactors: {topology: [distributed]}\n")
    out = tmp_path / "camp"
    cp = subprocess.run([*MQTTLAB, "campaign", "run", str(f), "--out", str(out), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-3000:]
    outcome = json.loads(cp.stdout)  # --json: the outcome alone on stdout
    assert (outcome["points"], outcome["complete"], outcome["failed"]) == (1, 1, {}) and outcome["report"].endswith("report.html")
    assert outcome["valid"] + len(outcome["invalid"]) == 1, outcome
    assert_nothing_left(tmp_path)
    [result] = [json.loads(p.read_text()) for p in out.glob("points/*/result.json")]
    run_dir = Path(result["run_dir"])
    assert re.fullmatch(r"\d{8}-\d{6}-distributed-nftables-rr-for-ipvs-lc", run_dir.name), run_dir.name
    m = json.loads((run_dir / "manifest.json").read_text())
    assert (m["balancer"], m["scheduler"], m["requested_balancer"], m["requested_scheduler"]) == ("nftables", "rr", "ipvs", "lc")
    assert m["balancing"] == "nftables-rr standing in for ipvs-lc" and m["run_id"] == run_dir.name
    assert (m["stood_in"]["by"], m["stood_in"]["for"], m["stood_in"]["exact"]) == ("nftables", "ipvs lc", False)
    assert not bare_lc(" ".join([m["run_id"], m["balancer"], m["scheduler"], m["balancing"], m["balancer_note"]]))
    wanted = {"balancer": "nftables", "scheduler": "rr", "stands_in_for": "ipvs-lc", "requested_balancer": "ipvs", "requested_scheduler": "lc",
              "balancing": "nftables-rr standing in for ipvs-lc"}

    def check_runs_csv(path: Path) -> None:
        [row] = list(csv.DictReader(path.open()))
        assert {k: row[k] for k in wanted} == wanted, row
        assert not bare_lc(" ".join(v for k, v in row.items() if k != "requested_scheduler")), row

    check_runs_csv(out / "report" / "runs.csv")  # the campaign's, as `campaign run` wrote it
    plots = saved_labels(monkeypatch, run_report, campaign_report)
    campaign_report.write_campaign_report(out, tmp_path / "campaign-report")
    page = (tmp_path / "campaign-report" / "report.html").read_text()
    assert "nftables-rr standing in for ipvs-lc" in page and not bare_lc(page)
    assert not bare_lc((tmp_path / "campaign-report" / "configurations.csv").read_text())
    [names] = plots.values()
    assert any("nftables-rr standing in for ipvs-lc" in t.replace("\n", " ") for t in names) and not bare_lc(" ".join(names)), names

    plots.clear()
    run_report.write_report([load_run(run_dir)], tmp_path / "run-report")
    check_runs_csv(tmp_path / "run-report" / "runs.csv")
    [comp] = list(csv.DictReader((tmp_path / "run-report" / "comparison.csv").open()))
    assert (comp["balancer"], comp["scheduler"], comp["stands_in_for"]) == ("nftables", "rr", "ipvs-lc")
    page = (tmp_path / "run-report" / "report.html").read_text()
    assert "nftables-rr standing in for ipvs-lc" in page
    assert bare_lc(page) == []  # the page's tables name what ran; requested_scheduler stays in runs.csv
    for name in ("loss.png", "latency.png", "connections.png", "timeseries.png"):
        texts = " ".join(t.replace("\n", " ") for t in plots[name])
        assert "nftables-rr standing in for ipvs-lc" in texts and not bare_lc(texts), (name, plots[name])
