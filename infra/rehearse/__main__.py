"""``pulumi up`` rehearsed on this machine: every remote step the program registers, executed for
real over SSH against hosts that stand in for the VMs (:mod:`infra.rehearse.hosts`).

    python -m infra.rehearse -s smoke [--run-id ID] [--again] [--new-run-id ID]

``--again`` runs a second update with the same configuration (a real one runs no step whose
inputs did not change); ``--new-run-id`` a further one with another ``runId`` (the benchmark's
steps only). Every update's steps are logged (name, host, status, exit, seconds, last lines) to
the terminal and to ``.rehearsal/<stack>/log.jsonl``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pulumi
import yaml

from infra.mocked import ROOT
from infra.rehearse.engine import FAILED, NOT_RUN, RAN, UNCHANGED, Runner, State, StepResult, up
from infra.rehearse.hosts import Hosts
from infra.rehearse.program import rehearsed
from infra.rehearse.ssh import SshRunner
from workloads.base.errors import LabError
from workloads.cli import Parser, add_rehearse_args
from workloads.describe.config import ConfigError, parse_config
from workloads.describe.plan import Plan, build_plan
from workloads.describe.schema import nearest

SECTIONS = ("topology", "network", "brokers", "bridge", "balancer", "scenario", "security", "faults")


def stacks(root: Path = ROOT) -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))


def plan_of(stack: str, root: Path = ROOT) -> Plan:
    doc = (yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text()) or {}).get("config") or {}
    return build_plan(parse_config({f"mqttlab:{k}": doc[f"mqttlab:{k}"] for k in SECTIONS if f"mqttlab:{k}" in doc}, stack))


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    def step(self, update: str, r: StepResult, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.t0
        eta = elapsed / done * (total - done) if done else 0.0
        mark = {RAN: "ok", UNCHANGED: "unchanged", FAILED: "FAILED", NOT_RUN: "not run"}[r.status]
        rc = "" if r.rc is None else f" exit {r.rc}"
        self.say(f"{update} {done}/{total} (ETA {eta:.0f}s) {r.name} on {r.vm}: {mark}{rc} {r.seconds:.1f}s")
        if r.status == FAILED:
            for line in r.tail:
                self.say(f"    | {line}")
        with self.path.open("a") as f:
            f.write(json.dumps({"update": update, "step": r.name, "host": r.vm, "status": r.status, "rc": r.rc, "seconds": r.seconds,
                                "tail": r.tail, "why": r.why}) + "\n")


def summary(update: str, results: list[StepResult], log: Log) -> bool:
    counts = {s: sum(r.status == s for r in results) for s in (RAN, UNCHANGED, FAILED, NOT_RUN)}
    log.say(f"{update}: {counts[RAN]} ran, {counts[UNCHANGED]} unchanged, {counts[FAILED]} failed, {counts[NOT_RUN]} not run "
            f"of {len(results)} remote steps")
    for r in results:
        if r.status == NOT_RUN:
            log.say(f"    not run: {r.name} ({r.why})")
    return counts[FAILED] == 0 and counts[NOT_RUN] == 0


def one_update(name: str, stack: str, memory: dict[str, Any], run_id: str | None, state: State, runner: Runner, log: Log,
               continue_on_error: bool = False) -> tuple[bool, list[StepResult]]:
    """One ``pulumi up``: the program run again (as the engine runs it on every update), then its steps."""
    r = rehearsed(stack, memory, run_id)
    log.say(f"{name}: the program registers {len(r.steps)} remote steps (runId {r.program.outputs.get('runId')})")
    results = up(r.steps, runner, state, r.marks, lambda res, d, t: log.step(name, res, d, t), continue_on_error)
    return summary(name, results, log), results


def missing_kernel_features() -> list[str]:
    """What the program's steps need of the kernel that this one lacks (the hosts share it)."""
    out = []
    for module, needed_by in (("ip_vs", "balancer-apply (IPVS)"), ("ipvlan", "brokers-up (the ipvlan network)")):
        if not Path(f"/sys/module/{module}").exists() and subprocess.run(["modprobe", "-n", module], capture_output=True).returncode != 0:
            out.append(f"{module} for {needed_by}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="mqttlab rehearse", description=__doc__.split("\n\n")[0])
    add_rehearse_args(ap)
    args = ap.parse_args(argv)
    known = stacks()
    if args.stack not in known:
        near = nearest(args.stack, known)
        print(f"mqttlab rehearse: no stack {args.stack!r} (Pulumi.{args.stack}.yaml){f'; did you mean {near}?' if near else ''} "
              f"Stacks: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        plan = plan_of(args.stack)
    except ConfigError as exc:
        print(f"mqttlab rehearse: configuration error: {exc}", file=sys.stderr)
        return 2
    memory: dict[str, Any] = {}
    try:  # the program checks its configuration before it registers anything, as under pulumi up
        first = rehearsed(args.stack, memory, args.run_id)
    except (pulumi.RunError, ConfigError, ValueError) as exc:
        print(f"mqttlab rehearse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    d = args.dir or ROOT / ".rehearsal" / args.stack
    d.mkdir(parents=True, exist_ok=True)
    for old in ("state.json", "memory.json", "log.jsonl"):
        (d / old).unlink(missing_ok=True)  # the hosts are new: so is the stack
    shutil.rmtree(d / "hosts", ignore_errors=True)
    log = Log(d / "log.jsonl")
    state = State(d / "state.json")
    (d / "memory.json").write_text(json.dumps(memory))
    ok = True
    try:
        with Hosts(first, plan, args.work / args.stack, log.say, keep=d / "hosts"):
            runner = SshRunner(d / "ssh", first.operator_key)
            for gap in missing_kernel_features():
                log.say(f"this kernel has no {gap}: that step fails here (the micro-VM's stock kernel has it)")
            updates = [("up", args.run_id)]
            if args.again:
                updates.append(("up again", args.run_id))
            if args.new_run_id:
                updates.append((f"up runId={args.new_run_id}", args.new_run_id))
            for name, rid in updates:
                done, _ = one_update(name, args.stack, memory, rid, state, runner, log, args.continue_on_error)
                ok = ok and done
                if not done:
                    break
    except LabError as exc:
        print(f"mqttlab rehearse: {exc}", file=sys.stderr)
        return 1
    log.say(f"rehearsal of {args.stack}: {'every remote step succeeded' if ok else 'FAILED'}; log {d / 'log.jsonl'}, "
            f"the hosts' boot, cloud-init, sshd and dockerd logs in {d / 'hosts'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
