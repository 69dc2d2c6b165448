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
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import yaml

from infra.bundle import BUNDLE_DIR
from infra.mocked import ROOT
from infra.rehearse import dataplane, failures, store
from infra.rehearse.engine import FAILED, NOT_RUN, RAN, UNCHANGED, Runner, State, StepResult, up
from infra.rehearse.hosts import CTL, Hosts
from infra.rehearse.program import Rehearsed, rehearsed
from infra.rehearse.ssh import SshRunner
from workloads.base.errors import LabError
from workloads.cli import Parser, add_rehearse_args, rehearse_argv
from workloads.describe.config import ConfigError, parse_config
from workloads.describe.plan import Plan, build_plan
from workloads.describe.schema import nearest
from workloads.hosts.lab import vm

SECTIONS = ("topology", "network", "brokers", "bridge", "balancer", "scenario", "security", "faults")


def stacks(root: Path = ROOT) -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))


def plan_of(stack: str, root: Path = ROOT, overrides: Mapping[str, Any] | None = None) -> Plan:
    doc = (yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text()) or {}).get("config") or {}
    cfg = parse_config({f"mqttlab:{k}": doc[f"mqttlab:{k}"] for k in SECTIONS if f"mqttlab:{k}" in doc}, stack)
    return build_plan(cfg.with_overrides(overrides) if overrides else cfg)


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    def step(self, update: str, r: StepResult, done: int, total: int, since: float | None = None) -> None:
        """One step's line; the ETA from this update's own pace (``since``: when it began)."""
        elapsed = time.monotonic() - (self.t0 if since is None else since)
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
               continue_on_error: bool = False, overrides: Mapping[str, Any] | None = None) -> tuple[bool, list[StepResult], str]:
    """One ``pulumi up``: the program run again (as the engine runs it on every update), then its
    steps; with the stack's ``resultsPrefix`` output after it (each runId has its own)."""
    r = rehearsed(stack, memory, run_id, overrides=overrides)
    log.say(f"{name}: the program registers {len(r.steps)} remote steps (runId {r.program.outputs.get('runId')})")
    began = time.monotonic()
    results = up(r.steps, runner, state, r.marks, lambda res, d, t: log.step(name, res, d, t, began), continue_on_error,
                 running=lambda now: log.say(f"{name}: still running " + ", ".join(f"{s} on {h} ({t:.0f}s)" for s, h, t in now)))
    return summary(name, results, log), results, str(r.program.outputs.get("resultsPrefix") or "")


