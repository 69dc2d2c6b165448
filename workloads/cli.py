"""``mqttlab``: the one entry point that Azure's remote commands and the local lab both call."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from workloads import procs
from workloads.cliargs import add_stack_args, load
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
