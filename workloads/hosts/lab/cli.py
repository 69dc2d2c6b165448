"""``mqttlab lab``: run, up, status, down."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from workloads.base import procs
from workloads.base.clipaths import out_dir
from workloads.base.errors import LabError
from workloads.describe import standin
from workloads.describe.cliargs import add_scenario_args, add_set_arg, add_stack_args, load, scenario_overrides
from workloads.describe.config import ConfigError
from workloads.describe.schema import HEALTH_CHECKS, SCHEDULERS, SECURITY_MODES, TOPOLOGIES, leaf_paths
from workloads.hosts.lab import cgroups, lab, netns, vm
from workloads.rundir.records import format_summary

OVERRIDES = {  # option dest -> config key
    "topology": "topology",
    "scheduler": "balancer.scheduler",
    "broker_cpus": "brokers.cpus",
    "broker_memory_mb": "brokers.memoryMb",
    "security": "security.mode",
}


def default(path: str) -> str:
    """A stack key's default as the help shows it."""
    return str(leaf_paths()[path].default)


def _config(args: argparse.Namespace) -> Any:
    from workloads.describe.config import renumber

    overrides: dict[str, Any] = dict(getattr(args, "set", None) or [])  # the named options below go on top
    overrides |= {key: getattr(args, dest) for dest, key in OVERRIDES.items() if getattr(args, dest, None) is not None}
    overrides |= scenario_overrides(args)
    if getattr(args, "fault", None):
        overrides["faults"] = list(args.fault)  # the command line's faults replace the stack file's
    hc = {k: getattr(args, f"health_{k}") for k in ("check", "interval", "retries", "timeout") if getattr(args, f"health_{k}", None) is not None}
    if hc:  # on top of the stack file's healthCheck section
        base = dict(load(args).raw.get("mqttlab:balancer", {}).get("healthCheck") or {})
        overrides["balancer.healthCheck"] = base | {("type" if k == "check" else k): v for k, v in hc.items()}
    try:
        cfg = load(args, overrides)
    except ConfigError as exc:
        if exc.key.startswith("mqttlab:faults[") and getattr(args, "fault", None):
            raise ConfigError("--fault", exc.value, exc.allowed) from None
        raise
    return cfg if args.keep_addresses else renumber(cfg)


def format_lab_summary(s: dict[str, Any]) -> str:
    bal = s["balancer"]
    per = "  ".join(f"{k} {v}" for k, v in s["connections_per_broker"].items())
    lines = [
        f"topology {s['topology']}   balancer {s['balancing']} on {', '.join(bal['hosts'])}"
        + (f"   security {s['security']}" if s.get("security", "none") != "none" else ""),
    ]
    if bal.get("note"):
        lines.append(f"  note: {bal['note']}")
    lines += [f"  clients per broker {per}", format_summary(s)]
    for f in s.get("faults", []):
        when = "not carried out" if f.get("started_at") is None else (
            f"at +{f['started_at'] - f['t0']:.3f}s" + (f", ended +{f['ended_at'] - f['t0']:.3f}s" if f.get("ended_at") else ", to the end"))
        lines.append(f"  fault              {f['spec']}: {when} ({f['detail']})")
    em = s.get("emqtt_bench")
    if em:
        lines.append(f"  emqtt-bench (same scenario, its own totals, estimated): sent {em['sent']}  delivered {em['delivered']}/{em['expected']}  "
                     f"lost {em['lost']} ({em['loss_pct']:.3f} %)   engine, exact: delivered {s['delivered']}/{s['expected']}")
    lines.append(f"  run directory      {s['run_dir']}")
    return "\n".join(lines)


