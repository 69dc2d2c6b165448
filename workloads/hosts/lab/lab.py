"""The local lab: the plan's hosts as network namespaces on one machine, the same rendered
files and the same ``mqttlab`` commands as on Azure.

Layout: one namespace per plan host (its link is ``eth0``, as on an Azure VM) and one switch
namespace with a bridge per subnet whose ``.1`` address routes between subnets, as Azure's
fabric does. Nothing is added to the root namespace. Every namespace, cgroup and process is
recorded in a state file as it is created, so ``lab down`` can undo a run that was killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workloads.base import procs
from workloads.base.errors import LabError, RunFailed
from workloads.base.procs import mqttlab
from workloads.bench.command import bench_command
from workloads.describe import standin
from workloads.describe.config import ExperimentConfig
from workloads.describe.names import client_prefix
from workloads.describe.plan import Plan, build_plan
from workloads.describe.runsize import progress
from workloads.describe.scenario import QUIET_S
from workloads.hosts.lab import cgroups, netns
from workloads.hosts.lab.directors import DIRECTORS
from workloads.hosts.lab.inject import Injector
from workloads.hosts.lab.state import STATE_DIR, broker_command
from workloads.render.files import render_files, write_files
from workloads.render.security import CLIENT_FILE
from workloads.rundir.records import deliveries_on_disk, drain, read_faults, read_manifest, start_manifest, summarize, update_manifest

BALANCERS = tuple(DIRECTORS)
_CONNECT = re.compile(r"New client connected from (\S+) as (\S+)")


def kernel_has_ipvs() -> bool:
    if Path("/proc/net/ip_vs").exists():
        return True
    return subprocess.run(["modprobe", "ip_vs"], capture_output=True).returncode == 0 and Path("/proc/net/ip_vs").exists()


def kernel_could_load_ipvs() -> bool:
    """What ``kernel_has_ipvs`` would find, for a dry run: modprobe is asked, nothing is loaded."""
    return Path("/proc/net/ip_vs").exists() or subprocess.run(["modprobe", "--dry-run", "--quiet", "ip_vs"], capture_output=True).returncode == 0


def kernel_has_netem() -> bool:
    """Whether ``mqttlab:links`` can be carried out: netem and prio, built in or as modules
    (``modprobe -n`` asks, nothing is loaded; tc loads them when the first qdisc is added)."""
    return all(Path(f"/sys/module/{m}").exists() or subprocess.run(["modprobe", "-n", "-q", m], capture_output=True).returncode == 0
               for m in ("sch_netem", "sch_prio"))


def choose_balancer(requested: str | None, scheduler: str, load: bool = True) -> tuple[str, str]:
    """(balancer, note). The default is IPVS where the kernel has it, else the kernel NAT stand-in
    (workloads/describe/standin.py says why and what it does for each scheduler). ``load=False``: a dry
    run's choice, which loads no kernel module."""
    if requested == "ipvs" or requested is None:
        if kernel_has_ipvs() if load else kernel_could_load_ipvs():
            return "ipvs", ""
        if requested == "ipvs":
            raise LabError("this kernel has no IPVS (modprobe ip_vs failed): add --vm to run the lab in a micro-VM with a stock kernel, "
                           "or choose --balancer nftables or --balancer haproxy")
        return standin.default_standin(scheduler)
    if requested not in BALANCERS:
        raise LabError(f"--balancer {requested!r}: choose one of {', '.join(BALANCERS)}")
    return requested, standin.explicit_note(requested, scheduler)


@dataclass
class LabState:
    lab_id: str
    run_dir: str
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    cgroup_version: str | None = None
    created_at: float = field(default_factory=time.time)
    kind: str = "run"
    balancer: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    supervisor_pid: int = 0  # the mqttlab process that built the lab, and when it started (PIDs are reused)
    supervisor_start: int | None = None
    ready: bool = False  # a `lab up` that finished: its lab is meant to outlive its supervisor

    def orphaned(self) -> bool:
        """Left by a supervisor that died: a run whose runner is gone, or a `lab up` killed
        before it finished."""
        return not (self.kind == "up" and self.ready) and not procs.is_running(self.supervisor_pid, self.supervisor_start)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.lab_id}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> LabState:
        return cls(**json.loads(path.read_text()))


def ns_name(lab_id: str, host: str) -> str:
    return f"{netns.PREFIX}{lab_id}-{host}"


