"""Command-line pieces shared by ``mqttlab`` and its subcommand modules.

They live here, not in :mod:`workloads.cli`, so the subcommand modules can import them at the
top without importing the entry point that imports them (no import circle).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workloads.config import ConfigError, ExperimentConfig, load_stack
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
    "keepalive": int, "drainS": float, "timeLimitS": float, "reconnectMinMs": int, "reconnectMaxMs": int,
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
