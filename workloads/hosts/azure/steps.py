"""The VM steps as data: each ``mqttlab host`` step's name, options and help, read by its parser
(:mod:`workloads.hosts.azure.cli`) and by the Pulumi program (``infra/components.py``), which builds
every remote command line with :func:`line`. A step's command line is written once, here, and
an option the step does not take is refused when the program is built, not on the VM.

It imports only the schema, so the Pulumi program reads it without the VM's dependencies.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from workloads.describe.schema import LOAD_GENERATORS

REMOTE_ROOT = "/opt/mqttlab"  # the bundle, its source and its venv on every VM
PROJECT_DIR = f"{REMOTE_ROOT}/src"
MQTTLAB = f"{REMOTE_ROOT}/.venv/bin/mqttlab"
RUNS = "/var/lib/mqttlab/runs"
LEAD_S = 30.0  # from bench-start to the agreed start: time for Pulumi to start every publisher and fault step


@dataclass(frozen=True)
class Option:
    flag: str  # "--start-at"
    kwargs: dict[str, Any] = field(default_factory=dict)  # argparse.add_argument's, as the parser takes them

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    stack: bool = True  # -s STACK and --project-dir
    run: bool = False  # --run-id, --runs and --load-generator: a step of one benchmark run
    host: bool = False  # --host: this VM's host name in the plan (required)
    options: tuple[Option, ...] = ()

    def option(self, dest: str) -> Option:
        for o in self.options:
            if o.dest == dest:
                return o
        raise ValueError(f"step {self.name} has no option --{dest.replace('_', '-')}; it takes "
                         f"{', '.join(o.flag for o in self.options) or 'none beyond the common ones'}")


def _start_at(required: bool, help: str = "the agreed start (epoch) from bench-start") -> Option:
    return Option("--start-at", {"type": float, "required": required, "help": help})


_URL = Option("--url", {"required": True, "help": "results container URL"})
_CA = Option("--ca-file", {"help": argparse.SUPPRESS})  # a CA bundle to trust instead of the system's (an emulator)

STEPS: tuple[Step, ...] = (
    Step("security-install", "store the run's passwords and certificates, read from stdin"),
    Step("brokers-up", "render and start the broker containers, wait until each answers",
         options=(Option("--parent", {"default": "eth0", "help": "the NIC the ipvlan network hangs off"}),)),
    Step("probe-brokers", "from this (balancer) host, check every broker answers MQTT", host=True),
    Step("brokers-down", "stop the broker containers", stack=False, options=(Option("--project-dir"),)),
    Step("balancer-apply", "apply this host's IPVS rules, timeouts, iptables and sysctls (if the plan has a balancer here)", host=True),
    Step("balancer-clear", "remove IPVS services and the SNAT rules", stack=False),
    Step("monitors-start", "start this host's monitors in the background", run=True,
         options=(Option("--role", {"choices": ("brokers", "balancer"), "required": True}), Option("--host", {"default": "brokers"}))),
    Step("bench-subs", "start this host's subscribers and wait until they are ready", run=True, host=True),
    Step("bench-start", "print the epoch every host's publishers and faults start at",
         options=(Option("--lead", {"type": float, "default": LEAD_S, "help": "seconds from now"}),)),
    Step("bench-pubs", "run this host's publishers to the end", run=True, host=True, options=(_start_at(False),)),
    Step("faults-start", "start this host's share of mqttlab:faults, timed from the agreed start", run=True, host=True,
         options=(_start_at(True),)),
    Step("faults-run", "the fault process itself (started by faults-start, stopped by collect)", run=True, host=True,
         options=(_start_at(True, "the agreed start (epoch)"), Option("--until", {"type": float, "required": True, "help": "stop by itself at this epoch"}))),
    Step("bench-finish", "drain, stop the subscribers", run=True, host=True),
    Step("collect", "stop monitors, gather logs and tables, upload the run directory", run=True, host=True, options=(_URL, _CA)),
    Step("verdict", "after every upload: fail if any host recorded a failed step", run=True, host=True, options=(_URL, _CA)),
)
BY_NAME = {s.name: s for s in STEPS}


def _text(value: Any) -> str:
    """An option's value on a command line: a float to the millisecond at most, no exponent."""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def argv(name: str, stack: str, *, host: str | None = None, run_id: str | None = None, load_generator: str | None = None,
         project_dir: str = PROJECT_DIR, runs: str = RUNS, **options: Any) -> list[str]:
    """``host NAME ...``: the arguments of step ``name`` after the program (``mqttlab``). Anything
    the step does not take raises ``ValueError``."""
    step = BY_NAME[name]
    out = ["host", name]
    takes_host = step.host or any(o.flag == "--host" for o in step.options)  # required, or an option (monitors-start)
    if (host is None and step.host) or (host is not None and not takes_host):
        raise ValueError(f"step {name} {'needs' if step.host else 'takes no'} --host")
    if host is not None:
        out += ["--host", host]
    for dest, value in options.items():
        out += [step.option(dest).flag, _text(value)]
    if step.run != (run_id is not None):
        raise ValueError(f"step {name} {'needs' if step.run else 'takes no'} --run-id")
    if load_generator is not None:
        if not step.run or load_generator not in LOAD_GENERATORS:
            raise ValueError(f"step {name}: --load-generator {load_generator} (choices {', '.join(LOAD_GENERATORS)}, run steps only)")
        out += ["--load-generator", load_generator]
    if step.stack:
        out += ["-s", stack, "--project-dir", project_dir]
    if run_id is not None:
        out += ["--run-id", run_id, "--runs", runs]
    return out


def line(name: str, stack: str, timeout: int | float, *, last: str | None = None, **kwargs: Any) -> str:
    """The shell line a remote command runs for step ``name``: ``sudo timeout T mqttlab host NAME
    ...`` (:func:`argv`). ``last`` names the one option whose value the caller appends (a Pulumi
    output known only at deploy time: the agreed start, the container URL); the line then ends
    with its flag and a space."""
    text = " ".join(["sudo", "timeout", _text(timeout), MQTTLAB, *argv(name, stack, **kwargs)])
    return text + f" {BY_NAME[name].option(last).flag} " if last is not None else text
