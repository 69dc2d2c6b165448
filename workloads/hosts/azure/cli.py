"""``mqttlab host ...`` and ``mqttlab results ...``: what Azure's remote commands call on a VM.

Each step is short, bounded, idempotent where it can be, and reads the same stack file and
renderers as the local lab; the remote commands carry no logic of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from workloads.base import procs
from workloads.base.clipaths import in_file, out_dir
from workloads.base.errors import LabError
from workloads.bench import command as bench
from workloads.describe.cliargs import add_stack_args, load
from workloads.describe.config import ConfigError, ExperimentConfig
from workloads.describe.names import container
from workloads.describe.plan import Broker, Plan, build_plan
from workloads.describe.standin import balancing
from workloads.hosts.azure import faults as hostfaults
from workloads.hosts.shell import run as sh
from workloads.render.balancer import ipvs_apply_steps
from workloads.render.files import render_files, write_files
from workloads.rundir.records import deliveries_on_disk, drain, start_manifest, update_manifest
from workloads.storage import blob as storage

RENDERED = Path("/var/lib/mqttlab/rendered")
MATERIAL = Path("/var/lib/mqttlab/security.json")  # the run's secrets, from the Pulumi program (0600)
CONTAINER_UID = 1883  # the mosquitto user of the eclipse-mosquitto image


def run_tag(stack: str, run_id: str) -> int:
    """Every host derives the same tag from the run id, so no host has to tell the others."""
    return zlib.crc32(f"{stack}/{run_id}".encode()) or 1


def _cfg(args: argparse.Namespace) -> tuple[ExperimentConfig, Plan]:
    cfg = load(args)
    return cfg, build_plan(cfg)


def _render(cfg: ExperimentConfig, plan: Plan) -> dict[str, str]:
    """Write every rendered file under RENDERED (where the steps and a person find them)."""
    material = None
    if cfg.security.enabled:
        from workloads.render import security

        if not MATERIAL.is_file():
            raise LabError(f"security mode {cfg.security.mode} needs {MATERIAL} (written by `mqttlab host security-install`)")
        material = security.material_from_json(MATERIAL.read_text(), plan, cfg.security, str(MATERIAL))
    files = render_files(plan, cfg, material)
    write_files(files, RENDERED)
    return files


def cmd_security_install(args: argparse.Namespace) -> int:
    """Store the secrets piped in on stdin (never an argument), owner-only, after checking them."""
    from workloads.render import security

    cfg, plan = _cfg(args)
    text = sys.stdin.read()
    security.material_from_json(text, plan, cfg.security, "stdin")
    MATERIAL.parent.mkdir(parents=True, exist_ok=True)
    MATERIAL.unlink(missing_ok=True)
    with os.fdopen(os.open(MATERIAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)
    print(f"security material for mode {cfg.security.mode} stored in {MATERIAL}")
    return 0


# --------------------------------------------------------------------------- brokers


def stray_addresses(ip_addr_output: str, wanted: Sequence[str]) -> list[str]:
    """Broker addresses found on the host's own interface (``ip -4 -o addr show`` lines), as
    ``addr/len``. cloud-init's Azure datasource puts every secondary IP configuration on eth0
    on first boot (``apply_network_config_for_secondary_ips``, default true); the host would
    then answer for the brokers itself instead of handing the packets to the ipvlan children."""
    found = []
    for line in ip_addr_output.splitlines():
        parts = line.split()
        if "inet" in parts:
            cidr = parts[parts.index("inet") + 1]
            if cidr.split("/")[0] in wanted:
                found.append(cidr)
    return found


def cmd_brokers_up(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    _render(cfg, plan)
    d = RENDERED / "brokers"
    shown = sh(["ip", "-4", "-o", "addr", "show", "dev", args.parent], check=False).stdout
    for cidr in stray_addresses(shown, [b.address for b in plan.brokers]):
        sh(["ip", "addr", "del", cidr, "dev", args.parent])
        print(f"removed {cidr} from {args.parent}: it belongs to a broker container")
    if cfg.security.enabled:
        from workloads.render.security import give_to

        for b in plan.brokers:
            give_to(d / b.name, CONTAINER_UID)
    sh(["docker", "compose", "-p", "mqttlab", "-f", str(d / "docker-compose.yml"), "up", "-d", "--force-recreate"], timeout=600)
    for b in plan.brokers:
        end = time.time() + 60
        while True:
            cp = sh(["docker", "exec", container(b.name), "mosquitto_sub", "-h", b.address, "-p", str(b.port), "-t", "$SYS/broker/uptime",
                     "-C", "1", "-W", "5"], check=False, timeout=15)
            if cp.returncode == 0:
                break
            if time.time() > end:
                raise LabError(f"{b.name} does not answer on {b.address}:{b.port}: {cp.stderr.strip()}")
            time.sleep(1)
        print(f"{b.name} up on {b.address}:{b.port}")
    return 0


def probe_brokers(targets: Sequence[tuple[str, str, int]], attempts: int = 30, pause_s: float = 2.0) -> list[str]:
    """Each broker answers a real MQTT subscription to its ``$SYS`` uptime from this host, or the
    unreachable ones are named. Run on a balancer host: the broker host cannot reach its own
    ipvlan children, and a broker the balancers cannot reach is otherwise found only when the
    subscribers time out."""
    pending = {name: (addr, port) for name, addr, port in targets}
    answered: list[str] = []
    last: dict[str, str] = {}
    for i in range(attempts):
        for name, (addr, port) in list(pending.items()):
            cp = sh(["mosquitto_sub", "-h", addr, "-p", str(port), "-t", "$SYS/broker/uptime", "-C", "1", "-W", "5"], check=False, timeout=15)
            if cp.returncode == 0:
                answered.append(f"{name} {addr}:{port} answers: {cp.stdout.strip()}")
                del pending[name]
            else:
                last[name] = (cp.stderr or cp.stdout).strip()[-200:] or f"exit {cp.returncode}"
        if not pending:
            return answered
        if i + 1 < attempts:
            time.sleep(pause_s)
    raise LabError("brokers unreachable from this host after " f"{attempts} attempts: "
                   + ", ".join(f"{n} {pending[n][0]}:{pending[n][1]} ({last.get(n, '')})" for n in sorted(pending))
                   + "; check the broker NIC's secondary IP configurations, the ipvlan network and the NSG")


def cmd_probe_brokers(args: argparse.Namespace) -> int:
    _, plan = _cfg(args)
    for line in probe_brokers([(b.name, b.address, b.port) for b in plan.brokers]):
        print(line)
    return 0


def cmd_brokers_down(args: argparse.Namespace) -> int:
    f = RENDERED / "brokers" / "docker-compose.yml"
    if f.exists():
        sh(["docker", "compose", "-p", "mqttlab", "-f", str(f), "down", "--remove-orphans"], timeout=300, check=False)
    return 0


# --------------------------------------------------------------------------- balancers


def apply_balancer(plan: Plan, host: str, rendered: dict[str, str]) -> str:
    """Apply this host's director (if the plan has one here); returns ``ipvsadm -Sn`` for the log."""
    bal = plan.balancer_on(host)
    if bal is None:
        sh(["ipvsadm", "-C"], check=False)
        return f"no balancer on {host} in the {plan.topology} topology; its clients use {next(c.target for c in plan.clients if c.host == host)}\n"
    for argv, stdin, check in ipvs_apply_steps(host, bal.scheduler, rendered):
        sh(argv, input=stdin, check=check)
    if bal.health_check.type != "none":
        from workloads.render import keepalived

        try:
            keepalived.start_daemon(bal, Path("/run/mqttlab/keepalived") / host)  # root-only: script security
        except (RuntimeError, subprocess.SubprocessError) as exc:
            raise LabError(str(exc)) from None
    return sh(["ipvsadm", "-Sn"]).stdout


