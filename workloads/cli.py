"""``mqttlab``: the one entry point that Azure's remote commands and the local lab both call."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from workloads.base import procs
from workloads.base.clipaths import out_dir
from workloads.describe.cliargs import add_scenario_args, add_set_arg, add_stack_args, load, scenario_overrides, set_value

# the top-level help, for the people who run experiments; each command's own --help says more
DESCRIPTION = """MQTT broker clusters behind Linux L4 load balancers (IPVS): the experiment on this machine, in
network namespaces (the local lab), or on Azure through the Pulumi program (pulumi up -s STACK).
A stack file, Pulumi.<stack>.yaml, describes the experiment for both.

  mqttlab lab run -s distributed --publishers 40 --subscribers 40 --messages 4000
  mqttlab lab run -s distributed --dry-run        what would run, how big, how long; nothing created
  mqttlab report runs/<run-id> --out report       tables, figures and one HTML page"""

# the commands in the order and groups the top-level help lists them
COMMAND_GROUPS = (
    ("run the experiment", ("lab", "campaign", "report", "bench")),
    ("describe it", ("config", "schema", "render", "plan")),
    ("check the Azure program without Azure", ("rehearse",)),
    ("steps on the Azure VMs (the Pulumi program's remote commands run these; not for use by hand)", ("host", "results", "monitor")),
)


# --------------------------------------------------------------------------- rehearse


def project_root(start: Path) -> Path | None:
    """The checkout holding the Pulumi program (``__main__.py``, ``infra/``): the rehearsal runs
    the program itself, which is not part of the installed package."""
    for d in (start, *start.parents):
        if (d / "__main__.py").is_file() and (d / "infra" / "rehearse" / "__main__.py").is_file():
            return d
    return None


def add_rehearse_args(p: argparse.ArgumentParser) -> None:
    """The rehearsal's options, read by ``mqttlab rehearse`` and by ``python -m infra.rehearse``."""
    p.add_argument("-s", "--stack", required=True, help="the stack to rehearse (Pulumi.STACK.yaml)")
    p.add_argument("--run-id", help="the stack's mqttlab:runId for the first update (default: the stack file's)")
    p.add_argument("--again", action="store_true", help="then a second update with the same configuration (runs no unchanged step)")
    p.add_argument("--new-run-id", help="then an update with this runId (reruns the benchmark's steps)")
    p.add_argument("--continue-on-error", action="store_true", help="as pulumi up --continue-on-error: a failure stops only what waits for it")
    p.add_argument("--failures", action="store_true",
                   help="then rehearse failures, one update each: a broker that does not come up, publishers that fail")
    p.add_argument("--dir", type=Path, help="where the rehearsal keeps its state and log (default .rehearsal/STACK)")
    p.add_argument("--work", type=Path, default=Path("/dev/shm/mqttlab-rehearsal"), help="the hosts' private roots (a tmpfs)")
    p.add_argument("--vm", choices=("auto", "always", "never"), default="auto",
                   help="run the hosts in the micro-VM (a stock kernel with IPVS and ipvlan): auto when this kernel lacks either")
    p.add_argument("--set", action="append", type=set_value, metavar="KEY=VALUE",
                   help="change a stack key for this rehearsal, as `pulumi config set --path mqttlab:KEY VALUE` would: "
                        "scenario.publishers=6 (repeatable; the log names each)")