def in_vm(args: argparse.Namespace, argv: list[str]) -> int:
    """Re-run this very command inside the micro-VM; the run directory is written through. The
    guest always says its progress, into a log written through as it goes: each line is a sign
    of work to the VM's wait (vm.run_in_vm), is shown here unless ``--quiet``, and when the run
    fails its last lines say in which phase."""
    runs = Path(args.out).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    print("[lab] booting the micro-VM (a stock kernel with IPVS; about a minute under emulation)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="mqttlab-vm-log-") as d:
        log = Path(d) / "guest.log"
        log.touch()
        script = vm.guest_command([a for a in argv if a != "--quiet"], log)
        try:
            cp = vm.run_in_vm(script, [runs, Path(d)], timeout=args.vm_timeout, echo=None if args.quiet else log)
        except LabError as exc:
            said = last_lines(log, 1)
            raise LabError(f"{exc}" + (f"; the guest last said: {said[0].strip()}" if said else "")) from None
        sys.stdout.write(cp.stdout)
        sys.stderr.write(cp.stderr[-20000:])
        if cp.returncode != 0 and args.quiet:
            sys.stderr.writelines(f"{x}\n" for x in last_lines(log, 20))
    return cp.returncode


def last_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of ``path``; none when it is missing."""
    return path.read_text(errors="replace").splitlines()[-n:] if path.is_file() else []


def preconditions(cfg: Any, balancer: str, load_generator: str, boots_vm: bool) -> dict[str, str]:
    """The preconditions a real run refuses to start without, as they stand here: a dry run
    reports them rather than failing, so a plan can be checked on a machine that cannot run it
    (not root, tools missing). In the micro-VM they are the guest's, not this machine's."""
    if boots_vm:
        return {"micro-VM": f"missing {reason}" if (reason := vm.unavailable_reason()) else "available",
                "root, tools, cgroups": "checked inside the micro-VM"}
    missing = [t for t in lab.required_tools(cfg, balancer) if shutil.which(t) is None]
    if load_generator == "emqtt-bench":
        from workloads.bench import emqtt

        missing += [] if emqtt.find_native() else ["emqtt_bench"]
    out = {"root": "yes" if os.geteuid() == 0 else "no: a run needs root",
           "tools": f"missing {', '.join(missing)}" if missing else "all found",
           "cgroups": cgroups.detect() or "no cpu and memory controllers: a run refuses to start"}
    if cfg.links.active:
        out["netem"] = "yes" if lab.kernel_has_netem() else "no: mqttlab:links needs --vm here (a run refuses to start)"
    return out


def dry_run(args: argparse.Namespace, out: Path, boots_vm: bool) -> int:
    """Every check of the configuration and the balancer choice a run makes, then the plan; no
    namespace, folder or file is created and no micro-VM boots."""
    from workloads.bench.dryrun import format_plan, lab_plan

    cfg = _config(args)
    if boots_vm:  # the guest's kernel has IPVS: there the default is IPVS itself
        balancer = args.balancer or "ipvs"
        note = "" if balancer == "ipvs" else standin.explicit_note(balancer, cfg.balancer.scheduler)
    else:
        balancer, note = lab.choose_balancer(args.balancer, cfg.balancer.scheduler, load=False)
    doc = lab_plan(cfg, balancer, note, out, args.vm, preconditions(cfg, balancer, args.load_generator, boots_vm))
    print(json.dumps(doc, indent=2) if args.json else format_plan(doc))
    return 0


def announce(cfg: Any, in_micro_vm: bool) -> None:
    from workloads.bench.cli import announce_size
    from workloads.describe.runsize import estimate_run_s

    sc = cfg.scenario
    announce_size(sc, list(range(sc.subscribers)), list(range(sc.publishers)), estimate_run_s(cfg, in_micro_vm))


def cmd_run(args: argparse.Namespace) -> int:
    out = out_dir(args.out, "--out")
    boots_vm = args.vm and not vm.in_guest()
    if args.dry_run:
        return dry_run(args, out, boots_vm)
    if boots_vm:
        cfg = _config(args)  # bad input is refused here, before a VM boots (and before asking for one)
        reason = vm.unavailable_reason()
        if reason:
            raise LabError(f"--vm needs the micro-VM: missing {reason}")
        if not args.quiet:
            announce(cfg, True)
        with procs.stop_signals_raise():
            return in_vm(args, sys.argv[1:])
    cfg = _config(args)
    if not args.quiet and not vm.in_guest():  # in the guest, the host already said it before booting
        balancer, _note = lab.choose_balancer(args.balancer, cfg.balancer.scheduler)
        lab.preflight(cfg, balancer)  # a missing precondition is its one line, before the size line
        announce(cfg, False)
    with procs.stop_signals_raise():  # SIGTERM and SIGHUP tear down as Ctrl-C does
        cal = read_calibration(args.calibration, cfg) if args.calibration else None
        if args.calibrate:
            from workloads.hosts.lab.calibrate import calibrate

            cal = calibrate(cfg, out, args.balancer, progress=not args.quiet, broker_cpuset=args.broker_cpuset).to_dict()
        summary = lab.run(cfg, out, args.balancer, progress=not args.quiet, load_generator=args.load_generator,
                          broker_cpuset=args.broker_cpuset, calibration=cal)
    print(json.dumps(summary, indent=2) if args.json else format_lab_summary(summary))
    return 0 if not summary["partial"] else 1


def read_calibration(path: str, cfg: Any) -> dict[str, Any]:
    """A calibration file, refused in one line when it is not one or was made for another broker."""
    from workloads.rundir.calibration import fanout

    try:
        doc = json.loads(Path(path).read_text())
        capacity = float(doc["capacity"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError("--calibration", path, f"is not a calibration made by lab calibrate --json ({type(exc).__name__})") from None
    want = {"broker_cpus": cfg.brokers.cpus, "qos": cfg.scenario.qos, "payload_bytes": cfg.scenario.payload_bytes, "fanout": fanout(cfg)}
    off = [f"{k} {doc.get(k)} (this run: {v})" for k, v in want.items() if doc.get(k) != v]
    if off or capacity <= 0:
        raise ConfigError("--calibration", path, "was made for another broker: " + ("; ".join(off) or "no capacity"))
    return dict(doc)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from workloads.hosts.lab.calibrate import calibrate
    from workloads.rundir.calibration import offered_per_broker, overload_ratio

    out = out_dir(args.out, "--out")
    cfg = _config(args)
    with procs.stop_signals_raise():
        cal = calibrate(cfg, out, args.balancer, progress=not args.quiet, broker_cpuset=args.broker_cpuset)
    doc = cal.to_dict() | {"offered_per_broker": offered_per_broker(cfg), "overload_ratio": overload_ratio(cfg, cal)}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"capacity {cal.capacity:.0f} deliveries/s for one broker at {cal.broker_cpus} CPU, QoS {cal.qos}, {cal.fanout} subscribers "
              f"({cal.at_cap_s} s at its cap; {cal.run_dir})")
        offered = doc["offered_per_broker"]
        if offered is not None:
            print(f"the scenario offers {offered:.0f} deliveries/s per broker: overload ratio {doc['overload_ratio']}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    out = out_dir(args.out, "--out")
    cfg = _config(args)
    balancer, note = lab.choose_balancer(args.balancer, cfg.balancer.scheduler)
    lab.preflight(cfg, balancer)
    lab.warn_orphans()
    ran = standin.balancing(balancer, cfg.balancer.scheduler)
    run_dir = out / f"lab-up-{cfg.topology}-{ran.slug}"
    run_dir.mkdir(parents=True, exist_ok=True)
    from workloads.rundir.records import start_manifest

    start_manifest(run_dir, kind="lab-up", stack=cfg.stack, topology=cfg.topology, **ran.manifest_fields())
    lb = lab.Lab(cfg, run_dir, balancer, note, progress=True, kind="up")
    with procs.stop_signals_raise():  # a stop while it comes up takes down what is up so far
        try:
            lb.up()
            lb.state.ready = True  # from here on the lab is meant to outlive this process
            lb.state.save()
        except BaseException:
            with procs.shielded():
                lb.down()
            raise
    print(f"lab {lb.lab_id} is up ({cfg.topology}, {ran.text}). Entry points, from inside the client hosts' namespaces:")
    for c in lb.plan.clients:
        host, port = c.target.rsplit(":", 1)
        if cfg.security.enabled:  # credentials stay in the file, never on a command line
            print(f"  ip netns exec {lb.ns(c.host)} mqttlab bench run --target {c.target} --security {lb.files / c.host / 'security/client.json'} "
                  f"--out {run_dir / 'manual'}")
        else:
            print(f"  ip netns exec {lb.ns(c.host)} mosquitto_sub -h {host} -p {port} -t '#' -v")
    print(f"brokers: {', '.join(f'{b.name} {b.address}:{b.port}' for b in lb.plan.brokers)} in {lb.ns('brokers')}")
    print(f"stop it with: mqttlab lab down --id {lb.lab_id}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    labs = lab.lab_status()
    stray = lab.stray_namespaces(labs)
    if args.json:
        print(json.dumps({"labs": labs, "stray_namespaces": stray}, indent=2))
        return 0
    if not labs and not stray:
        print("no lab is running")
    for lb in labs:
        alive = sum(lb["processes"].values())
        print(f"lab {lb['lab_id']} ({lb['kind']}, {lb['balancer']}): {len(lb['namespaces'])} namespaces, {alive}/{len(lb['processes'])} processes alive, {lb['run_dir']}")
        if lb["orphaned"]:
            print(f"  orphaned: its supervisor (PID {lb['supervisor_pid']}) is gone; remove it with: mqttlab lab down --id {lb['lab_id']}")
    if stray:
        print(f"left behind by a killed run: {', '.join(stray)} (mqttlab lab down removes them)")
    return 0


def lab_id(text: str) -> str:
    """A lab id, or the start of one, as ``lab status`` prints it: hex digits only, since the id
    is a pattern over the state folder and the namespaces ("../" would reach beyond them)."""
    if not re.fullmatch(r"[0-9a-f]{1,32}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lab id (hex digits, as mqttlab lab status prints them)")
    return text


def cmd_down(args: argparse.Namespace) -> int:
    netns.require_root()
    done = lab.teardown(args.id or "")
    if args.json:
        print(json.dumps({"removed": done}, indent=2))
        return 0
    print("\n".join(done) if done else "nothing to remove")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lab", help="the experiment on this machine, in network namespaces")
    lsub = p.add_subparsers(dest="lab", required=True)

    def knobs(q: argparse.ArgumentParser) -> tuple[argparse._ArgumentGroup, argparse._ArgumentGroup]:
        """The options of run and up, in the groups their help shows: what the experiment is
        (topology, balancer, brokers), what the clients do (scenario), where results go (output)."""
        add_stack_args(q)
        t = q.add_argument_group("topology", "the system under test; unset options take the stack file's values")
        t.add_argument("--topology", choices=TOPOLOGIES, help="distributed: each balancer the entry point of its own clients; "
                       "centralized: one balancer for all (default: the stack's mqttlab:topology)")
        t.add_argument("--balancer", choices=lab.BALANCERS, help="default: ipvs where the kernel has it, else the closest stand-in")
        t.add_argument("--scheduler", choices=SCHEDULERS, help=f"the IPVS scheduler (default: the stack's, {default('balancer.scheduler')} "
                       "without one)")
        t.add_argument("--broker-cpus", type=float, metavar="CORES",
                       help=f"each broker's CPU cap (default: the stack's, {default('brokers.cpus')} without one)")
        t.add_argument("--broker-memory-mb", type=int, metavar="MIB",
                       help=f"each broker's memory cap (default: the stack's, {default('brokers.memoryMb')} without one)")
        t.add_argument("--health-check", choices=HEALTH_CHECKS, help="balancer health checks (keepalived with IPVS, HAProxy's own)")
        t.add_argument("--health-interval", type=float, metavar="S", help="seconds between checks")
        t.add_argument("--health-retries", type=int, metavar="N", help="failed checks before a broker is taken out")
        t.add_argument("--health-timeout", type=float, metavar="S", help="seconds a check may take")
        t.add_argument("--security", choices=SECURITY_MODES, help="default: the stack's mqttlab:security.mode")
        t.add_argument("--keep-addresses", action="store_true", help="use the stack's addresses instead of 198.18.0.0/15")
        add_set_arg(t)
        add_scenario_args(q)
        o = q.add_argument_group("output")
        o.add_argument("--out", default="runs", help="runs folder (default ./runs)")
        return t, o

    q = lsub.add_parser("run", help="bring the lab up, run the benchmark, tear down, summarize")
    t, o = knobs(q)
    t.add_argument("--vm", action="store_true", help="run inside the micro-VM (real IPVS on kernels without it)")
    t.add_argument("--fault", action="append", metavar="SPEC",
                   help="inject a fault, repeatable: broker2:kill@5s, broker2:pause@5s+3s, broker2:restart@5s[+2s], "
                        "bridge:broker1-broker3:cut@5s+4s, director:ipvs1:kill@5s[+10s] (times after publishing starts)")
    t.add_argument("--vm-timeout", type=float, default=1800, metavar="S", help="the micro-VM run's time bound; past it the run goes on while the guest works, up to three times it (default 1800)")
    t.add_argument("--broker-cpuset", default="auto", metavar="CPUS",
                   help="CPUs reserved for the brokers (cpuset), the lab's other processes on the rest: auto (the last CPU), off, or a list "
                        "such as 1 or 2-3 (default auto; the manifest records what the kernel applied, or why none)")
    t.add_argument("--calibrate", action="store_true",
                   help="first measure one capped broker's capacity on this host (a short flood, kept under OUT/calibration/); "
                        "the run then states its load as the overload ratio")
    t.add_argument("--calibration", metavar="FILE", help="a calibration made before (lab calibrate --json), for this cap, QoS and fan-out")
    t.add_argument("--load-generator", choices=("mqttlab", "emqtt-bench"), default="mqttlab",
                   help="emqtt-bench: after the engine's run, the same scenario through emqtt-bench (EMQTT_BENCH or PATH), totals side by side")
    o.add_argument("--json", action="store_true", help="print the summary as JSON")
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    o.add_argument("--dry-run", action="store_true",
                   help="check the configuration and the balancer choice, print the plan, expected deliveries, time and disk; "
                        "create nothing, boot nothing (root, tools and cgroups are reported, not required)")
    q.set_defaults(func=cmd_run)

    q = lsub.add_parser("calibrate", help="measure one capped broker's capacity on this host, and the scenario's overload ratio")
    t, o = knobs(q)
    t.add_argument("--broker-cpuset", default="auto", metavar="CPUS", help="as for lab run (default auto)")
    o.add_argument("--json", action="store_true", help="print the calibration as JSON")
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(func=cmd_calibrate)

    q = lsub.add_parser("up", help="bring the lab up and leave it running")
    knobs(q)
    q.set_defaults(func=cmd_up)

    q = lsub.add_parser("status", help="labs that are up, and anything a killed run left")
    q.add_argument("--json", action="store_true", help="print the labs as JSON")
    q.set_defaults(func=cmd_status)

    q = lsub.add_parser("down", help="remove a lab (or all labs), including what a killed run left; idempotent")
    q.add_argument("--id", type=lab_id, help="lab id (default: every lab)")
    q.add_argument("--json", action="store_true", help="print what was removed as JSON")
    q.set_defaults(func=cmd_down)
