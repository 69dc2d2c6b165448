"""``mqttlab``: the one entry point that Azure's remote commands and the local lab both call."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from workloads import procs
from workloads.cliargs import add_scenario_args, add_stack_args, load, scenario_overrides
from workloads.config import ConfigError
from workloads.lab.netns import LabError

# --------------------------------------------------------------------------- render


def cmd_render(args: argparse.Namespace) -> int:
    from workloads.plan import build_plan, renumber
    from workloads.render import render_files, write_files

    cfg = load(args)
    if args.lab_addresses:
        cfg = renumber(cfg)
    plan = build_plan(cfg)
    out = Path(args.out)
    written = write_files(render_files(plan, cfg), out)
    for path in written:
        print(path)
    print(f"{len(written)} files for stack {cfg.stack} ({plan.topology}) in {out}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from workloads.plan import build_plan

    print(json.dumps(build_plan(load(args)).to_dict(), indent=2))
    return 0


def _set_value(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as balancer.scheduler=rr, got {text!r}")
    return key, yaml.safe_load(value) if value else None


def cmd_config_show(args: argparse.Namespace) -> int:
    from workloads.plan import renumber
    from workloads.schema import effective

    overrides = dict(args.set or []) | scenario_overrides(args)
    cfg = load(args, overrides)
    shown = effective(renumber(cfg) if args.lab_addresses else cfg, cfg.raw)
    if args.json:
        print(json.dumps({"stack": cfg.stack, "config": shown}, indent=2))
    else:
        print(f"# stack {cfg.stack}: the configuration that runs, every default filled in")
        print(yaml.safe_dump({"config": shown}, sort_keys=False, default_flow_style=False), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from workloads import schema
    from workloads.campaign.spec import ALIASES

    if args.markdown:
        print(schema.markdown_reference(schema.CAMPAIGN, "") if args.campaign else schema.markdown_reference())
    else:
        doc = schema.campaign_json_schema(ALIASES) if args.campaign else schema.stack_json_schema()
        print(json.dumps(doc, indent=2))
    return 0


# --------------------------------------------------------------------------- parser


# the modules that add each command's parser: a command loads only its own (a bench process
# starts without importing the lab, Azure host steps, reports or campaigns)
COMMANDS = {"monitor": "monitor", "bench": "bench", "lab": "lab", "host": "hostcmd", "results": "hostcmd", "report": "analysis",
            "campaign": "campaign"}


SUBCOMMAND_MODULES = (("monitor", "workloads.monitor"), ("bench", "workloads.bench.cli"), ("lab", "workloads.lab.cli"),
                      ("hostcmd", "workloads.hostcmd"), ("analysis", "workloads.analysis.cli"), ("campaign", "workloads.campaign.cli"))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or with ``command`` one of ``COMMANDS`` only that one's (an unknown
    or absent command gets them all, so argparse's usage lists them)."""
    parser = argparse.ArgumentParser(prog="mqttlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="write every rendered file of a stack, per host, plus plan.json")
    add_stack_args(p)
    p.add_argument("--out", required=True, help="output folder; files go to OUT/<host>/...")
    p.add_argument("--lab-addresses", action="store_true", help="renumber into 198.18.0.0/15 as the local lab does")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("plan", help="print the topology plan of a stack as JSON")
    add_stack_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("config", help="the configuration a stack runs")
    csub = p.add_subparsers(dest="config", required=True)
    q = csub.add_parser("show", help="the effective configuration of a stack, every default filled in (YAML, or --json)")
    add_stack_args(q)
    q.add_argument("--set", action="append", type=_set_value, metavar="KEY=VALUE",
                   help="override a stack key, as a campaign's set does: balancer.scheduler=rr, brokers.cpus=0.5 (repeatable)")
    q.add_argument("--lab-addresses", action="store_true", help="the addresses as the local lab moves them into 198.18.0.0/15")
    q.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    add_scenario_args(q)
    q.set_defaults(func=cmd_config_show)

    p = sub.add_parser("schema", help="the JSON Schema of stack files (or campaign files), for editors; or the reference as Markdown")
    p.add_argument("--campaign", action="store_true", help="campaign files instead of stack files")
    p.add_argument("--markdown", action="store_true", help="every key as Markdown tables (docs/configuration.md) instead of JSON Schema")
    p.set_defaults(func=cmd_schema)

    want = {COMMANDS[command]} if command in COMMANDS else set(COMMANDS.values())
    # each subcommand's module is imported only when it is the one asked for (start-up cost)
    for key, module in SUBCOMMAND_MODULES:
        if key in want:
            importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mqttlab: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"mqttlab: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP where a command turns them into procs.Stopped
        print("mqttlab: interrupted; everything it started was torn down", file=sys.stderr)
        return procs.exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