def cmd_balancer_apply(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    print(apply_balancer(plan, args.host, _render(cfg, plan)), end="")
    return 0


def cmd_balancer_clear(args: argparse.Namespace) -> int:
    sh(["ipvsadm", "-C"], check=False)
    sh(["iptables-restore"], input="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n"
       ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", check=False)
    return 0


# --------------------------------------------------------------------------- monitors and bench


def run_dir(args: argparse.Namespace) -> Path:
    d = out_dir(args.runs, "--runs") / args.run_id
    (d / "pids").mkdir(parents=True, exist_ok=True)
    return d


def record_step(rd: Path, host: str, step: str, status: str, detail: str = "") -> Path:
    """One file per host and step under ``status/``: uploaded with the run, read by the verdict."""
    f = rd / "status" / f"{host}-{step}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"host": host, "step": step, "status": status, "detail": detail, "at": time.time()}) + "\n")
    return f


def step_status(rd: Path, host: str, step: str) -> str | None:
    f = rd / "status" / f"{host}-{step}.json"
    return str(json.loads(f.read_text()).get("status")) if f.exists() else None


def recorded(step: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """A benchmark step that never stops the run: its outcome is written down and it exits 0, so
    the finish, collection and upload after it always happen (an overloaded run, the
    interesting kind, is not lost); the verdict step reports the run failed afterwards."""

    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            rd = run_dir(args)
            try:
                rc, detail = func(args), ""
            except Exception as exc:  # noqa: BLE001 - whatever broke, the run still has to be collected
                rc, detail = 1, f"{type(exc).__name__}: {exc}"
            status = {0: "ok", SKIPPED: "skipped"}.get(rc, "failed")
            record_step(rd, args.host, step, status, detail or ("" if rc == 0 else f"exit status {rc}"))
            if status != "ok":
                print(f"{step} on {args.host}: {status} {detail}; recorded, the run goes on to collection", file=sys.stderr)
            return 0

        run.__doc__ = func.__doc__
        return run

    return wrap


SKIPPED = 75  # a step that did not run because an earlier one on this host failed


def detach(cmd: Sequence[str], rd: Path, name: str) -> int:
    log = (rd / "logs")
    log.mkdir(parents=True, exist_ok=True)
    with (log / f"{name}.log").open("ab") as out:
        p = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (rd / "pids" / f"{name}.pid").write_text(str(p.pid))
    return p.pid


def stop_detached(rd: Path, prefix: str, timeout: float = 30, exact: bool = False) -> None:
    """SIGTERM to each detached process group, SIGKILL after ``timeout``. A zombie counts as
    ended: a process detached by another one that lives on (a monitor the fault process
    replaced) stays one until that parent reaps it."""
    for pidfile in sorted((rd / "pids").glob(f"{prefix}.pid" if exact else f"{prefix}*.pid")):
        try:
            pid = int(pidfile.read_text())
        except FileNotFoundError:
            continue  # stopped meanwhile by another step
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            continue
        end = time.time() + timeout
        while time.time() < end and procs.is_running(pid, None):
            time.sleep(0.2)
        if procs.is_running(pid, None):
            os.killpg(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


@recorded("monitors-start")
def cmd_monitors_start(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    mon = rd / "monitor"
    mon.mkdir(exist_ok=True)
    if args.role == "brokers":
        for b in plan.brokers:
            start_broker_monitor(cfg, b, rd)
    else:
        detach([*bench.mqttlab(), "monitor", "balancer", "--kind", "ipvs", "--host", args.host, "--out", str(mon / f"balancer-{args.host}.csv")], rd,
               f"monitor-{args.host}")
    print(f"monitors started for {args.role}")
    return 0


def start_broker_monitor(cfg: ExperimentConfig, b: Broker, rd: Path) -> int:
    """The host cannot reach its own ipvlan children, so a broker's monitor samples ``$SYS`` from
    inside the container's network namespace; it appends to the broker's CSV."""
    pid = sh(["docker", "inspect", "-f", "{{.State.Pid}}", container(b.name)]).stdout.strip()
    sec = ["--security", str(RENDERED / "brokers/security/client.json")] if cfg.security.enabled else []
    return detach(["nsenter", "-t", pid, "-n", *bench.mqttlab(), "monitor", "brokers", "--broker", f"{b.name}={b.address}:{b.port}@{pid}",
                   "--out", str(rd / "monitor" / f"brokers-{b.name}.csv"), *sec], rd, f"monitor-{b.name}")


def restart_broker_monitor(cfg: ExperimentConfig, plan: Plan, rd: Path, broker: str) -> str:
    """After a restart fault: ``docker start`` gives the container a new network namespace and
    process, and the monitor left in the old namespace could reach neither, so it is replaced
    (when monitors run at all: they start before the publishers)."""
    if not (rd / "pids" / f"monitor-{broker}.pid").exists():
        return ""
    stop_detached(rd, f"monitor-{broker}", exact=True)
    pid = start_broker_monitor(cfg, next(b for b in plan.brokers if b.name == broker), rd)
    return f"; its monitor started again in the new namespace (pid {pid})"


def bench_command(role: str, cfg: ExperimentConfig, plan: Plan, args: argparse.Namespace, rd: Path, extra: list[str]) -> list[str]:
    i = [c.host for c in plan.clients].index(args.host)
    return bench.bench_command(role, cfg.scenario, target=plan.clients[i].target, out=rd, host=args.host, index=i, count=len(plan.clients),
                               tag=run_tag(args.stack, args.run_id), extra=extra,
                               security=RENDERED / args.host / "security/client.json" if cfg.security.enabled else None)


@recorded("bench-subs")
def cmd_bench_subs(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    start_manifest(rd, kind="azure", stack=args.stack, topology=plan.topology, **balancing("ipvs", cfg.balancer.scheduler).manifest_fields(),
                   scenario=cfg.scenario.to_dict(), plan=plan.to_dict(), tag=run_tag(args.stack, args.run_id), run_id=args.run_id,
                   load_generator=args.load_generator, faults=[f.spec for f in cfg.faults])
    ready = rd / "bench" / args.host / "sub.ready"
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    if args.load_generator == "emqtt-bench":
        return _emqtt(cfg, plan, args, rd, "sub")
    detach(bench_command("sub", cfg, plan, args, rd, ["--ready-file", str(ready)]), rd, "bench-sub")
    end = time.time() + cfg.scenario.time_limit_s
    while not ready.exists():
        if time.time() > end:
            raise LabError(f"subscribers on {args.host} not ready within {cfg.scenario.time_limit_s}s (see {rd}/logs/bench-sub.log)")
        time.sleep(0.5)
    print(f"subscribers ready on {args.host}")
    return 0


@recorded("bench-pubs")
def cmd_bench_pubs(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    if step_status(rd, args.host, "bench-subs") != "ok":
        return SKIPPED
    start = [] if args.start_at is None else ["--start-at", f"{args.start_at:.3f}"]
    if args.start_at is not None and time.time() > args.start_at + hostfaults.LATE_S:
        late = f"publishers on {args.host} start {time.time() - args.start_at:.1f}s after the agreed start"
        if cfg.faults:
            raise LabError(f"{late}: the faults are timed from it; run again with a new mqttlab:runId")
        print(late, file=sys.stderr)
    if args.load_generator == "emqtt-bench":
        if args.start_at is not None:
            time.sleep(max(0.0, args.start_at - time.time()))
        return _emqtt(cfg, plan, args, rd, "pub")
    cp = subprocess.run(bench_command("pub", cfg, plan, args, rd, ["--json", *start]),
                        timeout=cfg.scenario.time_limit_s + 60, capture_output=True, text=True)
    print(cp.stdout.strip())
    if cp.returncode != 0:
        raise LabError(f"publishers on {args.host} exited {cp.returncode}: {(cp.stderr or cp.stdout).strip()[-500:]}")
    return 0


def _emqtt(cfg: ExperimentConfig, plan: Plan, args: argparse.Namespace, rd: Path, role: str) -> int:
    from workloads.bench import emqtt
    from workloads.bench.runner import split_evenly

    i = [c.host for c in plan.clients].index(args.host)
    n = len(plan.clients)
    pubs = split_evenly(cfg.scenario.publishers, n, i)
    subs = split_evenly(cfg.scenario.subscribers, n, i)
    security = None
    if cfg.security.enabled:
        from workloads.bench.cli import client_security

        security = client_security(str(RENDERED / args.host / "security/client.json"))
    cmds = emqtt.commands(cfg.scenario, [plan.clients[i].target], len(pubs), len(subs), sum(cfg.scenario.messages_of(p) for p in pubs),
                          security=security)
    out = rd / "bench" / args.host
    out.mkdir(parents=True, exist_ok=True)
    if role == "sub":
        detach(cmds["sub"], rd, "bench-sub")
        time.sleep(5)
        return 0
    with (out / "emqtt-pub.log").open("w") as fh:
        rc = subprocess.run(cmds["pub"], stdout=fh, stderr=subprocess.STDOUT, timeout=cfg.scenario.time_limit_s + 60).returncode
    return rc


@recorded("bench-finish")
def cmd_bench_finish(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    drain(lambda: deliveries_on_disk(rd, args.host), None, cfg.scenario.drain_s, poll_s=0.5)
    stop_detached(rd, "bench-sub", timeout=60)
    if args.load_generator == "emqtt-bench":
        log = rd / "logs" / "bench-sub.log"
        (rd / "bench" / args.host / "emqtt-sub.log").write_text(log.read_text() if log.exists() else "")
    if plan.clients[0].host == args.host:
        update_manifest(rd, status="complete", ended_at=time.time())
    print(json.dumps({"host": args.host, "deliveries_on_disk": deliveries_on_disk(rd, args.host)}))
    return 0


@recorded("faults")
def cmd_faults_start(args: argparse.Namespace) -> int:
    """Start this VM's fault process in the background (it must run beside the publishers and
    be stopped by collect) and return once it has armed its schedule."""
    cfg, _ = _cfg(args)
    rd = run_dir(args)
    mine = hostfaults.faults_on(cfg.faults, args.host)
    if not mine:
        print(f"no faults on {args.host}")
        return 0
    late = hostfaults.armed_in_time(mine, args.start_at, time.time())
    if late:
        raise LabError(late)
    until = args.start_at + cfg.scenario.time_limit_s + cfg.scenario.drain_s + hostfaults.SETTLE_S
    bound = int(until - time.time()) + 60  # the process stops itself at `until`; timeout is the backstop
    record = rd / "faults" / f"{args.host}.jsonl"
    record.unlink(missing_ok=True)
    detach(["timeout", "-k", "10", str(bound), *bench.mqttlab(), "host", "faults-run", "-s", args.stack, "--project-dir", args.project_dir or ".",
            "--run-id", args.run_id, "--runs", args.runs, "--host", args.host, "--start-at", f"{args.start_at:.3f}", "--until", f"{until:.3f}"],
           rd, "faults")
    end = time.time() + 30
    while not record.exists():
        if time.time() > end:
            raise LabError(f"the fault process on {args.host} did not arm within 30s (see {rd}/logs/faults.log)")
        time.sleep(0.2)
    print(f"{len(mine)} fault(s) armed on {args.host}: " + ", ".join(f.spec for _, f in mine))
    return 0


def cmd_faults_run(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    return hostfaults.run_injector(plan, hostfaults.faults_on(cfg.faults, args.host), args.host, rd, args.start_at, args.until,
                                   on_restart=lambda broker: restart_broker_monitor(cfg, plan, rd, broker))


def stop_faults(cfg: ExperimentConfig, plan: Plan, rd: Path, host: str) -> None:
    """The fault process undoes what is in force when stopped; then nothing of ours may remain
    (a fault table, a paused broker), even if that process was killed or never started."""
    if not hostfaults.faults_on(cfg.faults, host):
        return
    stop_detached(rd, "faults", timeout=90)  # a restart's undo waits up to 60 s for the broker
    for line in hostfaults.cleanup(plan, host):
        print(f"left by the fault process, removed: {line}")


# --------------------------------------------------------------------------- results

def cmd_collect(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    # faults first: a restart still being undone may replace a broker's monitor, and the
    # replacements are the fault process's children, reaped once it has ended
    stop_faults(cfg, plan, rd, args.host)
    stop_detached(rd, "monitor-")
    stop_detached(rd, "bench-sub", timeout=30)  # a failed finish may have left them running
    host = plan.host(args.host)
    if host.role == "brokers":
        for b in plan.brokers:
            logs = sh(["docker", "logs", container(b.name)], check=False, timeout=120)
            (rd / "logs").mkdir(exist_ok=True)
            (rd / "logs" / f"{b.name}.log").write_text(logs.stdout + logs.stderr)
    elif plan.balancer_on(args.host):
        (rd / "balancer").mkdir(exist_ok=True)
        (rd / "balancer" / f"{args.host}-connections.txt").write_text(sh(["ipvsadm", "-Lnc"], check=False).stdout)
    prefix = f"{args.stack}/{args.run_id}/"
    # as the VM's managed identity; a 403 while its role assignment propagates is waited out
    c = storage.container(args.url, storage.vm_credential(), args.ca_file)
    n = storage.upload_dir(c, rd, prefix, skip_manifest=plan.clients[0].host != args.host, host=args.host, wait_forbidden_s=storage.PROPAGATION_S)
    print(f"uploaded {n} files from {args.host} to {args.url}/{prefix}")
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    """After every host uploaded: the run fails (and its manifest says so) if any step failed.
    The results are in the store either way; this is what makes ``pulumi up`` report it."""
    _, plan = _cfg(args)
    rd = run_dir(args)
    prefix = f"{args.stack}/{args.run_id}/"
    c = storage.container(args.url, storage.vm_credential(), args.ca_file)
    bad = storage.failed_steps(c, prefix)
    if bad and (rd / "manifest.json").exists():
        update_manifest(rd, status="failed", failed_steps=bad)
        storage.put(c, prefix + "manifest.json", (rd / "manifest.json").read_bytes(), wait_forbidden_s=60)
    summary = {"run": prefix, "failed_steps": bad, "status": "failed" if bad else "complete"}
    print(json.dumps(summary))
    if bad:
        print("run failed: " + "; ".join(f"{b.get('host')} {b.get('step')}: {b.get('detail', '')[-300:]}" for b in bad), file=sys.stderr)
        return 1
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """With the user's own ``az login``: Storage Blob Data Reader on the container, which the
    program grants, is all it needs (a user delegation SAS would need a role at account scope)."""
    out = out_dir(args.out, "--out")
    if args.ca_file is not None:
        in_file(args.ca_file, "--ca-file")
    if not args.url.startswith("https://"):  # the SDK sends a bearer token over HTTPS only
        shown = args.url.split("?")[0] + ("?..." if "?" in args.url else "")  # a query may be a SAS: never echoed
        raise ConfigError("--url", shown, "not an https:// container URL")
    if args.ca_file is not None:
        try:
            ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError, ValueError):
            raise ConfigError("--ca-file", args.ca_file, "is not a readable PEM certificate bundle") from None
    dest = storage.fetch(storage.container(args.url, storage.user_credential(), args.ca_file), args.prefix, out)
    print(dest)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("host", help="steps run on an Azure VM by the Pulumi program's remote commands")
    hsub = p.add_subparsers(dest="host_cmd", required=True)

    def q(name: str, func: Callable[[argparse.Namespace], int], help: str, run: bool = False, host: bool = False) -> argparse.ArgumentParser:
        x = hsub.add_parser(name, help=help)
        add_stack_args(x)
        if run:
            x.add_argument("--run-id", required=True)
            x.add_argument("--runs", default="/var/lib/mqttlab/runs")
            x.add_argument("--load-generator", choices=("mqttlab", "emqtt-bench"), default="mqttlab")
        if host:
            x.add_argument("--host", required=True, help="this VM's host name in the plan")
        x.set_defaults(func=func)
        return x

    q("security-install", cmd_security_install, "store the run's passwords and certificates, read from stdin")
    b = q("brokers-up", cmd_brokers_up, "render and start the broker containers, wait until each answers")
    b.add_argument("--parent", default="eth0", help="the NIC the ipvlan network hangs off")
    q("probe-brokers", cmd_probe_brokers, "from this (balancer) host, check every broker answers MQTT", host=True)
    x = hsub.add_parser("brokers-down", help="stop the broker containers")
    x.add_argument("--project-dir")
    x.set_defaults(func=cmd_brokers_down)
    q("balancer-apply", cmd_balancer_apply, "apply this host's IPVS rules, timeouts, iptables and sysctls (if the plan has a balancer here)", host=True)
    x = hsub.add_parser("balancer-clear", help="remove IPVS services and the SNAT rules")
    x.set_defaults(func=cmd_balancer_clear)
    m = q("monitors-start", cmd_monitors_start, "start this host's monitors in the background", run=True)
    m.add_argument("--role", choices=("brokers", "balancer"), required=True)
    m.add_argument("--host", default="brokers")
    q("bench-subs", cmd_bench_subs, "start this host's subscribers and wait until they are ready", run=True, host=True)
    t = q("bench-start", hostfaults.cmd_bench_start, "print the epoch every host's publishers and faults start at")
    t.add_argument("--lead", type=float, default=hostfaults.LEAD_S, help="seconds from now")
    p = q("bench-pubs", cmd_bench_pubs, "run this host's publishers to the end", run=True, host=True)
    p.add_argument("--start-at", type=float, help="the agreed start (epoch) from bench-start")
    f = q("faults-start", cmd_faults_start, "start this host's share of mqttlab:faults, timed from the agreed start", run=True, host=True)
    f.add_argument("--start-at", type=float, required=True, help="the agreed start (epoch) from bench-start")
    f = q("faults-run", cmd_faults_run, "the fault process itself (started by faults-start, stopped by collect)", run=True, host=True)
    f.add_argument("--start-at", type=float, required=True)
    f.add_argument("--until", type=float, required=True, help="stop by itself at this epoch")
    q("bench-finish", cmd_bench_finish, "drain, stop the subscribers", run=True, host=True)
    c = q("collect", cmd_collect, "stop monitors, gather logs and tables, upload the run directory", run=True, host=True)
    c.add_argument("--url", required=True, help="results container URL")
    c.add_argument("--ca-file", help=argparse.SUPPRESS)  # a CA bundle to trust instead of the system's (an emulator)
    v = q("verdict", cmd_verdict, "after every upload: fail if any host recorded a failed step", run=True, host=True)
    v.add_argument("--url", required=True, help="results container URL")
    v.add_argument("--ca-file", help=argparse.SUPPRESS)

    r = sub.add_parser("results", help="results in the Azure container")
    rsub = r.add_subparsers(dest="results_cmd", required=True)
    f = rsub.add_parser("fetch", help="download a run's files into OUT/<stack>-<run-id>/ with your az login")
    f.add_argument("--url", required=True)
    f.add_argument("--prefix", required=True)
    f.add_argument("--out", default="runs")
    f.add_argument("--ca-file", help="a CA bundle to trust instead of the system's (a TLS-inspecting proxy, an emulator)")
    f.set_defaults(func=cmd_fetch)

