"""The fault steps of a VM: start this host's share of ``mqttlab:faults`` from the agreed start, the
fault process itself, and what collect does to stop it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from workloads.base import procs
from workloads.base.errors import LabError
from workloads.describe.config import ExperimentConfig
from workloads.describe.plan import Plan
from workloads.hosts.azure import inject, steps
from workloads.hosts.azure.bench import restart_broker_monitor
from workloads.hosts.azure.common import config_and_plan, detach, recorded, run_dir, stop_detached


@recorded("faults")
def cmd_faults_start(args: argparse.Namespace) -> int:
    """Start this VM's fault process in the background (it must run beside the publishers and
    be stopped by collect) and return once it has armed its schedule."""
    cfg, _ = config_and_plan(args)
    rd = run_dir(args)
    mine = inject.faults_on(cfg.faults, args.host)
    if not mine:
        print(f"no faults on {args.host}")
        return 0
    late = inject.armed_in_time(mine, args.start_at, time.time())
    if late:
        raise LabError(late)
    until = args.start_at + cfg.scenario.time_limit_s + cfg.scenario.drain_s + inject.SETTLE_S
    bound = int(until - time.time()) + 60  # the process stops itself at `until`; timeout is the backstop
    record = rd / "faults" / f"{args.host}.jsonl"
    record.unlink(missing_ok=True)
    detach(["timeout", "-k", "10", str(bound), *procs.mqttlab(),
            *steps.argv("faults-run", args.stack, host=args.host, run_id=args.run_id, project_dir=args.project_dir or ".", runs=args.runs,
                        start_at=f"{args.start_at:.3f}", until=f"{until:.3f}")], rd, "faults")
    end = time.time() + 30
    while not record.exists():
        if time.time() > end:
            raise LabError(f"the fault process on {args.host} did not arm within 30s (see {rd}/logs/faults.log)")
        time.sleep(0.2)
    print(f"{len(mine)} fault(s) armed on {args.host}: " + ", ".join(f.spec for _, f in mine))
    return 0


def cmd_faults_run(args: argparse.Namespace) -> int:
    cfg, plan = config_and_plan(args)
    rd = run_dir(args)
    return inject.run_injector(plan, inject.faults_on(cfg.faults, args.host), args.host, rd, args.start_at, args.until,
                                   on_restart=lambda broker: restart_broker_monitor(cfg, plan, rd, broker))


def stop_faults(cfg: ExperimentConfig, plan: Plan, rd: Path, host: str) -> None:
    """The fault process undoes what is in force when stopped; then nothing of ours may remain
    (a fault table, a paused broker), even if that process was killed or never started."""
    if not inject.faults_on(cfg.faults, host):
        return
    stop_detached(rd, "faults", timeout=90)  # a restart's undo waits up to 60 s for the broker
    for line in inject.cleanup(plan, host):
        print(f"left by the fault process, removed: {line}")
