"""``mqttlab report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from workloads.analysis.load import load_run
    from workloads.analysis.report import write_report
    from workloads.base.numbers import dumps, shown
    from workloads.rundir.records import RunDirError

    try:
        runs = [load_run(Path(p)) for p in args.run_dirs]
    except RunDirError as exc:
        print(f"mqttlab: {exc}", file=sys.stderr)
        return 2
    result = write_report(runs, Path(args.out))
    fields = ("run_id", "partial", "topology", "balancer", "scheduler", "stands_in_for", "requested_balancer", "requested_scheduler", "qos",
              "sent", "offered_rate", "expected", "delivered", "lost", "loss_pct", "duplicates", "out_of_order", "latency_ms", "connections_per_broker", "fairness", "loss_by_broker")
    if args.json:
        print(dumps([{k: s[k] for k in fields} for s in result["summaries"]]), end="")
    else:
        for s in result["summaries"]:
            flag = " PARTIAL" if s["partial"] else ""
            print(f"{s['run_id']}{flag}: loss {shown(s['loss_pct'], 'pct')} % ({s['lost']}/{s['expected']}), dup {s['duplicates']}, "
                  f"p99 {shown(s['latency_ms']['p99'], 'latency_ms')} ms, fairness {shown(s['fairness'], 'fairness')}"
                  + (" (load generator saturated)" if s.get("bench_saturated") else ""))
        print(f"report: {result['html']}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="analyse run directories: tables (CSV, JSON), plots, one HTML report")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="one or more run directories (runs/<run-id>/, as lab run, bench run or results fetch wrote them)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the report: report.html, runs.csv, comparison.csv, summary.json and the figures (made if absent)")
    p.add_argument("--json", action="store_true", help="print the per-run summary as JSON")
    p.set_defaults(func=cmd_report)