def fetch_and_report(hosts: Hosts, d: Path, log: Log, prefix: str) -> bool:
    """What the README has the operator do after ``pulumi up``: ``mqttlab results fetch`` with the
    stack's ``resultsUrl`` and ``resultsPrefix`` and the operator's login (from the controller,
    through the store's gate, which lets the operator read and not write), then ``mqttlab
    report`` on what came back. ``prefix``: the last update's ``resultsPrefix`` output, as the
    operator reads it after that update."""
    spec, ca = hosts.store, hosts.store_ca
    if spec is None or ca is None:
        return False
    bindir = store.fake_az(hosts.work / "bin", dataplane.token(spec.operator, "user"))
    bundle = hosts.work / "store" / "operator-ca.pem"
    bundle.write_text(store.ca_bundle(ca))
    env = [f"PATH={bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", f"REQUESTS_CA_BUNDLE={bundle}"]
    fetch = [sys.executable, "-m", "workloads.cli", "results", "fetch", "--url", spec.url, "--prefix", prefix, "--out", str(d / "runs")]
    log.say(f"fetch: mqttlab results fetch --url {spec.url} --prefix {prefix} --out {d / 'runs'}")
    cp = subprocess.run(["ip", "netns", "exec", CTL, "env", *env, *fetch], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if cp.returncode != 0:
        log.say(f"fetch FAILED (exit {cp.returncode}): {(cp.stderr.strip().splitlines() or ['no output'])[-1]}")
        return False
    run_dir = Path(cp.stdout.strip().splitlines()[-1])
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    log.say(f"fetched {len(files)} files into {run_dir}")
    rep = subprocess.run([sys.executable, "-m", "workloads.cli", "report", "--out", str(d / "report"), str(run_dir)],
                         capture_output=True, text=True, timeout=1800, cwd=ROOT)
    for line in (rep.stdout + rep.stderr).strip().splitlines()[-12:]:
        log.say(f"    report | {line}")
    if rep.returncode != 0:
        log.say(f"report FAILED (exit {rep.returncode})")
        return False
    log.say(f"report: {d / 'report' / 'report.html'}")
    return True


def rehearse_failures(plan: Plan, r: Rehearsed, runner: Runner, state: State, memory: dict[str, Any], stack: str, log: Log,
                      overrides: Mapping[str, Any] | None = None) -> bool:
    """Each of :func:`infra.rehearse.failures.cases`: made real, one update, undone, checked."""
    ok = True
    for case in failures.cases(plan):
        log.say(f"failure: {case.name}")
        hooked = failures.Hooked(runner, r.steps, case.after_step, log.say)
        for vm_name, command in case.before:
            hooked.act(vm_name, command)
        try:
            _, results, _prefix = one_update(f"up runId={case.run_id}", stack, memory, case.run_id, state, hooked, log,
                                             overrides=overrides)
        finally:
            for vm_name, command in case.undo:
                hooked.act(vm_name, command)
        wrong = case.check(results)
        log.say(f"failure: {case.name}: " + ("as the program says" if not wrong else "NOT as the program says: " + "; ".join(wrong)))
        ok = ok and not wrong
    return ok


def missing_kernel_features() -> list[str]:
    """What the program's steps need of the kernel that this one lacks (the hosts share it)."""
    out = []
    for module, needed_by in (("ip_vs", "balancer-apply (IPVS)"), ("ipvlan", "brokers-up (the ipvlan network)")):
        if not Path(f"/sys/module/{module}").exists() and subprocess.run(["modprobe", "-n", module], capture_output=True).returncode != 0:
            out.append(f"{module} for {needed_by}")
    return out


VM_MEMORY = "6G"  # three hosts' private roots (Docker, its image, the packages) live in the guest's memory


def in_vm(argv: list[str], d: Path) -> int:
    """This very rehearsal again inside the micro-VM (where ``--vm auto`` runs it there), its state, log and
    hosts' logs written through to ``d``; the guest reaches the registries through qemu's
    user-mode network, so nothing changes in this machine's network."""
    console = d / "guest.log"
    console.unlink(missing_ok=True)
    script = vm.guest_command(argv, console, module="infra.rehearse", cwd=ROOT, modules=("ipvlan", "overlay"), shm=True,
                              both_streams=True)
    print("mqttlab rehearse: booting the micro-VM (a stock kernel with IPVS and ipvlan; emulated, so every step is slower)",
          file=sys.stderr, flush=True)
    try:
        # the program runs again in the guest for every update and writes its bundle there when
        # the sources changed since (the guest's root is read-only): that folder is written through too
        cp = vm.run_in_vm(script, [d, ROOT / BUNDLE_DIR], timeout=1800, memory=VM_MEMORY, echo=console, network="user")
    except LabError as exc:
        print(f"mqttlab rehearse: {exc}", file=sys.stderr)
        return 1
    if cp.returncode not in (0, 1):
        sys.stderr.write(cp.stderr[-4000:])
    return cp.returncode


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
        sets = dict(args.set or [])
        plan = plan_of(args.stack, overrides=sets)
    except ConfigError as exc:
        print(f"mqttlab rehearse: configuration error: {exc}", file=sys.stderr)
        return 2
    memory: dict[str, Any] = {}
    try:  # the program checks its configuration before it registers anything, as under pulumi up
        first = rehearsed(args.stack, memory, args.run_id, overrides=sets)
    except (pulumi.RunError, ConfigError, ValueError) as exc:
        print(f"mqttlab rehearse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    if dataplane.azurite_binary() is None:
        print(f"mqttlab rehearse: the results store needs Azurite ({dataplane.AZURITE_BIN} or azurite-blob on PATH): "
              "./scripts/setup.sh --dev installs it", file=sys.stderr)
        return 2
    d = (args.dir or ROOT / ".rehearsal" / args.stack).resolve()
    d.mkdir(parents=True, exist_ok=True)
    gaps = missing_kernel_features()
    if args.vm == "always" or (args.vm == "auto" and gaps and not vm.in_guest()):
        if vm.in_guest():
            print("mqttlab rehearse: already in the micro-VM", file=sys.stderr)
            return 2
        if reason := vm.unavailable_reason():
            print(f"mqttlab rehearse: this kernel has no {' nor '.join(gaps)}, and the micro-VM cannot run here: missing {reason} "
                  "(--vm never rehearses without them)", file=sys.stderr)
            return 2
        args.dir = d  # the guest writes through to this very folder
        return in_vm(rehearse_argv(args), d)
    for old in ("state.json", "memory.json", "log.jsonl"):
        (d / old).unlink(missing_ok=True)  # the hosts are new: so is the stack
    for old_dir in ("hosts", "runs", "report", "steps"):
        shutil.rmtree(d / old_dir, ignore_errors=True)
    log = Log(d / "log.jsonl")
    if sets:  # not the stack file's experiment: the log says how it differs, as `pulumi config` would show it
        log.say(f"configuration: Pulumi.{args.stack}.yaml with " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sets.items())
                + " (--set, as `pulumi config set --path` would change the stack)")
    state = State(d / "state.json")
    (d / "memory.json").write_text(json.dumps(memory))
    ok = True
    try:
        with Hosts(first, plan, args.work / args.stack, log.say, keep=d / "hosts") as hosts:
            runner = SshRunner(d / "ssh", first.operator_key, outdir=d / "steps")
            for gap in gaps:
                log.say(f"this kernel has no {gap}: that step fails here (the micro-VM's stock kernel has it)")
            updates = [("up", args.run_id)]
            if args.again:
                updates.append(("up again", args.run_id))
            if args.new_run_id:
                updates.append((f"up runId={args.new_run_id}", args.new_run_id))
            collected = ""  # the resultsPrefix of the last update that collected
            for name, rid in updates:
                done, results, prefix = one_update(name, args.stack, memory, rid, state, runner, log, args.continue_on_error, sets)
                if any(r.status == RAN and "-collect-" in r.name for r in results):
                    collected = prefix
                ok = ok and done
                if not done:
                    break
            if collected:  # the results were uploaded, for a failed run too: the operator fetches them
                ok = fetch_and_report(hosts, d, log, collected) and ok
            if args.failures and ok:
                ok = rehearse_failures(plan, first, runner, state, memory, args.stack, log, sets)
    except LabError as exc:
        print(f"mqttlab rehearse: {exc}", file=sys.stderr)
        return 1
    log.say(f"rehearsal of {args.stack}: {'every remote step succeeded' if ok else 'FAILED'}; log {d / 'log.jsonl'}, "
            f"the hosts' boot, cloud-init, sshd and dockerd logs in {d / 'hosts'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