class Lab:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path, balancer: str, note: str = "", progress: bool = True, kind: str = "run",
                 broker_cpuset: str = "auto") -> None:
        self.cfg = cfg
        self.broker_cpuset = broker_cpuset
        self.plan: Plan = build_plan(cfg)
        self.run_dir = run_dir
        self.balancer = balancer
        self.director = DIRECTORS[balancer](self)
        self.note = note
        self.progress = progress
        self.lab_id = secrets.token_hex(3)
        self.state = LabState(self.lab_id, str(run_dir), kind=kind, balancer=balancer, plan=self.plan.to_dict(), supervisor_pid=os.getpid(),
                              supervisor_start=procs.start_time(os.getpid()))
        self.group: Path | None = None  # the lab's cgroup (procs file), once the cgroup version is known
        self.others_cpuset: Path | None = None  # v1: the cpuset (procs file) of every process but the brokers
        self.broker_cpu_list: list[int] = []  # the brokers' own CPUs, when they have some
        self.guard: subprocess.Popen[bytes] | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.caps: dict[str, cgroups.Cap] = {}
        self.files = run_dir / "rendered"
        self.rendered: dict[str, str] = {}
        self.injector: Injector | None = Injector(self, cfg.faults) if cfg.faults else None

    # ------------------------------------------------------------------ helpers

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[lab {self.lab_id}] {text}", file=sys.stderr, flush=True)

    def ns(self, host: str) -> str:
        return ns_name(self.lab_id, host)

    def spawn(self, key: str, cmd: list[str], host: str, log: Path | None = None, cgroup_procs: tuple[Path, ...] = ()) -> subprocess.Popen[bytes]:
        """Start a process of the lab: in the lab's cgroup, and (for a run) dying with us; in
        ``host``'s namespace, or (``""``) in ours, for what reads the host's own files."""
        broker = bool(cgroup_procs)
        if self.group is not None and (not broker or self.state.cgroup_version == "v1"):
            cgroup_procs = (*cgroup_procs, self.group)  # on v2 a broker's own group is already inside the lab's
        if self.others_cpuset is not None and not broker:  # v1: off the brokers' CPUs (v2: the lab's group is that cpuset)
            cgroup_procs = (*cgroup_procs, self.others_cpuset)
        p = netns.spawn(cmd, self.ns(host) if host else None, log, cgroup_procs=cgroup_procs, die_with_us=self.state.kind == "run")
        self.procs[key] = p
        self.state.pids[key] = p.pid
        self.state.save()
        return p

    # ------------------------------------------------------------------ build

    def create_network(self) -> None:
        sw = self.ns("sw")
        for name in [sw] + [self.ns(h.name) for h in self.plan.hosts]:
            netns.add_namespace(name)
            self.state.namespaces.append(name)
            self.state.save()
        netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=sw)
        subnets = sorted({h.subnet for h in self.plan.hosts})
        for i, subnet in enumerate(subnets):
            gw = next(h.gateway for h in self.plan.hosts if h.subnet == subnet)
            prefix = subnet.split("/")[1]
            netns.run(["ip", "link", "add", f"br{i}", "type", "bridge"], ns=sw)
            netns.run(["ip", "addr", "add", f"{gw}/{prefix}", "dev", f"br{i}"], ns=sw)
            netns.run(["ip", "link", "set", f"br{i}", "up"], ns=sw)
        for j, h in enumerate(self.plan.hosts):
            i = subnets.index(h.subnet)
            prefix = h.subnet.split("/")[1]
            port = f"p{j}"
            netns.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns(h.name)], ns=sw)
            netns.run(["ip", "link", "set", port, "master", f"br{i}", "up"], ns=sw)
            hn = self.ns(h.name)
            netns.run(["ip", "addr", "add", f"{h.address}/{prefix}", "dev", "eth0"], ns=hn)
            if h.role == "brokers":
                for b in self.plan.brokers:
                    netns.run(["ip", "addr", "add", f"{b.address}/{prefix}", "dev", "eth0"], ns=hn)
            netns.run(["ip", "link", "set", "eth0", "up"], ns=hn)
            netns.run(["ip", "route", "add", "default", "via", h.gateway], ns=hn)

    def impair_links(self) -> list[dict[str, Any]]:
        """``mqttlab:links`` carried out (workloads/describe/links.py says where), each device's
        qdiscs and filters then read back from the kernel, as the manifest records them."""
        from workloads.describe.links import placements, tc_commands

        ps = placements(self.plan, self.cfg.links)
        applied = []
        for (host, dev), cmds in tc_commands(ps, self.cfg.links).items():
            ns = self.ns(host)
            for cmd in cmds:
                netns.run(cmd, ns=ns)
            applied.append({"host": host, "dev": dev, "classes": {p.cls: list(p.sources) for p in ps if (p.host, p.dev) == (host, dev)},
                            **self.read_qdiscs(host, dev)})
            self.say(f"links: {host} {dev}: " + ", ".join(f"{p.cls} {self.cfg.links.of(p.cls).shown}"
                                                           for p in ps if (p.host, p.dev) == (host, dev)))
        return applied

    def read_qdiscs(self, host: str, dev: str, stats: bool = False) -> dict[str, Any]:
        """``tc -j`` of a device's qdiscs (with ``-s``, their counters: packets sent, dropped) and filters."""
        ns = self.ns(host)
        qd = netns.run(["tc", *(["-s"] if stats else []), "-j", "qdisc", "show", "dev", dev], ns=ns).stdout
        out: dict[str, Any] = {"qdiscs": json.loads(qd or "[]")}
        if not stats:
            out["filters"] = json.loads(netns.run(["tc", "-j", "filter", "show", "dev", dev, "parent", "1:"], ns=ns, check=False).stdout or "[]")
        return out

    def record_link_counters(self) -> None:
        """The impaired devices' qdisc counters at the end of the run (netem's drops are the loss
        it inflicted), into the manifest beside what was applied; a device already gone is left out."""
        links = read_manifest(self.run_dir).get("links")
        if not links:
            return
        counters = []
        for a in links.get("applied", []):
            try:
                counters.append({"host": a["host"], "dev": a["dev"], **self.read_qdiscs(a["host"], a["dev"], stats=True)})
            except (LabError, ValueError):
                pass
        update_manifest(self.run_dir, links=links | {"counters": counters})

    def start_brokers(self) -> None:
        version = cgroups.detect()
        if version is None:
            raise LabError("no usable cgroup hierarchy with cpu and memory controllers: the broker caps cannot be applied")
        self.state.cgroup_version = version
        self.state.save()
        self.group = cgroups.lab_group(version, self.lab_id)
        if self.state.kind == "run":  # a run's processes end with it, even those PR_SET_PDEATHSIG cannot reach
            self.guard = cgroups.start_guard(cgroups.lab_top(version, self.lab_id))
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        host = self.plan.host("brokers").name
        # the brokers a bridge goes to listen before the hub that opens it starts: a bridge whose
        # first attempt is refused (a TLS listener not up yet) waits out Mosquitto's restart
        # timeout, and messages published meanwhile never cross it
        hubs = {link.local for link in self.plan.bridges}
        for b in self.plan.brokers:
            self.caps[b.name] = cgroups.create(version, self.lab_id, b.name, self.plan.broker_cpus, self.plan.broker_memory_mb)
        cpuset = self.set_cpus(version)
        for wave in ([b for b in self.plan.brokers if b.name not in hubs], [b for b in self.plan.brokers if b.name in hubs]):
            for b in wave:
                cap = self.caps[b.name]
                conf = self.files / "brokers" / b.name / "mosquitto.conf"
                self.spawn(b.name, broker_command(conf), host, logs / f"{b.name}.log", cap.procs_files)
            for b in wave:
                netns.wait_tcp(self.ns(host), b.address, b.port)
        # caps read back from the kernel, with the process really inside
        caps: dict[str, dict[str, Any]] = {}
        for b in self.plan.brokers:
            cap = self.caps[b.name]
            caps[b.name] = cap.read_back() | {"pids": cap.pids(), "broker_pid": self.procs[b.name].pid}
            if self.procs[b.name].pid not in caps[b.name]["pids"]:
                raise LabError(f"{b.name} is not inside its cgroup {cap.dirs[0]}")
            if cap.cpuset is not None or (version == "v2" and cpuset.get("enabled")):
                caps[b.name]["cpuset"] = cgroups.cpuset_read_back(cap.cpuset or cap.dirs[0])
            caps[b.name]["broker_cpus_allowed"] = procs.allowed_cpus(self.procs[b.name].pid)
        update_manifest(self.run_dir, cgroup_version=version, broker_caps=caps, cpuset=cpuset)

    def set_cpus(self, version: str) -> dict[str, Any]:
        """Set the brokers' CPUs apart (see workloads/hosts/lab/cgroups.py); the manifest's record of
        it, from the kernel's files, or why there is none."""
        split, why = cgroups.plan_split(self.broker_cpuset, version)
        if split is None:
            self.say(f"cpuset: none ({why}); brokers share every CPU with the load generator")
            return {"enabled": False, "requested": self.broker_cpuset, "reason": why}
        assert self.group is not None
        dirs = cgroups.apply_split(version, self.lab_id, split, self.caps, self.group)
        if version == "v1":
            self.caps = {n: dataclasses.replace(c, cpuset=dirs[n]) for n, c in self.caps.items()}
            self.others_cpuset = dirs["others"] / "cgroup.procs"
        brokers, others = cgroups.cpuset_read_back(next(iter(dirs.values()))), cgroups.cpuset_read_back(dirs["others"])
        self.broker_cpu_list = split.brokers
        self.say(f"cpuset: brokers on CPU {brokers.get('effective_cpus')}, the rest of the lab on CPU {others.get('effective_cpus')}")
        return {"enabled": True, "requested": self.broker_cpuset, "brokers": brokers, "others": others, "steering": self.steer_receive(split.others)}

    def steer_receive(self, cpus: list[int]) -> dict[str, str]:
        """Process what the brokers send on the other CPUs. A packet a broker writes to its veth is
        received by the switch's end in a softirq on the broker's own CPU, and with it every hop
        to the client's socket (bridge, routing, the balancer's NAT, TCP): kernel work no cgroup
        is charged for, taking the CPU the brokers were given. Receive packet steering on the
        switch's port of the broker host hands it to ``cpus`` instead; so does the same on the
        broker host's loopback for the bridges between brokers (on Azure the broker VM's kernel
        does this work outside the containers' caps, on CPU the caps leave free). Read back per
        queue."""
        mask = format(sum(1 << c for c in cpus), "x")
        j, host = next((i, h) for i, h in enumerate(self.plan.hosts) if h.role == "brokers")
        out = {}
        for ns, dev in ((self.ns("sw"), f"p{j}"), (self.ns(host.name), "lo")):
            for q in netns.run(["ls", f"/sys/class/net/{dev}/queues"], ns=ns).stdout.split():
                if q.startswith("rx-"):
                    f = f"/sys/class/net/{dev}/queues/{q}/rps_cpus"
                    netns.run(["sh", "-c", f"echo {mask} > {f}"], ns=ns)
                    out[f"{ns.removeprefix(self.ns(''))}:{dev}:{q}"] = netns.run(["cat", f], ns=ns).stdout.strip()
        return out

    def apply_balancers(self) -> None:
        for bal in self.plan.balancers:
            self.director.apply(bal)

    def start_monitors(self, interval: float = 0.5) -> None:
        mon = self.run_dir / "monitor"
        mon.mkdir(parents=True, exist_ok=True)
        args = [f"{b.name}={b.address}:{b.port}@{self.procs[b.name].pid}" for b in self.plan.brokers]
        cmd = [*mqttlab(), "monitor", "brokers", "--interval", "1", "--out", str(mon / "brokers.csv")]
        for a in args:
            cmd += ["--broker", a]
        if self.cfg.security.enabled:
            cmd += ["--security", str(self.files / "brokers" / CLIENT_FILE)]
        self.spawn("monitor-brokers", cmd, "brokers", self.run_dir / "logs" / "monitor-brokers.log")
        # the caps' kernel counters: from the host's namespace, since `ip netns exec` hides /sys/fs/cgroup
        cmd = [*mqttlab(), "monitor", "cgroups", "--interval", str(interval), "--out", str(mon / "cgroups.csv")]
        for name, cap in self.caps.items():
            cmd += ["--group", f"{name}={cap.version}:{','.join(str(d) for d in cap.dirs)}" + (f"+{cap.acct}" if cap.acct else "")]
        if self.broker_cpu_list:
            cmd += ["--cpus", cgroups.format_cpulist(self.broker_cpu_list)]
        self.spawn("monitor-cgroups", cmd, "", self.run_dir / "logs" / "monitor-cgroups.log")
        for bal in self.plan.balancers:
            cmd = [*mqttlab(), "monitor", "balancer", "--kind", self.balancer, "--host", bal.host,
                   "--interval", str(interval), "--out", str(mon / f"balancer-{bal.host}.csv"), "--vip", f"{bal.vip}:{bal.port}"]
            cmd += self.director.monitor_args(bal)
            (self.run_dir / "balancer").mkdir(exist_ok=True)
            self.spawn(f"monitor-{bal.host}", cmd, bal.host, self.run_dir / "logs" / f"monitor-{bal.host}.log")

    def up(self) -> None:
        """Everything but the benchmark; bounded, and undone by :meth:`down` on any failure."""
        # secured: this run's own passwords and certificates, in its root-only files (0600)
        self.rendered = render_files(self.plan, self.cfg, root=str(self.files / "brokers"))
        write_files(self.rendered, self.files)
        self.say(f"network: {len(self.plan.hosts)} hosts + switch in namespaces {ns_name(self.lab_id, '*')}")
        self.create_network()
        if self.cfg.links.active:
            update_manifest(self.run_dir, links={"configured": self.cfg.links.to_dict(), "carried_out": "lab: tc netem", "applied": self.impair_links()})
        self.say(f"brokers: {len(self.plan.brokers)} x mosquitto, {self.plan.broker_cpus} CPU / {self.plan.broker_memory_mb} MB each")
        self.start_brokers()
        self.say(f"balancer: {self.balancer} on {', '.join(b.host for b in self.plan.balancers)}" + (f" ({self.note})" if self.note else ""))
        self.apply_balancers()

    # ------------------------------------------------------------------ bench

    def run_bench(self, tag: int) -> None:
        sc = self.cfg.scenario
        n = len(self.plan.clients)
        bench_logs = self.run_dir / "logs"
        subs = {}
        ready = {}
        for i, c in enumerate(self.plan.clients):
            ready[c.host] = self.run_dir / "bench" / c.host / "sub.ready"
            ready[c.host].parent.mkdir(parents=True, exist_ok=True)
            subs[c.host] = self.spawn(f"bench-sub-{c.host}", self.client_command("sub", c.host, i, n, c.target, tag, ["--ready-file", str(ready[c.host])]), c.host,
                                      bench_logs / f"bench-sub-{c.host}.log")
        self.say(f"bench: {sc.subscribers} subscribers connecting on {n} client hosts")
        # bounded by the time limit, and past it by their progress: under emulation or on a loaded
        # machine starting interpreters is slow but still computes, while a stuck one does not
        t0 = time.time()
        if not procs.wait_progressing(lambda: all(r.exists() for r in ready.values()) or any(p.poll() is not None for p in subs.values()),
                                      sc.time_limit_s, lambda: procs.tree_cpu_s(p.pid for p in subs.values())) \
                or not all(r.exists() for r in ready.values()):
            raise LabError(f"subscribers did not all connect and subscribe ({time.time() - t0:.0f}s, time limit {sc.time_limit_s}s; "
                           "see logs/bench-sub-*.log)")
        start_at = time.time() + 1.0
        if self.injector:  # fault times count from the start of publishing
            self.injector.start(start_at)
        pubs = {}
        for i, c in enumerate(self.plan.clients):
            pubs[c.host] = self.spawn(f"bench-pub-{c.host}", self.client_command("pub", c.host, i, n, c.target, tag, ["--start-at", f"{start_at:.3f}"]), c.host,
                                      bench_logs / f"bench-pub-{c.host}.log")
        self.say(f"bench: {sc.publishers} publishers, {sc.messages} messages, qos {sc.qos}")
        # the publishers stop themselves at their own time limit, counted from their start (not
        # from the subscribers' connecting, which a slow machine or an emulated VM stretches);
        # past that bound plus a grace for their shutdown, wait on only while deliveries still grow
        started = time.time()
        bound = started + sc.time_limit_s + max(30.0, 0.25 * sc.time_limit_s)
        hard = bound + sc.time_limit_s
        last, seen = started, -1  # the first progress line after 5 s, when there is a rate to show
        while any(p.poll() is None for p in pubs.values()):
            if time.time() > bound:
                got = self.received()
                if got <= seen or time.time() > hard:
                    raise LabError(f"publishers still running {time.time() - started:.0f}s after they started (time limit "
                                   f"{sc.time_limit_s}s); deliveries {'stopped growing' if got <= seen else 'still growing'} at {got}")
                seen, bound = got, time.time() + 10.0
            if time.time() - last > 5:
                last = time.time()
                self.say("bench: publishing, " + self.live_counts(started))
            time.sleep(0.2)
        self.say(f"bench: publishers done, draining (until all arrived or {QUIET_S:.0f}s without a delivery, at most {sc.drain_s}s)")
        self.snapshot_connections()
        # where each process still running could run, as the scheduler holds it: the cpusets at work
        update_manifest(self.run_dir, cpus_allowed={k: procs.allowed_cpus(p.pid) for k, p in self.procs.items() if p.poll() is None})
        drain(self.received, sc.expected_deliveries(), sc.drain_s)
        died = {f"bench-sub-{h}": p.returncode for h, p in subs.items() if p.poll() is not None}  # before we stop them
        for p in subs.values():
            netns.stop(p, timeout=30)
        died |= {f"bench-pub-{h}": p.returncode for h, p in pubs.items()}
        self.check_bench_ended(died)

    def check_bench_ended(self, ended: dict[str, int | None]) -> None:
        """A bench process killed by a signal (not by our stop) or a client host without its counts
        means the run's numbers are not all there: the run fails, naming it, instead of passing as
        complete with whatever the others wrote."""
        killed = {name: code for name, code in ended.items() if code is not None and code < 0}
        if killed:
            which = ", ".join(f"{name} by {signal.Signals(-code).name}" for name, code in killed.items())
            raise LabError(f"bench processes were killed: {which} (see logs/bench-*.log)")
        from workloads.bench.runner import split_evenly

        sc, n = self.cfg.scenario, len(self.plan.clients)
        silent = [c.host for i, c in enumerate(self.plan.clients)
                  if (split_evenly(sc.subscribers, n, i) or split_evenly(sc.publishers, n, i))
                  and not any((self.run_dir / "bench" / c.host).glob("clients-*.csv"))]
        if silent:
            raise LabError(f"no client counts from {', '.join(silent)}: its bench ended without writing them (see logs/bench-*.log)")

    def run_emqtt_bench(self) -> dict[str, Any]:
        """The same scenario once more through emqtt-bench (the reference's generator, native), on
        the same lab: per client host its share of subscribers, then of publishers; its console
        totals are all it reports, so the result is marked estimated and set beside the engine's
        exact count."""
        from workloads.bench import emqtt
        from workloads.bench.runner import split_evenly

        sc = self.cfg.scenario
        n = len(self.plan.clients)
        subs: dict[str, tuple[subprocess.Popen[bytes], Path, int]] = {}
        pubs: dict[str, tuple[subprocess.Popen[bytes], Path, int]] = {}
        for i, c in enumerate(self.plan.clients):
            mine = split_evenly(sc.subscribers, n, i)
            cmds = emqtt.commands(sc, [c.target], 0, len(mine), 0, docker=False)
            if "sub" in cmds:
                log = self.run_dir / "bench" / c.host / "emqtt-sub.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                subs[c.host] = (self.spawn(f"emqtt-sub-{c.host}", cmds["sub"], c.host, log), log, len(mine))
        deadline = time.time() + sc.time_limit_s
        self.say(f"emqtt-bench: {sc.subscribers} subscribers connecting")
        while not all(emqtt.parse_output(log.read_text())["totals"].get("sub", 0) >= k for _, log, k in subs.values()):
            if time.time() > deadline or any(p.poll() is not None for p, _, _ in subs.values()):
                raise LabError(f"emqtt-bench subscribers did not all subscribe (see bench/*/emqtt-sub.log under {self.run_dir})")
            time.sleep(0.2)
        for i, c in enumerate(self.plan.clients):
            mine = split_evenly(sc.publishers, n, i)
            msgs = sum(sc.messages_of(p) for p in mine)
            cmds = emqtt.commands(sc, [c.target], len(mine), 0, msgs, docker=False)
            if "pub" in cmds:
                log = self.run_dir / "bench" / c.host / "emqtt-pub.log"
                pubs[c.host] = (self.spawn(f"emqtt-pub-{c.host}", cmds["pub"], c.host, log), log, msgs)
        self.say(f"emqtt-bench: {sc.publishers} publishers, {sc.messages} messages, qos {sc.qos}")
        bound = time.time() + sc.time_limit_s
        while any(p.poll() is None for p, _, _ in pubs.values()) and time.time() < bound:
            time.sleep(0.2)
        for p, _, _ in pubs.values():
            netns.stop(p, timeout=10)

        def received() -> int:
            return sum(emqtt.parse_output(log.read_text())["totals"].get("recv", 0) for _, log, _ in subs.values())

        drain(received, None, sc.drain_s)
        time.sleep(1.2)  # its counters print once a second
        for p, _, _ in subs.values():
            netns.stop(p, timeout=10)
        texts = [log.read_text() for _, log, _ in [*pubs.values(), *subs.values()]]
        # each host's publishers send their -L once they print "publish complete"
        sent = sum(emqtt.summarize(log.read_text(), "", 0, msgs)["sent"] for _, log, msgs in pubs.values())
        delivered = received()
        expected = sent * sc.subscribers if sc.topic_layout == "shared" else sent
        lost = max(expected - delivered, 0)
        return {"estimated": True, "planned": sc.total_messages, "sent": sent, "expected": expected, "delivered": delivered, "lost": lost,
                "loss_pct": round(100.0 * lost / expected, 3) if expected else 0.0, "duplicates": max(delivered - expected, 0),
                "publish_complete": all("publish complete" in log.read_text().lower() for _, log, _ in pubs.values()),
                "errors": [e for t in texts for e in emqtt.parse_output(t)["errors"]][:20]}

    def client_command(self, role: str, host: str, index: int, count: int, target: str, tag: int, extra: list[str]) -> list[str]:
        return bench_command(role, self.cfg.scenario, target=target, out=self.run_dir, host=host, index=index, count=count, tag=tag,
                             security=self.files / host / CLIENT_FILE if self.cfg.security.enabled else None, extra=extra)

    def received(self) -> int:
        return deliveries_on_disk(self.run_dir)

    def live_counts(self, since: float) -> str:
        """Deliveries on disk against the expected, with rate and ETA (runsize.progress, as the bench)."""
        return progress(self.received(), self.cfg.scenario.expected_deliveries(), time.time() - since, "deliveries on disk")

    # ------------------------------------------------------------------ collect and teardown

    def snapshot_connections(self) -> None:
        """The balancers' connection tables while every client is still connected, to join
        clients (local address) to brokers."""
        for bal in self.plan.balancers:
            out = self.run_dir / "balancer" / f"{bal.host}-connections.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            text = self.director.connections(bal)
            out.write_text(text)

    def stop_monitors(self) -> None:
        for key, p in list(self.procs.items()):
            if key.startswith("monitor-"):
                netns.stop(p, timeout=15)

    def connections_per_broker(self, tag: int) -> dict[str, int]:
        """Bench clients per broker, from each broker's own log (CONNECT lines carry the client id)."""
        out: dict[str, int] = {}
        for b in self.plan.brokers:
            log = self.run_dir / "logs" / f"{b.name}.log"
            ids = set()
            if log.exists():
                for m in _CONNECT.finditer(log.read_text(errors="replace")):
                    if m.group(2).startswith(client_prefix(tag)):
                        ids.add(m.group(2))
            out[b.name] = len(ids)
        return out

    def down(self) -> None:
        for p in self.procs.values():
            netns.stop(p, timeout=10)
        if self.guard is not None:
            cgroups.stop_guard(self.guard)
        teardown(self.lab_id)