def rehearse_argv(args: argparse.Namespace) -> list[str]:
    """The options :func:`add_rehearse_args` read, as a command line again (less ``--vm``): one
    reading of the user's, passed on to the rehearsal and from it into the micro-VM."""
    argv = ["-s", args.stack, "--work", str(args.work)]
    for key, value in args.set or []:
        argv += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: read back as the same value
    for flag, value in (("--run-id", args.run_id), ("--new-run-id", args.new_run_id), ("--dir", args.dir)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + [flag for flag, on in (("--again", args.again), ("--continue-on-error", args.continue_on_error), ("--failures", args.failures))
                   if on]


def cmd_rehearse(args: argparse.Namespace) -> int:
    root = project_root(Path.cwd().resolve())
    if root is None:
        print("mqttlab rehearse: run it inside the project's checkout (the folder with Pulumi.yaml and infra/)", file=sys.stderr)
        return 2
    os.chdir(root)
    os.execv(sys.executable, [sys.executable, "-m", "infra.rehearse", *rehearse_argv(args), "--vm", args.vm])
    return 0  # not reached: execv replaces this process


# --------------------------------------------------------------------------- render


def cmd_render(args: argparse.Namespace) -> int:
    from workloads.describe.config import renumber
    from workloads.describe.plan import build_plan
    from workloads.render.files import render_files, write_files

    cfg = load(args)
    if args.lab_addresses:
        cfg = renumber(cfg)
    plan = build_plan(cfg)
    out = out_dir(args.out, "--out")
    written = write_files(render_files(plan, cfg), out)
    if args.json:
        print(json.dumps({"stack": cfg.stack, "topology": plan.topology, "out": str(out), "files": [str(p) for p in written]}, indent=2))
        return 0
    for path in written:
        print(path)
    print(f"{len(written)} files for stack {cfg.stack} ({plan.topology}) in {out}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from workloads.describe.plan import build_plan

    print(json.dumps(build_plan(load(args)).to_dict(), indent=2))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from workloads.describe.config import renumber
    from workloads.describe.schema import effective

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
    from workloads.campaign.spec import ALIASES
    from workloads.describe import schema

    if args.markdown:
        print(schema.markdown_reference(schema.CAMPAIGN, "") if args.campaign else schema.markdown_reference())
    else:
        doc = schema.campaign_json_schema(ALIASES) if args.campaign else schema.stack_json_schema()
        print(json.dumps(doc, indent=2))
    return 0


# --------------------------------------------------------------------------- exit codes

EXIT_CODES_TEXT = """exit status:
  0  done (a dry run: validated, nothing created)
  1  a run started and failed, or ended partial
  2  bad usage or configuration: an option, a stack or campaign file, a path given on the command line
  3  a precondition is missing: not root, a tool, a kernel feature (IPVS, cgroups), the micro-VM, a service to reach
  128+N  stopped by signal N (Ctrl-C 130, SIGTERM 143), after tearing down what it started
errors are one line on stderr, starting with "mqttlab"."""

# error types by qualified name -> exit status, most specific first; named rather than imported so
# that a bench process does not load the lab, cryptography or yaml just to know its exit codes
EXIT_CODES = (
    ("workloads.base.errors.RunFailed", 1),
    ("workloads.base.errors.ConfigError", 2),
    ("workloads.campaign.spec.CampaignError", 2),
    ("workloads.rundir.records.RunDirError", 2),
    ("workloads.render.security.SecurityFileError", 2),
    ("workloads.describe.faults.FaultError", 2),
    ("workloads.base.errors.LabError", 3),
)

# OSErrors about a path that the user named or that a command was about to create there
PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG}


def exit_code_of(exc: BaseException) -> int | None:
    """The exit status of an error the program reports as a message, or None for a bug (whose
    traceback is worth more than a message)."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    for name, code in EXIT_CODES:
        if name in names:
            return code
    if isinstance(exc, OSError) and exc.errno in PATH_ERRNOS and exc.filename is not None:
        return 2
    return None


def one_line(exc: BaseException) -> str:
    """The message on one line: a failed command's captured stderr follows its command line."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc)
    return ": ".join(part.strip() for part in text.splitlines() if part.strip()) or type(exc).__name__


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (the command and what is wrong), exit status 2 as argparse's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- parser


# the modules that add each command's parser: a command loads only its own (a bench process
# starts without importing the lab, Azure host steps, reports or campaigns)
COMMANDS = {"monitor": "monitor", "bench": "bench", "lab": "lab", "host": "azure", "results": "azure", "report": "analysis",
            "campaign": "campaign"}


SUBCOMMAND_MODULES = (("monitor", "workloads.hosts.monitor"), ("bench", "workloads.bench.cli"), ("lab", "workloads.hosts.lab.cli"),
                      ("azure", "workloads.hosts.azure.cli"), ("analysis", "workloads.analysis.cli"), ("campaign", "workloads.campaign.cli"))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or with ``command`` one of ``COMMANDS`` only that one's (an unknown
    or absent command gets them all, so argparse's usage lists them)."""
    parser = Parser(prog="mqttlab", description=DESCRIPTION, epilog=EXIT_CODES_TEXT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=Version, help="the version, and the Mosquitto and kernel this machine has")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands above (mqttlab COMMAND --help tells its options)")

    p = sub.add_parser("render", help="write every rendered file of a stack, per host, plus plan.json")
    add_stack_args(p)
    p.add_argument("--out", required=True, help="output folder; files go to OUT/<host>/...")
    p.add_argument("--lab-addresses", action="store_true", help="renumber into 198.18.0.0/15 as the local lab does")
    p.add_argument("--json", action="store_true", help="print the files written as JSON")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("plan", help="print the topology plan of a stack as JSON")
    add_stack_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("config", help="the configuration a stack runs")
    csub = p.add_subparsers(dest="config", required=True)
    q = csub.add_parser("show", help="the effective configuration of a stack, every default filled in (YAML, or --json)")
    add_stack_args(q)
    add_set_arg(q)
    q.add_argument("--lab-addresses", action="store_true", help="the addresses as the local lab moves them into 198.18.0.0/15")
    q.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    add_scenario_args(q)
    q.set_defaults(func=cmd_config_show)

    p = sub.add_parser("schema", help="the JSON Schema of stack files (or campaign files), for editors; or the reference as Markdown")
    p.add_argument("--campaign", action="store_true", help="campaign files instead of stack files")
    p.add_argument("--markdown", action="store_true", help="every key as Markdown tables (docs/configuration.md) instead of JSON Schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("rehearse", help="pulumi up rehearsed here: the program's remote steps over real SSH to stand-in hosts")
    add_rehearse_args(p)
    p.set_defaults(func=cmd_rehearse)

    want = {COMMANDS[command]} if command in COMMANDS else set(COMMANDS.values())
    # each subcommand's module is imported only when it is the one asked for (start-up cost)
    for key, module in SUBCOMMAND_MODULES:
        if key in want:
            importlib.import_module(module).add_parser(sub)
    _group_commands(parser, sub)
    return parser


def _group_commands(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction[Any]) -> None:
    """List the commands by group in the top-level help instead of argparse's one flat list (whose
    entries are its private choice actions: taken out here, so nothing is listed twice)."""
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    if set(helps) != {n for _t, names in COMMAND_GROUPS for n in names}:
        return  # only one command's parser was built (to run it): there is no listing to make
    sub._choices_actions.clear()
    width = max(map(len, helps)) + 2
    lines = [parser.description or ""]
    for title, names in COMMAND_GROUPS:
        lines += ["", f"{title}:"] + [f"  {n.ljust(width)}{helps[n]}" for n in names]
    parser.description = "\n".join(lines)


class Version(argparse.Action):
    """``--version``: the program's version, and what it found on this machine to run with."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        print(version_text())  # to stdout, as argparse's own version action (exit() writes to stderr)
        parser.exit(0)


def version_text() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from workloads.hosts.lab.lab import kernel_could_load_ipvs, mosquitto_version

    try:
        own = version("mqttlab")
    except PackageNotFoundError:
        own = "(not installed)"
    ipvs = "IPVS available" if kernel_could_load_ipvs() else "no IPVS (the lab uses a stand-in; --vm runs a kernel with IPVS)"
    return f"mqttlab {own}\nmosquitto {mosquitto_version()}\nkernel {platform.release()}, {ipvs}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # the reader went away (mqttlab schema | head): what it wanted was written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the interpreter's final flush fails no more
        return 128 + signal.SIGPIPE
    except Exception as exc:
        code = exit_code_of(exc)
        if code is None:
            raise
        print(f"mqttlab: {one_line(exc)}", file=sys.stderr)
        return code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP where a command turns them into procs.Stopped
        print("mqttlab: interrupted; everything it started was torn down", file=sys.stderr)
        return procs.exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
