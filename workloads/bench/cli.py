"""``mqttlab bench``: run, sub, pub, summary, emqtt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from workloads.base.clipaths import out_dir, out_file, read_text
from workloads.base.procs import StopFlag
from workloads.bench import emqtt
from workloads.bench.runner import HostShare, run_host, split_evenly
from workloads.describe import runsize
from workloads.describe.cliargs import add_scenario_args, project_dir
from workloads.describe.config import ConfigError, load_stack
from workloads.describe.scenario import FIELDS, Scenario, scenario_from_mapping
from workloads.rundir.records import format_summary, read_manifest, summarize


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Defaults from the stack file when -s is given, else the reference's; options override."""
    base: dict[str, Any] = {}
    if getattr(args, "stack", None):
        base = dict(load_stack(args.stack, project_dir(getattr(args, "project_dir", None))).scenario.to_dict())
        base = {k: base[attr] for k, (attr, _o, _d) in FIELDS.items()}
    for key in FIELDS:
        v = getattr(args, f"scenario_{key}", None)
        if v is not None:
            base[key] = v
    return scenario_from_mapping(base, prefix="", names={k: opt for k, (_a, opt, _d) in FIELDS.items()})


def _targets(text: str) -> list[str]:
    out = []
    for t in text.split(","):
        host, sep, port = t.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("--target", t, "must be HOST:PORT[,HOST:PORT...]")
        out.append(f"{host}:{port}")
    return out


def _share(args: argparse.Namespace, sc: Scenario, pubs: bool, subs: bool) -> HostShare:
    if args.host_count < 1:
        raise ConfigError("--host-count", args.host_count, "must be at least 1")
    if not 0 <= args.host_index < args.host_count:
        raise ConfigError("--host-index", args.host_index, f"must be in 0..{args.host_count - 1}")
    return HostShare(
        host=args.host,
        targets=_targets(args.target),
        publishers=split_evenly(sc.publishers, args.host_count, args.host_index) if pubs else [],
        subscribers=split_evenly(sc.subscribers, args.host_count, args.host_index) if subs else [],
    )


def client_security(path: str | None, roles: tuple[str, ...] = ("pub", "sub")) -> dict[str, Any]:
    """The publishers' and subscribers' credentials from a rendered client.json (never options:
    secrets on a command line are visible to every process on the host)."""
    from workloads.render.security import SecurityFileError, load_client

    if path is None:
        return {}
    try:
        return {role: load_client(path, role) for role in roles}
    except SecurityFileError as exc:
        raise ConfigError("--security", path, str(exc)) from None


def _run(args: argparse.Namespace, pubs: bool, subs: bool) -> int:
    sc = scenario_from_args(args)
    share = _share(args, sc, pubs, subs)
    out = out_dir(args.out, "--out")
    ready_file = out_file(args.ready_file, "--ready-file") if args.ready_file else None
    if (out / "manifest.json").exists():  # a run directory another process started (the lab's): it must be one
        read_manifest(out)
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", args.workers, "must be at least 1")
    security = client_security(args.security, ("pub",) * pubs + ("sub",) * subs)
    if getattr(args, "dry_run", False):
        from workloads.bench.dryrun import bench_plan, format_plan

        doc = bench_plan(share, sc, out, args.workers)
        print(json.dumps(doc, indent=2) if args.json else format_plan(doc))
        return 0
    if not args.quiet:
        from workloads.describe.runsize import estimate_bench_s

        announce_size(sc, share.subscribers, share.publishers, estimate_bench_s(sc))
    stop = StopFlag()
    restore = stop.install()
    try:
        result = run_host(
            share, sc, out, tag=args.tag, workers=args.workers, progress=not args.quiet,
            start_at=args.start_at, ready_file=ready_file, stop=stop,
            security=security,
        )
    finally:
        restore()
    if pubs and subs:
        summary = summarize(out)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    else:
        print(json.dumps(result) if args.json else f"{share.host}: {result['status']} {result['reason']}")
    return 0 if result["status"] == "complete" else 1


