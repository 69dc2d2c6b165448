"""What every VM step shares: the VM's paths, the run's tag, the step record (each step's
outcome in the run directory, so collect uploads it and the verdict reads it) and detached processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from workloads.base import procs
from workloads.base.clipaths import out_dir
from workloads.base.errors import LabError
from workloads.describe.cliargs import load
from workloads.describe.config import ExperimentConfig
from workloads.describe.plan import Plan, build_plan
from workloads.render.files import render_files, write_files

RENDERED = Path("/var/lib/mqttlab/rendered")
MATERIAL = Path("/var/lib/mqttlab/security.json")  # the run's secrets, from the Pulumi program (0600)


def run_tag(stack: str, run_id: str) -> int:
    """Every host derives the same tag from the run id, so no host has to tell the others."""
    return zlib.crc32(f"{stack}/{run_id}".encode()) or 1


def config_and_plan(args: argparse.Namespace) -> tuple[ExperimentConfig, Plan]:
    cfg = load(args)
    return cfg, build_plan(cfg)


def render_to_disk(cfg: ExperimentConfig, plan: Plan) -> dict[str, str]:
    """Write every rendered file under RENDERED (where the steps and a person find them)."""
    material = None
    if cfg.security.enabled:
        from workloads.render import security

        if not MATERIAL.is_file():
            raise LabError(f"security mode {cfg.security.mode} needs {MATERIAL} (written by `mqttlab host security-install`)")
        material = security.material_from_json(MATERIAL.read_text(), plan, cfg.security, str(MATERIAL))
    files = render_files(plan, cfg, material)
    write_files(files, RENDERED)
    return files


def run_dir(args: argparse.Namespace) -> Path:
    d = out_dir(args.runs, "--runs") / args.run_id
    (d / "pids").mkdir(parents=True, exist_ok=True)
    return d


def record_step(rd: Path, host: str, step: str, status: str, detail: str = "") -> Path:
    """One file per host and step under ``status/``: uploaded with the run, read by the verdict."""
    f = rd / "status" / f"{host}-{step}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"host": host, "step": step, "status": status, "detail": detail, "at": time.time()}) + "\n")
    return f


def step_status(rd: Path, host: str, step: str) -> str | None:
    f = rd / "status" / f"{host}-{step}.json"
    return str(json.loads(f.read_text()).get("status")) if f.exists() else None


def recorded(step: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """A benchmark step that never stops the run: its outcome is written down and it exits 0, so
    the finish, collection and upload after it always happen (an overloaded run, the
    interesting kind, is not lost); the verdict step reports the run failed afterwards."""

    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            rd = run_dir(args)
            try:
                rc, detail = func(args), ""
            except Exception as exc:  # noqa: BLE001 - whatever broke, the run still has to be collected
                rc, detail = 1, f"{type(exc).__name__}: {exc}"
            status = {0: "ok", SKIPPED: "skipped"}.get(rc, "failed")
            record_step(rd, args.host, step, status, detail or ("" if rc == 0 else f"exit status {rc}"))
            if status != "ok":
                print(f"{step} on {args.host}: {status} {detail}; recorded, the run goes on to collection", file=sys.stderr)
            return 0

        run.__doc__ = func.__doc__
        return run

    return wrap


SKIPPED = 75  # a step that did not run because an earlier one on this host failed


def detach(cmd: Sequence[str], rd: Path, name: str) -> int:
    log = (rd / "logs")
    log.mkdir(parents=True, exist_ok=True)
    with (log / f"{name}.log").open("ab") as out:
        p = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (rd / "pids" / f"{name}.pid").write_text(str(p.pid))
    return p.pid


def stop_detached(rd: Path, prefix: str, timeout: float = 30, exact: bool = False) -> None:
    """SIGTERM to each detached process group, SIGKILL after ``timeout``. A zombie counts as
    ended: a process detached by another one that lives on (a monitor the fault process
    replaced) stays one until that parent reaps it."""
    for pidfile in sorted((rd / "pids").glob(f"{prefix}.pid" if exact else f"{prefix}*.pid")):
        try:
            pid = int(pidfile.read_text())
        except FileNotFoundError:
            continue  # stopped meanwhile by another step
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            continue
        end = time.time() + timeout
        while time.time() < end and procs.is_running(pid, None):
            time.sleep(0.2)
        if procs.is_running(pid, None):
            os.killpg(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
