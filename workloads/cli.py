"""``mqttlab``: the one entry point that Azure's remote commands and the local lab both call."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workloads.config import ConfigError, ExperimentConfig, load_stack
from workloads.lab.netns import LabError
from workloads.scenario import FIELDS

REPO_ROOT = Path(__file__).resolve().parent.parent


def project_dir(arg: str | None) -> Path:
    """Stack files live beside Pulumi.yaml: the working directory if it has one, else this repo."""
    if arg:
        return Path(arg)
    cwd = Path.cwd()
    return cwd if (cwd / "Pulumi.yaml").is_file() else REPO_ROOT


def add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    p.add_argument("--project-dir", help="folder holding Pulumi.<stack>.yaml (default: here or the repository)")


SCENARIO_TYPES: dict[str, Callable[[str], Any]] = {
    "publishers": int, "subscribers": int, "messages": int, "qos": int, "intervalMs": int,
    "payloadBytes": int, "mqttVersion": str, "topicLayout": str, "topic": str, "connectRate": int,
    "keepalive": int, "drainS": float, "timeLimitS": float,
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """The scenario options, spelled the same in every subcommand."""
    g = p.add_argument_group("scenario (defaults from the stack file, or the reference)")
    for key, (attr, opt, _default) in FIELDS.items():
        typ = SCENARIO_TYPES.get(key, _bool)
        g.add_argument(opt, dest=f"scenario_{key}", type=typ, default=None, metavar=attr.upper())


def scenario_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f"scenario.{k}": getattr(args, f"scenario_{k}") for k in FIELDS if getattr(args, f"scenario_{k}", None) is not None}


# config key -> the command-line option that overrides it, so errors name what the user typed
OPTION_OF = {f"mqttlab:scenario.{k}": opt for k, (_a, opt, _d) in FIELDS.items()} | {
    "mqttlab:topology": "--topology", "mqttlab:balancer.scheduler": "--scheduler",
    "mqttlab:brokers.cpus": "--broker-cpus", "mqttlab:brokers.memoryMb": "--broker-memory-mb",
    "mqttlab:security.mode": "--security",
}


def load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    cfg = load_stack(args.stack, project_dir(args.project_dir))
    if not overrides:
        return cfg
    try:
        return cfg.with_overrides(overrides)
    except ConfigError as exc:
        given = {f"mqttlab:{k}" for k in overrides}
        if exc.key in given and exc.key in OPTION_OF:
            raise ConfigError(OPTION_OF[exc.key], exc.value, exc.allowed) from None
        raise


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


def build_parser() -> argparse.ArgumentParser:
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

    from workloads import monitor
    from workloads.bench import cli as bench_cli

    monitor.add_parser(sub)
    bench_cli.add_parser(sub, add_scenario_args)
    from workloads.lab import cli as lab_cli

    lab_cli.add_parser(sub, add_stack_args, add_scenario_args)
    from workloads import hostcmd

    hostcmd.add_parser(sub, add_stack_args)
    from workloads.analysis import cli as analysis_cli

    analysis_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mqttlab: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"mqttlab: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("mqttlab: interrupted; everything it started was torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
