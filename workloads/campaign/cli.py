"""``mqttlab campaign``: run a matrix of points, search capacities, report with statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workloads import procs
from workloads.campaign.spec import Campaign, CampaignError, load_campaign
from workloads.cliargs import project_dir


def _load(args: argparse.Namespace) -> Campaign:
    return load_campaign(Path(args.file), project_dir(args.project_dir))


def _runner(campaign: Campaign, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if campaign.place == "azure":
        from workloads.campaign.azure import azure_runner

        return azure_runner(campaign)
    from workloads.campaign.run import lab_runner

    return lab_runner(campaign, progress=args.verbose)


def cmd_run(args: argparse.Namespace) -> int:
    from workloads.campaign.run import CampaignDir, execute_points, fmt_s

    campaign = _load(args)
    order = campaign.order()
    if args.dry_run:
        total = 0.0
        names = list(campaign.factors)
        print(f"campaign {campaign.name}: {len(order)} points ({len(campaign.configurations())} configurations x {campaign.repetitions} "
              f"repetitions), stack {campaign.stack}, {campaign.place}, seed {campaign.seed}")
        print("  order  point" + "".join(f"  {n}" for n in names))
        for i, p in enumerate(order, 1):
            cfg = campaign.validate_point(p.overrides, f"point {p.point_id}")
            total += campaign.estimate_s(cfg)
            print(f"  {i:5d}  {p.point_id}" + "".join(f"  {p.levels[n]}" for n in names))
        print(f"estimated time: {fmt_s(total)}")
        return 0
    if campaign.place == "lab" and not args.dry_run:
        from workloads.lab import netns

        netns.require_root()
    runner = _runner(campaign, args)  # refuses a missing prerequisite before the directory exists
    cdir = CampaignDir(Path(args.out))
    order = cdir.open(campaign, order)
    outcome = execute_points(cdir, campaign, order, runner, progress=not args.quiet)
    from workloads.campaign.report import write_campaign_report

    rep = write_campaign_report(cdir.path)
    print(f"campaign {campaign.name}: {len(outcome.done) + len(outcome.ran)} of {len(order)} points complete "
          f"({len(outcome.ran)} run now, {len(outcome.done)} before), {len(outcome.failed)} failed")
    for pid, why in outcome.failed.items():
        print(f"  failed {pid}: {why}")
    if outcome.failed:
        print("  run the same command again to retry the failed points")
    print(f"report: {rep['html']}")
    return 1 if outcome.failed else 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from workloads.campaign.capacity import run_capacity, settings

    campaign = _load(args)
    s = settings(campaign)
    if args.dry_run:
        print(f"capacity search {campaign.name}: {len(campaign.configurations())} configurations; start {s['startRate']} msg/s, "
              f"between {s['minRate']} and {s['maxRate']}, loss threshold {s['thresholdPct']} %, {s['repetitions']} repetitions per step, "
              f"{s['durationS']} s of publishing per step, stop at {s['resolution'] * 100:.0f} % bracket width or {s['maxSteps']} steps")
        return 0
    if campaign.place == "lab":
        from workloads.lab import netns

        netns.require_root()
    runner = _runner(campaign, args)
    results = run_capacity(campaign, Path(args.out), runner, progress=not args.quiet)
    from workloads.campaign.report import write_campaign_report

    rep = write_campaign_report(Path(args.out))
    for cid, r in results.items():
        print(f"{cid}: capacity {r['text']}")
    print(f"report: {rep['html']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from workloads.campaign.report import write_campaign_report

    rep = write_campaign_report(Path(args.dir), Path(args.out) if args.out else None)
    print("\n".join(rep["comparisons"]))
    print(f"report: {rep['html']}")
    return 0


def main_guard(func):  # type: ignore[no-untyped-def]
    """Bad campaign files become a message; SIGTERM and SIGHUP (``timeout``, a closed terminal)
    unwind like Ctrl-C, so the running point is stopped and tears its lab down instead of being
    left running in its own session when the campaign's process dies."""
    def run(args: argparse.Namespace) -> int:
        try:
            with procs.stop_signals_raise():
                return int(func(args))
        except CampaignError as exc:
            print(f"mqttlab campaign: {exc}", file=sys.stderr)
            return 2
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
        q.set_defaults(func=main_guard(func))
    q = csub.add_parser("report", help="(re)write a campaign directory's report")
    q.add_argument("dir")
    q.add_argument("--out", help="default DIR/report")
    q.set_defaults(func=main_guard(cmd_report))
