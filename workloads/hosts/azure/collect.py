"""The end of a run on every VM: stop what runs, gather logs and tables, upload; the verdict over all
uploads; and the user's fetch of a run's files.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys

from workloads.base.clipaths import in_file, out_dir
from workloads.describe.config import ConfigError
from workloads.describe.names import container
from workloads.hosts.azure.common import config_and_plan, run_dir, stop_detached
from workloads.hosts.azure.faults import stop_faults
from workloads.hosts.shell import run as sh
from workloads.rundir.records import update_manifest
from workloads.storage import blob as storage


def cmd_collect(args: argparse.Namespace) -> int:
    cfg, plan = config_and_plan(args)
    rd = run_dir(args)
    # faults first: a restart still being undone may replace a broker's monitor, and the
    # replacements are the fault process's children, reaped once it has ended
    stop_faults(cfg, plan, rd, args.host)
    stop_detached(rd, "monitor-")
    stop_detached(rd, "bench-sub", timeout=30)  # a failed finish may have left them running
    host = plan.host(args.host)
    if host.role == "brokers":
        for b in plan.brokers:
            logs = sh(["docker", "logs", container(b.name)], check=False, timeout=120)
            (rd / "logs").mkdir(exist_ok=True)
            (rd / "logs" / f"{b.name}.log").write_text(logs.stdout + logs.stderr)
    elif plan.balancer_on(args.host):
        (rd / "balancer").mkdir(exist_ok=True)
        (rd / "balancer" / f"{args.host}-connections.txt").write_text(sh(["ipvsadm", "-Lnc"], check=False).stdout)
    prefix = f"{args.stack}/{args.run_id}/"
    # as the VM's managed identity; a 403 while its role assignment propagates is waited out
    c = storage.container(args.url, storage.vm_credential(), args.ca_file)
    n = storage.upload_dir(c, rd, prefix, skip_manifest=plan.clients[0].host != args.host, host=args.host, wait_forbidden_s=storage.PROPAGATION_S)
    print(f"uploaded {n} files from {args.host} to {args.url}/{prefix}")
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    """After every host uploaded: the run fails (and its manifest says so) if any step failed.
    The results are in the store either way; this is what makes ``pulumi up`` report it."""
    _, plan = config_and_plan(args)
    rd = run_dir(args)
    prefix = f"{args.stack}/{args.run_id}/"
    c = storage.container(args.url, storage.vm_credential(), args.ca_file)
    bad = storage.failed_steps(c, prefix)
    if bad and (rd / "manifest.json").exists():
        update_manifest(rd, status="failed", failed_steps=bad)
        storage.put(c, prefix + "manifest.json", (rd / "manifest.json").read_bytes(), wait_forbidden_s=60)
    summary = {"run": prefix, "failed_steps": bad, "status": "failed" if bad else "complete"}
    print(json.dumps(summary))
    if bad:
        print("run failed: " + "; ".join(f"{b.get('host')} {b.get('step')}: {b.get('detail', '')[-300:]}" for b in bad), file=sys.stderr)
        return 1
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """With the user's own ``az login``: Storage Blob Data Reader on the container, which the
    program grants, is all it needs (a user delegation SAS would need a role at account scope)."""
    out = out_dir(args.out, "--out")
    if args.ca_file is not None:
        in_file(args.ca_file, "--ca-file")
    if not args.url.startswith("https://"):  # the SDK sends a bearer token over HTTPS only
        shown = args.url.split("?")[0] + ("?..." if "?" in args.url else "")  # a query may be a SAS: never echoed
        raise ConfigError("--url", shown, "not an https:// container URL")
    if args.ca_file is not None:
        try:
            ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError, ValueError):
            raise ConfigError("--ca-file", args.ca_file, "is not a readable PEM certificate bundle") from None
    dest = storage.fetch(storage.container(args.url, storage.user_credential(), args.ca_file), args.prefix, out)
    print(dest)
    return 0
