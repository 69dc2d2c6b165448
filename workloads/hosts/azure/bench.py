"""The bench's steps on a client VM: monitors, subscribers, publishers from the agreed start, the drain.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from workloads.base import procs
from workloads.base.errors import LabError
from workloads.bench import command as benchcmd
from workloads.describe.config import ExperimentConfig
from workloads.describe.names import container
from workloads.describe.plan import Broker, Plan
from workloads.describe.standin import balancing
from workloads.hosts.azure import inject
from workloads.hosts.azure.common import RENDERED, SKIPPED, config_and_plan, detach, recorded, run_dir, run_tag, step_status, stop_detached
from workloads.hosts.shell import run as sh
from workloads.rundir.records import deliveries_on_disk, drain, start_manifest, update_manifest


@recorded("monitors-start")
def cmd_monitors_start(args: argparse.Namespace) -> int:
    cfg, plan = config_and_plan(args)
    rd = run_dir(args)
    mon = rd / "monitor"
    mon.mkdir(exist_ok=True)
    if args.role == "brokers":
        for b in plan.brokers:
            start_broker_monitor(cfg, b, rd)
    else:
        detach([*procs.mqttlab(), "monitor", "balancer", "--kind", "ipvs", "--host", args.host, "--out", str(mon / f"balancer-{args.host}.csv")], rd,
               f"monitor-{args.host}")
    print(f"monitors started for {args.role}")
    return 0


def start_broker_monitor(cfg: ExperimentConfig, b: Broker, rd: Path) -> int:
    """The host cannot reach its own ipvlan children, so a broker's monitor samples ``$SYS`` from
    inside the container's network namespace; it appends to the broker's CSV."""
    pid = sh(["docker", "inspect", "-f", "{{.State.Pid}}", container(b.name)]).stdout.strip()
    sec = ["--security", str(RENDERED / "brokers/security/client.json")] if cfg.security.enabled else []
    return detach(["nsenter", "-t", pid, "-n", *procs.mqttlab(), "monitor", "brokers", "--broker", f"{b.name}={b.address}:{b.port}@{pid}",
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


def host_bench_command(role: str, cfg: ExperimentConfig, plan: Plan, args: argparse.Namespace, rd: Path, extra: list[str]) -> list[str]:
    i = [c.host for c in plan.clients].index(args.host)
    return benchcmd.bench_command(role, cfg.scenario, target=plan.clients[i].target, out=rd, host=args.host, index=i, count=len(plan.clients),
                               tag=run_tag(args.stack, args.run_id), extra=extra,
                               security=RENDERED / args.host / "security/client.json" if cfg.security.enabled else None)


@recorded("bench-subs")
def cmd_bench_subs(args: argparse.Namespace) -> int:
    cfg, plan = config_and_plan(args)
    rd = run_dir(args)
    start_manifest(rd, kind="azure", stack=args.stack, topology=plan.topology, **balancing("ipvs", cfg.balancer.scheduler).manifest_fields(),
                   scenario=cfg.scenario.to_dict(), plan=plan.to_dict(), tag=run_tag(args.stack, args.run_id), run_id=args.run_id,
                   load_generator=args.load_generator, faults=[f.spec for f in cfg.faults],
                   **({"links": {"configured": cfg.links.to_dict(), "carried_out": None,
                                 "why": "on Azure the network is Azure's: mqttlab:links is carried out only in the lab"}} if cfg.links.active else {}))
    ready = rd / "bench" / args.host / "sub.ready"
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    if args.load_generator == "emqtt-bench":
        return _emqtt(cfg, plan, args, rd, "sub")
    detach(host_bench_command("sub", cfg, plan, args, rd, ["--ready-file", str(ready)]), rd, "bench-sub")
    end = time.time() + cfg.scenario.time_limit_s
    while not ready.exists():
        if time.time() > end:
            raise LabError(f"subscribers on {args.host} not ready within {cfg.scenario.time_limit_s}s (see {rd}/logs/bench-sub.log)")
        time.sleep(0.5)
    print(f"subscribers ready on {args.host}")
    return 0


@recorded("bench-pubs")
def cmd_bench_pubs(args: argparse.Namespace) -> int:
    cfg, plan = config_and_plan(args)
    rd = run_dir(args)
    if step_status(rd, args.host, "bench-subs") != "ok":
        return SKIPPED
    start = [] if args.start_at is None else ["--start-at", f"{args.start_at:.3f}"]
    if args.start_at is not None and time.time() > args.start_at + inject.LATE_S:
        late = f"publishers on {args.host} start {time.time() - args.start_at:.1f}s after the agreed start"
        if cfg.faults:
            raise LabError(f"{late}: the faults are timed from it; run again with a new mqttlab:runId")
        print(late, file=sys.stderr)
    if args.load_generator == "emqtt-bench":
        if args.start_at is not None:
            time.sleep(max(0.0, args.start_at - time.time()))
        return _emqtt(cfg, plan, args, rd, "pub")
    cp = subprocess.run(host_bench_command("pub", cfg, plan, args, rd, ["--json", *start]),
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
    cfg, plan = config_and_plan(args)
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


def start_epoch(text: str) -> str:
    """The agreed start printed by ``mqttlab host bench-start`` (its last line, an epoch); the
    Pulumi program hands it on and refuses anything else, rather than start publishers at a
    time nobody chose."""
    last = (text or "").strip().splitlines()[-1:] or [""]
    try:
        value = float(last[0])
    except ValueError:
        raise ValueError(f"bench-start printed {text!r}, not an epoch time") from None
    if value < 1e9:
        raise ValueError(f"bench-start printed {value}, not an epoch time")
    return f"{value:.3f}"


def cmd_bench_start(args: argparse.Namespace) -> int:
    print(f"{time.time() + args.lead:.3f}")
    return 0