def announce_size(sc: Scenario, subscribers: list[int], publishers: list[int], duration_s: float) -> None:
    """One line before a large run starts, so its size is known before it takes the machine."""
    expected = sc.expected_deliveries(subscribers)
    if runsize.is_large(expected, duration_s):
        print(runsize.size_line(len(publishers), len(subscribers), sum(sc.messages_of(p) for p in publishers), expected, duration_s),
              file=sys.stderr, flush=True)


def cmd_summary(args: argparse.Namespace) -> int:
    s = summarize(Path(args.run_dir))  # a RunDirError is reported by workloads.cli (status 2)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def cmd_emqtt(args: argparse.Namespace) -> int:
    sc = scenario_from_args(args)
    share = _share(args, sc, True, True)
    pubs, subs = share.publishers, share.subscribers
    msgs = sum(sc.messages_of(p) for p in pubs)
    cmds = emqtt.commands(sc, share.targets, len(pubs), len(subs), msgs, docker=not args.native,
                          security=client_security(args.security))
    if args.native and not (args.parse_pub or args.parse_sub) and emqtt.find_native() is None:
        from workloads.base.errors import LabError

        raise LabError(emqtt.missing_native())  # a tool missing: status 3
    if args.parse_pub or args.parse_sub:
        pub_text = read_text(args.parse_pub, "--parse-pub") if args.parse_pub else ""
        sub_text = read_text(args.parse_sub, "--parse-sub") if args.parse_sub else ""
        print(json.dumps(emqtt.summarize(pub_text, sub_text, len(subs), msgs), indent=2))
        return 0
    for role, cmd in cmds.items():
        print(f"{role}: {' '.join(emqtt.redact(cmd))}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="the load generator")
    bsub = p.add_subparsers(dest="bench", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--target", required=True, help="HOST:PORT[,HOST:PORT...] entry points; clients are spread over them")
        q.add_argument("-s", "--stack", help="take scenario defaults from Pulumi.<stack>.yaml")
        q.add_argument("--project-dir", help="folder holding Pulumi.<stack>.yaml (default: here or the repository)")
        q.add_argument("--host", default="local", help="this client host's name in the run directory")
        q.add_argument("--host-index", type=int, default=0, help="this host's number among the client hosts")
        q.add_argument("--host-count", type=int, default=1, help="how many client hosts share the scenario")
        q.add_argument("--security", help="a rendered <host>/security/client.json: credentials and TLS (default: anonymous)")
        add_scenario_args(q)

    for name, pubs, subs, text in (
        ("run", True, True, "subscribers then publishers of this host, then a summary"),
        ("sub", False, True, "subscribers only, until SIGTERM or the time limit"),
        ("pub", True, False, "publishers only"),
    ):
        q = bsub.add_parser(name, help=text)
        common(q)
        q.add_argument("--out", required=True, help="run directory")
        q.add_argument("--workers", type=int, help="worker processes (default: one per core)")
        q.add_argument("--tag", type=lambda s: int(s, 0), help="run tag shared by every host of a run (default random)")
        q.add_argument("--start-at", type=float, help="publishers start at this epoch time (multi-host runs)")
        q.add_argument("--ready-file", help="written once every client is connected and subscribed")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")
        q.add_argument("--quiet", action="store_true", help="no progress lines")
        if name == "run":
            q.add_argument("--dry-run", action="store_true",
                           help="check everything, print the plan, expected deliveries, time and disk; connect nothing, write nothing")
        q.set_defaults(func=lambda a, p=pubs, s=subs: _run(a, p, s))

    q = bsub.add_parser("summary", help="summarize a run directory")
    q.add_argument("run_dir", help="a run directory (runs/<run-id>/)")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=cmd_summary)

    q = bsub.add_parser("emqtt", help="emqtt-bench command lines for this scenario, or parse their output")
    common(q)
    q.add_argument("--native", action="store_true", help="emqtt_bench from EMQTT_BENCH or PATH instead of Docker")
    q.add_argument("--parse-pub", help="a file of emqtt-bench pub console output to summarize")
    q.add_argument("--parse-sub", help="a file of emqtt-bench sub console output to summarize")
    q.set_defaults(func=cmd_emqtt)