def teardown(lab_id: str) -> list[str]:
    """Remove everything of lab ``lab_id`` (or of every lab, with ``""``): idempotent."""
    if not re.fullmatch(r"[0-9a-f]*", lab_id):  # the id is a pattern over folders that get removed: never a path
        raise LabError(f"lab id {lab_id!r}: hex digits only")
    done = []
    for path in sorted(STATE_DIR.glob(f"{lab_id}*.json")) if STATE_DIR.is_dir() else []:
        try:
            st = LabState.load(path)
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        for pid in st.pids.values():
            try:
                os.killpg(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
    for name in netns.list_namespaces(f"{netns.PREFIX}{lab_id}"):
        if name.startswith(f"{netns.PREFIX}test"):
            continue  # the test suite's own namespaces are its business
        netns.delete_namespace(name)
        done.append(f"namespace {name}")
    for d in cgroups.remove_lab(lab_id):
        done.append(f"cgroup {d}")
    for path in sorted(STATE_DIR.glob(f"{lab_id}*")) if STATE_DIR.is_dir() else []:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(f"state {path}")
    return done


def required_tools(cfg: ExperimentConfig, balancer: str) -> list[str]:
    """The programs a run of ``cfg`` with ``balancer`` starts (a dry run lists the missing ones)."""
    return ["ip", "mosquitto", "sysctl", *DIRECTORS[balancer].required_tools(cfg),
            *(["nft"] if any(f.kind != "broker" for f in cfg.faults) else []), *(["tc"] if cfg.links.active else [])]


def preflight(cfg: ExperimentConfig, balancer: str) -> None:
    """Everything that can be checked before anything is created."""
    netns.require_root()
    netns.require_tools(required_tools(cfg, balancer))
    if cgroups.detect() is None:
        raise LabError("no cgroup hierarchy with cpu and memory controllers under /sys/fs/cgroup: broker caps cannot be applied")
    if cfg.links.active and not kernel_has_netem():
        raise LabError("mqttlab:links needs tc netem and prio (sch_netem, sch_prio), which this kernel lacks: "
                       "add --vm to run the lab in the micro-VM (a stock kernel with both)")


def run(cfg: ExperimentConfig, runs_dir: Path, balancer_req: str | None, progress: bool = True,
        load_generator: str = "mqttlab", broker_cpuset: str = "auto", calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    balancer, note = choose_balancer(balancer_req, cfg.balancer.scheduler)
    preflight(cfg, balancer)
    cgroups.plan_split(broker_cpuset, cgroups.detect() or "v1")  # a CPU list this host lacks is refused before anything exists
    if load_generator == "emqtt-bench":
        from workloads.bench import emqtt

        if emqtt.find_native() is None:
            raise LabError(f"--load-generator emqtt-bench: {emqtt.missing_native()}")
    ran = standin.balancing(balancer, cfg.balancer.scheduler)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.topology}-{ran.slug}"
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    lab = Lab(cfg, run_dir, balancer, note, progress, broker_cpuset=broker_cpuset)
    warn_orphans()
    tag = secrets.randbits(32)
    plan = lab.plan
    start_manifest(run_dir, kind="lab", stack=cfg.stack, topology=cfg.topology, **ran.manifest_fields(), balancer_note=note,
                   scenario=cfg.scenario.to_dict(), plan=plan.to_dict(), tag=tag, lab_id=lab.lab_id,
                   mosquitto=mosquitto_version(), faults=[f.spec for f in cfg.faults],
                   health_check=dataclasses.asdict(cfg.balancer.health_check), security=cfg.security.mode)
    if calibration:
        from workloads.rundir.calibration import offered_per_broker, overload_ratio

        update_manifest(run_dir, calibration=calibration, offered_per_broker=offered_per_broker(cfg), overload_ratio=overload_ratio(cfg, calibration))
    status, reason = "complete", ""
    t0 = time.time()
    try:
        lab.up()
        update_manifest(run_dir, lab_up_s=round(time.time() - t0, 3))
        lab.start_monitors()
        lab.run_bench(tag)
        if load_generator == "emqtt-bench":
            update_manifest(run_dir, emqtt_bench=lab.run_emqtt_bench())
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (procs.Stopped)
        status, reason = "partial", "interrupted"
        sig = getattr(exc, "signum", signal.SIGINT)
        lab.say(f"{signal.Signals(sig).name}: stopping, tearing down")
        update_manifest(run_dir, signal=signal.Signals(sig).name)
        raise
    except LabError as exc:
        status, reason = "partial", str(exc)
        if not isinstance(exc, RunFailed):  # started: a failed run (1), not a missing precondition (3)
            raise RunFailed(f"{exc} (run directory {run_dir})") from exc
        raise
    finally:
        with procs.shielded():
            if lab.injector:
                lab.injector.stop()
            lab.stop_monitors()
            lab.record_link_counters()
            t1 = time.time()
            lab.down()
            conns = lab.connections_per_broker(tag)
            update_manifest(run_dir, status=status, reason=reason, ended_at=time.time(), lab_down_s=round(time.time() - t1, 3),
                            connections_per_broker=conns)
            lab.say(f"torn down ({reason or 'done'})")
    summary = summarize(run_dir)
    update_manifest(run_dir, fidelity=summary["fidelity"])  # the verdict travels with the run directory
    summary.update(standin.balancing_columns(ran) | dict(  # "balancer" stays the record of the balancer hosts, its kind the balancer column
        run_dir=str(run_dir), topology=cfg.topology, connections_per_broker=conns, security=cfg.security.mode,
        balancer={"kind": balancer, "note": note, "hosts": [b.host for b in plan.balancers]}, faults=read_faults(run_dir),
    ))
    if load_generator == "emqtt-bench":
        summary["emqtt_bench"] = read_manifest(run_dir).get("emqtt_bench")
    return summary


def mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
    m = re.search(r"mosquitto version (\S+)", out)
    return m.group(1) if m else "unknown"


def lab_status() -> list[dict[str, Any]]:
    out = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            st = LabState.load(path)
        except (OSError, ValueError, TypeError):
            continue
        alive = {k: procs.is_running(pid, None) for k, pid in st.pids.items()}  # a zombie is not alive
        out.append({"lab_id": st.lab_id, "kind": st.kind, "balancer": st.balancer, "run_dir": st.run_dir, "namespaces": st.namespaces,
                    "processes": alive, "supervisor_pid": st.supervisor_pid, "orphaned": st.orphaned()})
    return out


def stray_namespaces(labs: list[dict[str, Any]]) -> list[str]:
    """Lab namespaces no state file accounts for (the state folder was lost, e.g. a reboot of /run)."""
    return [n for n in netns.list_namespaces() if not any(n in lb["namespaces"] for lb in labs) and not n.startswith(f"{netns.PREFIX}test")]


def warn_orphans() -> None:
    """Tell about labs whose supervisor died (they hold namespaces, cgroups and maybe
    processes until `lab down`); a new lab does not touch them."""
    labs = lab_status()
    for lb in labs:
        if lb["orphaned"]:
            _warn(f"lab {lb['lab_id']} ({lb['kind']}) was left by a supervisor that is gone (PID {lb['supervisor_pid']}): "
                f"{len(lb['namespaces'])} namespaces {ns_name(lb['lab_id'], '*')} remain; remove them with: mqttlab lab down --id {lb['lab_id']}")
    stray = stray_namespaces(labs)
    if stray:
        _warn(f"namespaces left by a lab whose state is lost: {', '.join(stray)}; remove them with: mqttlab lab down")



def _warn(text: str) -> None:
    print(f"[lab] warning: {text}", file=sys.stderr, flush=True)
