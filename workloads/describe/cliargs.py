"""Command-line pieces shared by ``mqttlab`` and its subcommand modules.

They live here, not in :mod:`workloads.cli`, so the subcommand modules can import them at the
top without importing the entry point that imports them (no import circle).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from workloads.describe.config import ConfigError, ExperimentConfig, load_stack
from workloads.describe.scenario import FIELDS
from workloads.describe.schema import SCENARIO

REPO_ROOT = Path(__file__).resolve().parents[2]


def project_dir(arg: str | None) -> Path:
    """Stack files live beside Pulumi.yaml: the working directory if it has one, else this repo."""
    if arg:
        return Path(arg)
    cwd = Path.cwd()
    return cwd if (cwd / "Pulumi.yaml").is_file() else REPO_ROOT


def add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    p.add_argument("--project-dir", help="folder holding Pulumi.<stack>.yaml (default: here or the repository)")


def set_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``; the value read as YAML (``[3, 2, 1]``, ``0.5``, ``rr``)."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as balancer.scheduler=rr, got {text!r}")
    return key, yaml.safe_load(value) if value else None


def add_set_arg(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--set", action="append", type=set_value, metavar="KEY=VALUE",
                   help="override a stack key, as a campaign's set does: balancer.scheduler=rr, brokers.cpus=0.5, "
                        "links.bridge.delayMs=50 (repeatable)")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# emqtt-bench's own letters, where they mean the same here and clash with nothing. Not -c: its
# client count is per pub or sub command, while a scenario has publishers and subscribers.
SHORT_OPTIONS = {"intervalMs": "-I", "qos": "-q", "topic": "-t"}
METAVARS = {"integer": "N", "number": "X", "string": "TEXT", "boolean": "BOOL"}


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """The scenario options, spelled the same in every subcommand, each with its unit and default
    from the schema (the one table of every key)."""
    g = p.add_argument_group("scenario", "what the clients do; unset options take the stack file's values (-s), else the default shown")
    types: dict[str, Callable[[str], Any]] = {"integer": int, "number": float, "string": str, "boolean": _bool}
    for key in SCENARIO.keys:
        _attr, opt, default = FIELDS[key.name]
        unit = f" {key.unit}" if key.unit else ""
        shown = str(default).lower() if isinstance(default, bool) else default
        names = [SHORT_OPTIONS[key.name], opt] if key.name in SHORT_OPTIONS else [opt]
        g.add_argument(*names, dest=f"scenario_{key.name}", type=types[key.type], default=None, metavar=METAVARS[key.type],
                       help=f"{key.doc} (default {shown}{unit})")


def scenario_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f"scenario.{k}": getattr(args, f"scenario_{k}") for k in FIELDS if getattr(args, f"scenario_{k}", None) is not None}


# config key -> the command-line option that overrides it, so errors name what the user typed
OPTION_OF = {f"mqttlab:scenario.{k}": opt for k, (_a, opt, _d) in FIELDS.items()} | {
    "mqttlab:topology": "--topology", "mqttlab:balancer.scheduler": "--scheduler",
    "mqttlab:brokers.cpus": "--broker-cpus", "mqttlab:brokers.memoryMb": "--broker-memory-mb",
    "mqttlab:security.mode": "--security",
} | {f"mqttlab:balancer.healthCheck.{k}": f"--health-{'check' if k == 'type' else k}" for k in ("type", "interval", "retries", "timeout")}


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
