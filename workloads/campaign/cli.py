"""``mqttlab campaign``: run a matrix of points, search capacities, report with statistics."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from workloads.base import procs
from workloads.base.clipaths import in_dir, out_dir
from workloads.base.errors import LabError
from workloads.campaign.run import CampaignDir
from workloads.campaign.spec import Campaign, CampaignError, Point, load_campaign
from workloads.describe.cliargs import project_dir


def _load(args: argparse.Namespace) -> Campaign:
    return load_campaign(Path(args.file), project_dir(args.project_dir))


def _runner(campaign: Campaign, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if campaign.place == "azure":
        from workloads.campaign.azure import azure_runner

        return azure_runner(campaign)
    from workloads.campaign.run import lab_runner

    return lab_runner(campaign, progress=args.verbose, calibrate=getattr(args, "calibrate", False))


def cmd_run(args: argparse.Namespace) -> int:
    from workloads.campaign.run import CampaignDir, execute_points, fmt_s, retake_invalid
    from workloads.describe.runsize import VM_BOOT_S
    from workloads.hosts.lab import vm

    campaign = _load(args)
    out = out_dir(args.out, "--out")
    order = campaign.order()
    if args.time_budget is not None and args.time_budget <= 0:
        raise CampaignError(f"--time-budget {args.time_budget}: must be a positive number of minutes")
    # a campaign in the micro-VM boots it once for all its points (a boot costs more than a small point)
    boot_once = campaign.vm and campaign.place == "lab"
    if args.dry_run:
        total = VM_BOOT_S if boot_once else 0.0
        names = list(campaign.factors)
        print(f"campaign {campaign.name}: {len(order)} points ({len(campaign.configurations())} configurations x {campaign.repetitions} "
              f"repetitions), stack {campaign.stack}, {campaign.place}, seed {campaign.seed}"
              + (", in one micro-VM boot" if boot_once else ""))
        print("  order  point" + "".join(f"  {n}" for n in names))
        for i, p in enumerate(order, 1):
            cfg = campaign.validate_point(p.overrides, f"point {p.point_id}")
            total += campaign.estimate_s(cfg, own_boot=not boot_once)
            print(f"  {i:5d}  {p.point_id}" + "".join(f"  {p.levels[n]}" for n in names))
        print(f"estimated time: {fmt_s(total)}")
        return 0
    for p in order:  # every point refused now rather than half-way (and before a VM boots)
        campaign.validate_point(p.overrides, f"point {p.point_id}")
    if campaign.place == "lab":
        from workloads.hosts.lab import netns

        netns.require_root()
    runner = _runner(campaign, args)  # refuses a missing prerequisite before the directory exists
    if boot_once and not vm.in_guest() and (reason := vm.unavailable_reason()):
        raise LabError(f"vm: true needs the micro-VM: missing {reason}")
    cdir = CampaignDir(out)
    order = cdir.open(campaign, order)
    if getattr(args, "retake_invalid", False) and (again := retake_invalid(cdir, order)):
        print(f"[campaign {campaign.name}] retaking {len(again)} invalid point(s): {', '.join(again)} "
              "(their records are kept under points/<id>/invalid/)", file=sys.stderr, flush=True)
    # SIGTERM and SIGHUP (timeout, a scheduler) stop the point as Ctrl-C does: main_guard
    if boot_once and not vm.in_guest():
        rc = in_vm(args, campaign, cdir, order)
        print(f"report: {write_report(cdir.path)}")  # here: matplotlib under the guest's emulation takes minutes
        return rc
    deadline = None
    if args.time_budget is not None:
        deadline = time.time() + args.time_budget * 60 - (VM_BOOT_S if vm.in_guest() else 0.0)
    outcome = execute_points(cdir, campaign, order, runner, progress=not args.quiet, deadline=deadline, own_boot=not boot_once)
    complete = len(outcome.done) + len(outcome.ran)
    if args.json:
        report = write_report(cdir.path) if not vm.in_guest() else None
        results = [r for p in order if (r := cdir.result(p.point_id))]
        print(json.dumps({"campaign": campaign.name, "dir": str(cdir.path), "points": len(order), "complete": complete, "ran": outcome.ran,
                          "done_before": outcome.done, "failed": outcome.failed, "skipped": outcome.skipped,
                          "valid": sum(1 for r in results if r.get("verdict") == "valid"),
                          "invalid": sorted(r["point_id"] for r in results if r.get("verdict") == "invalid"), "report": report},
                         indent=2, allow_nan=False))
        return 1 if outcome.failed else 0
    print(f"campaign {campaign.name}: {complete} of {len(order)} points complete "
          f"({len(outcome.ran)} run now, {len(outcome.done)} before), {len(outcome.failed)} failed"
          + (f", {len(outcome.skipped)} left for the next invocation (time budget)" if outcome.skipped else ""))
    for pid, why in outcome.failed.items():
        print(f"  failed {pid}: {why}")
    if outcome.failed or outcome.skipped:
        print("  run the same command again to " + ("retry the failed points" if outcome.failed else "go on"))
    if not vm.in_guest():
        print(f"report: {write_report(cdir.path)}")
    return 1 if outcome.failed else 0


def write_report(path: Path) -> str:
    from workloads.campaign.report import write_campaign_report

    return str(write_campaign_report(path)["html"])


def in_vm(args: argparse.Namespace, campaign: Campaign, cdir: CampaignDir, order: list[Point]) -> int:
    """The whole campaign inside one micro-VM boot: this very command again in the guest, which
    runs its points as local lab runs with the kernel's IPVS. The campaign directory is written
    through, so resume, results and report are the same as on the host; the guest's progress is
    shown here as it comes."""
    from workloads.campaign.run import fmt_s
    from workloads.describe.runsize import VM_BOOT_S
    from workloads.hosts.lab import vm

    left = [p for p in order if cdir.result(p.point_id) is None]
    est = VM_BOOT_S + sum(campaign.estimate_s(campaign.validate_point(p.overrides, p.point_id), own_boot=False) for p in left)
    if args.time_budget is not None:
        est = min(est, args.time_budget * 60)
    log = cdir.path / "vm-progress.log"
    print(f"[campaign {campaign.name}] booting the micro-VM once for {len(left)} points (about {fmt_s(est)})", file=sys.stderr, flush=True)
    # bounded by the estimate, and past it for as long as the guest still works (vm.run_in_vm)
    cp = vm.run_in_vm(vm.guest_command(sys.argv[1:], log), [cdir.path], timeout=max(est * 1.5, 600), echo=log)
    sys.stdout.write(cp.stdout)
    if cp.returncode != 0:
        sys.stderr.write(cp.stderr[-5000:])
    return cp.returncode


def cmd_capacity(args: argparse.Namespace) -> int:
    from workloads.campaign.capacity import run_capacity, settings

    campaign = _load(args)
    out = out_dir(args.out, "--out")
    s = settings(campaign)
    if args.dry_run:
        print(f"capacity search {campaign.name}: {len(campaign.configurations())} configurations; start {s['startRate']} msg/s, "
              f"between {s['minRate']} and {s['maxRate']}, loss threshold {s['thresholdPct']} %, {s['repetitions']} repetitions per step, "
              f"{s['durationS']} s of publishing per step, stop at {s['resolution'] * 100:.0f} % bracket width or {s['maxSteps']} steps")
        return 0
    if campaign.place == "lab":
        from workloads.hosts.lab import netns

        netns.require_root()
    runner = _runner(campaign, args)
    results = run_capacity(campaign, out, runner, progress=not args.quiet)
    from workloads.campaign.report import write_campaign_report

    rep = write_campaign_report(out)
    if args.json:
        print(json.dumps({"campaign": campaign.name, "dir": str(out), "capacity": results, "report": str(rep["html"])}, indent=2,
                         default=str, allow_nan=False))
        return 0
    for cid, r in results.items():
        print(f"{cid}: capacity {r['text']}")
    print(f"report: {rep['html']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from workloads.campaign.report import write_campaign_report

    rep = write_campaign_report(in_dir(args.dir, "DIR"), out_dir(args.out, "--out") if args.out else None)
    if args.json:
        print(json.dumps(rep, indent=2, default=str, allow_nan=False))
        return 0
    print("\n".join(rep["comparisons"]))
    print(f"report: {rep['html']}")
    return 0


def cmd_keep(args: argparse.Namespace) -> int:
    from workloads.campaign.run import keep_records

    src = in_dir(args.dir, "DIR")
    n = keep_records(src, out_dir(args.to, "--to"))
    print(f"kept {n['points']} points ({n['runs']} with their run's manifest and counters) in {args.to}; "
          f"mqttlab campaign report {args.to} re-derives the report")
    return 0


def main_guard(func):  # type: ignore[no-untyped-def]
    """SIGTERM and SIGHUP (``timeout``, a closed terminal)
    unwind like Ctrl-C, so the running point is stopped and tears its lab down instead of being
    left running in its own session when the campaign's process dies."""
    def run(args: argparse.Namespace) -> int:
        with procs.stop_signals_raise():  # a CampaignError is reported by workloads.cli (status 2)
            return int(func(args))
    return run


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("campaign", help="a matrix of lab or Azure runs, capacity searches, and their statistics")
    csub = p.add_subparsers(dest="campaign", required=True)
    for name, func, helptext in (("run", cmd_run, "run every point of a campaign file (resumable)"),
                                 ("capacity", cmd_capacity, "per configuration, the highest offered rate with loss at most a threshold")):
        q = csub.add_parser(name, help=helptext)
        q.add_argument("file", help="campaign file (YAML)")
        q.add_argument("--out", required=True, help="campaign directory; run the same command again to resume")
        q.add_argument("--project-dir", help="folder holding the stack files (default: here or the repository)")
        q.add_argument("--dry-run", action="store_true", help="print the matrix and the estimated time; run nothing")
        q.add_argument("--quiet", action="store_true", help="no progress lines")
        q.add_argument("--verbose", action="store_true", help="each point's own lab progress too")
        q.add_argument("--json", action="store_true", help="print the outcome (points, verdicts, report) as JSON on stdout")
        if name == "run":
            q.add_argument("--time-budget", type=float, metavar="MIN",
                           help="start no point that would end after MIN minutes; the next invocation resumes with the rest")
            q.add_argument("--calibrate", action="store_true",
                           help="measure each configuration's broker capacity once (calibration.json) and state every point's load "
                                "as its overload ratio")
            q.add_argument("--retake-invalid", action="store_true",
                           help="run again every point whose fidelity verdict was invalid (the old record is kept beside)")
        q.set_defaults(func=main_guard(func))
    q = csub.add_parser("keep", help="copy a campaign's records (results, manifests, counters; no raw deliveries) where its report "
                                     "can be re-derived, e.g. into the repository")
    q.add_argument("dir", help="a campaign directory, as campaign run --out made it")
    q.add_argument("--to", required=True, help="the folder the records go to (created; files of the same name are replaced)")
    q.set_defaults(func=main_guard(cmd_keep))
    q = csub.add_parser("report", help="(re)write a campaign directory's report")
    q.add_argument("dir", help="a campaign directory, as campaign run --out made it")
    q.add_argument("--out", help="default DIR/report")
    q.add_argument("--json", action="store_true", help="print what the report found (comparisons, files) as JSON")
    q.set_defaults(func=main_guard(cmd_report))
