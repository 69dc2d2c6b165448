"""``mqttlab host ...`` and ``mqttlab results ...``: what Azure's remote commands call on a VM.

Each step is short, bounded, idempotent where it can be, and reads the same stack file and
renderers as the local lab; the remote commands carry no logic of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from workloads.balancer import ipvs_apply_steps
from workloads.bench.rundir import deliveries_on_disk, drain, start_manifest, update_manifest
from workloads.config import ExperimentConfig
from workloads.lab.netns import LabError
from workloads.plan import Plan, build_plan
from workloads.render import render_files, write_files

RENDERED = Path("/var/lib/mqttlab/rendered")
MATERIAL = Path("/var/lib/mqttlab/security.json")  # the run's secrets, from the Pulumi program (0600)
CONTAINER_UID = 1883  # the mosquitto user of the eclipse-mosquitto image


def sh(cmd: Sequence[str], timeout: float = 120, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({cp.returncode}): {cp.stderr.strip()[-2000:]}")
    return cp


def run_tag(stack: str, run_id: str) -> int:
    """Every host derives the same tag from the run id, so no host has to tell the others."""
    return zlib.crc32(f"{stack}/{run_id}".encode()) or 1


def _cfg(args: argparse.Namespace) -> tuple[ExperimentConfig, Plan]:
    from workloads.cli import load

    cfg = load(args)
    return cfg, build_plan(cfg)


def _render(cfg: ExperimentConfig, plan: Plan) -> dict[str, str]:
    """Write every rendered file under RENDERED (where the steps and a person find them)."""
    material = None
    if cfg.security.enabled:
        from workloads import security

        if not MATERIAL.is_file():
            raise LabError(f"security mode {cfg.security.mode} needs {MATERIAL} (written by `mqttlab host security-install`)")
        material = security.material_from_json(MATERIAL.read_text(), plan, cfg.security, str(MATERIAL))
    files = render_files(plan, cfg, material)
    write_files(files, RENDERED)
    return files


def cmd_security_install(args: argparse.Namespace) -> int:
    """Store the secrets piped in on stdin (never an argument), owner-only, after checking them."""
    from workloads import security

    cfg, plan = _cfg(args)
    text = sys.stdin.read()
    security.material_from_json(text, plan, cfg.security, "stdin")
    MATERIAL.parent.mkdir(parents=True, exist_ok=True)
    MATERIAL.unlink(missing_ok=True)
    with os.fdopen(os.open(MATERIAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)
    print(f"security material for mode {cfg.security.mode} stored in {MATERIAL}")
    return 0


# --------------------------------------------------------------------------- brokers


def cmd_brokers_up(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    _render(cfg, plan)
    d = RENDERED / "brokers"
    if cfg.security.enabled:
        from workloads.security import give_to

        for b in plan.brokers:
            give_to(d / b.name, CONTAINER_UID)
    sh(["docker", "compose", "-p", "mqttlab", "-f", str(d / "docker-compose.yml"), "up", "-d", "--force-recreate"], timeout=600)
    for b in plan.brokers:
        end = time.time() + 60
        while True:
            cp = sh(["docker", "exec", f"mqttlab-{b.name}", "mosquitto_sub", "-h", b.address, "-p", str(b.port), "-t", "$SYS/broker/uptime",
                     "-C", "1", "-W", "5"], check=False, timeout=15)
            if cp.returncode == 0:
                break
            if time.time() > end:
                raise LabError(f"{b.name} does not answer on {b.address}:{b.port}: {cp.stderr.strip()}")
            time.sleep(1)
        print(f"{b.name} up on {b.address}:{b.port}")
    return 0


def cmd_brokers_down(args: argparse.Namespace) -> int:
    f = RENDERED / "brokers" / "docker-compose.yml"
    if f.exists():
        sh(["docker", "compose", "-p", "mqttlab", "-f", str(f), "down", "--remove-orphans"], timeout=300, check=False)
    return 0


# --------------------------------------------------------------------------- balancers


def apply_balancer(plan: Plan, host: str, rendered: dict[str, str]) -> str:
    """Apply this host's director (if the plan has one here); returns ``ipvsadm -Sn`` for the log."""
    bal = plan.balancer_on(host)
    if bal is None:
        sh(["ipvsadm", "-C"], check=False)
        return f"no balancer on {host} in the {plan.topology} topology; its clients use {next(c.target for c in plan.clients if c.host == host)}\n"
    for argv, stdin, check in ipvs_apply_steps(host, bal.scheduler, rendered):
        sh(argv, input=stdin, check=check)
    return sh(["ipvsadm", "-Sn"]).stdout


def cmd_balancer_apply(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    print(apply_balancer(plan, args.host, _render(cfg, plan)), end="")
    return 0


def cmd_balancer_clear(args: argparse.Namespace) -> int:
    sh(["ipvsadm", "-C"], check=False)
    sh(["iptables-restore"], input="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n"
       ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", check=False)
    return 0


# --------------------------------------------------------------------------- monitors and bench


def run_dir(args: argparse.Namespace) -> Path:
    d = Path(args.runs) / args.run_id
    (d / "pids").mkdir(parents=True, exist_ok=True)
    return d


def detach(cmd: Sequence[str], rd: Path, name: str) -> int:
    log = (rd / "logs")
    log.mkdir(parents=True, exist_ok=True)
    with (log / f"{name}.log").open("ab") as out:
        p = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (rd / "pids" / f"{name}.pid").write_text(str(p.pid))
    return p.pid


def stop_detached(rd: Path, prefix: str, timeout: float = 30) -> None:
    for pidfile in sorted((rd / "pids").glob(f"{prefix}*.pid")):
        pid = int(pidfile.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pidfile.unlink()
            continue
        end = time.time() + timeout
        while time.time() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
        pidfile.unlink()


def me() -> list[str]:
    return [sys.executable, "-m", "workloads.cli"]


def cmd_monitors_start(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    mon = rd / "monitor"
    mon.mkdir(exist_ok=True)
    if args.role == "brokers":
        for b in plan.brokers:
            pid = sh(["docker", "inspect", "-f", "{{.State.Pid}}", f"mqttlab-{b.name}"]).stdout.strip()
            # the host cannot reach its own ipvlan children: sample $SYS from the broker's own namespace
            sec = ["--security", str(RENDERED / "brokers/security/client.json")] if cfg.security.enabled else []
            detach(["nsenter", "-t", pid, "-n", *me(), "monitor", "brokers", "--broker", f"{b.name}={b.address}:{b.port}@{pid}",
                    "--out", str(mon / f"brokers-{b.name}.csv"), *sec], rd, f"monitor-{b.name}")
    else:
        detach([*me(), "monitor", "balancer", "--kind", "ipvs", "--host", args.host, "--out", str(mon / f"balancer-{args.host}.csv")], rd,
               f"monitor-{args.host}")
    print(f"monitors started for {args.role}")
    return 0


def bench_args(cfg: ExperimentConfig, plan: Plan, host: str, rd: Path, stack: str, run_id: str) -> list[str]:
    i = [c.host for c in plan.clients].index(host)
    client = plan.clients[i]
    return ["--target", client.target, "--out", str(rd), "--host", host, "--host-index", str(i), "--host-count", str(len(plan.clients)),
            "--tag", hex(run_tag(stack, run_id)), "--quiet", *cfg.scenario.cli_args(),
            *(["--security", str(RENDERED / host / "security/client.json")] if cfg.security.enabled else [])]


def cmd_bench_subs(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    start_manifest(rd, kind="azure", stack=args.stack, topology=plan.topology, balancer="ipvs", scheduler=cfg.balancer.scheduler,
                   scenario=cfg.scenario.to_dict(), plan=plan.to_dict(), tag=run_tag(args.stack, args.run_id), run_id=args.run_id,
                   load_generator=args.load_generator)
    ready = rd / "bench" / args.host / "sub.ready"
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    if args.load_generator == "emqtt-bench":
        return _emqtt(cfg, plan, args, rd, "sub")
    detach([*me(), "bench", "sub", *bench_args(cfg, plan, args.host, rd, args.stack, args.run_id), "--ready-file", str(ready)], rd, "bench-sub")
    end = time.time() + cfg.scenario.time_limit_s
    while not ready.exists():
        if time.time() > end:
            raise LabError(f"subscribers on {args.host} not ready within {cfg.scenario.time_limit_s}s (see {rd}/logs/bench-sub.log)")
        time.sleep(0.5)
    print(f"subscribers ready on {args.host}")
    return 0


def cmd_bench_pubs(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    if args.load_generator == "emqtt-bench":
        return _emqtt(cfg, plan, args, rd, "pub")
    cp = subprocess.run([*me(), "bench", "pub", *bench_args(cfg, plan, args.host, rd, args.stack, args.run_id), "--json"],
                        timeout=cfg.scenario.time_limit_s + 60, capture_output=True, text=True)
    print(cp.stdout.strip())
    return cp.returncode


def _emqtt(cfg: ExperimentConfig, plan: Plan, args: argparse.Namespace, rd: Path, role: str) -> int:
    from workloads.bench import emqtt
    from workloads.bench.runner import split_evenly

    i = [c.host for c in plan.clients].index(args.host)
    n = len(plan.clients)
    pubs = split_evenly(cfg.scenario.publishers, n, i)
    subs = split_evenly(cfg.scenario.subscribers, n, i)
    security = None
    if cfg.security.enabled:
        from workloads.bench.cli import client_security

        security = client_security(str(RENDERED / args.host / "security/client.json"))
    cmds = emqtt.commands(cfg.scenario, [plan.clients[i].target], len(pubs), len(subs), sum(cfg.scenario.messages_of(p) for p in pubs),
                          security=security)
    out = rd / "bench" / args.host
    out.mkdir(parents=True, exist_ok=True)
    if role == "sub":
        detach(cmds["sub"], rd, "bench-sub")
        time.sleep(5)
        return 0
    with (out / "emqtt-pub.log").open("w") as fh:
        rc = subprocess.run(cmds["pub"], stdout=fh, stderr=subprocess.STDOUT, timeout=cfg.scenario.time_limit_s + 60).returncode
    return rc


def cmd_bench_finish(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    drain(lambda: deliveries_on_disk(rd, args.host), None, cfg.scenario.drain_s, poll_s=0.5)
    stop_detached(rd, "bench-sub", timeout=60)
    if args.load_generator == "emqtt-bench":
        log = rd / "logs" / "bench-sub.log"
        (rd / "bench" / args.host / "emqtt-sub.log").write_text(log.read_text() if log.exists() else "")
    if plan.clients[0].host == args.host:
        update_manifest(rd, status="complete", ended_at=time.time())
    print(json.dumps({"host": args.host, "deliveries_on_disk": deliveries_on_disk(rd, args.host)}))
    return 0


# --------------------------------------------------------------------------- results


def put_blob(url: str, data: bytes, timeout: float = 120) -> None:
    req = urllib.request.Request(url, data=data, method="PUT", headers={"x-ms-blob-type": "BlockBlob", "Content-Length": str(len(data))})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - https URL from the stack
        if resp.status not in (200, 201):
            raise LabError(f"upload to {url.split('?')[0]} answered {resp.status}")


def blob_url(container: str, name: str, sas: str) -> str:
    return f"{container.rstrip('/')}/{urllib.parse.quote(name)}?{sas.lstrip('?')}"


def upload_dir(rd: Path, container: str, prefix: str, sas: str, skip_manifest: bool) -> int:
    n = 0
    for path in sorted(p for p in rd.rglob("*") if p.is_file()):
        rel = path.relative_to(rd).as_posix()
        if rel.startswith("pids/") or (skip_manifest and rel == "manifest.json") or path.suffix == ".sock":
            continue
        put_blob(blob_url(container, prefix + rel, sas), path.read_bytes())
        n += 1
    return n


def list_blobs(container: str, prefix: str, sas: str) -> list[str]:
    names: list[str] = []
    marker = ""
    while True:
        q = f"restype=container&comp=list&prefix={urllib.parse.quote(prefix)}" + (f"&marker={urllib.parse.quote(marker)}" if marker else "")
        with urllib.request.urlopen(f"{container.rstrip('/')}?{q}&{sas.lstrip('?')}", timeout=60) as resp:  # noqa: S310
            root = ET.fromstring(resp.read())
        names += [e.text or "" for e in root.iter("Name")]
        marker = (root.findtext("NextMarker") or "").strip()
        if not marker:
            return names


def fetch(container: str, prefix: str, sas: str, out: Path) -> Path:
    names = list_blobs(container, prefix, sas)
    if not names:
        raise LabError(f"no results under {container}/{prefix}")
    dest = out / prefix.strip("/").replace("/", "-")
    for name in names:
        target = dest / name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(blob_url(container, name, sas), timeout=300) as resp:  # noqa: S310
            target.write_bytes(resp.read())
    return dest


def cmd_collect(args: argparse.Namespace) -> int:
    cfg, plan = _cfg(args)
    rd = run_dir(args)
    stop_detached(rd, "monitor-")
    host = plan.host(args.host)
    if host.role == "brokers":
        for b in plan.brokers:
            logs = sh(["docker", "logs", f"mqttlab-{b.name}"], check=False, timeout=120)
            (rd / "logs").mkdir(exist_ok=True)
            (rd / "logs" / f"{b.name}.log").write_text(logs.stdout + logs.stderr)
    elif plan.balancer_on(args.host):
        (rd / "balancer").mkdir(exist_ok=True)
        (rd / "balancer" / f"{args.host}-connections.txt").write_text(sh(["ipvsadm", "-Lnc"], check=False).stdout)
    prefix = f"{args.stack}/{args.run_id}/"
    n = upload_dir(rd, args.url, prefix, args.sas, skip_manifest=plan.clients[0].host != args.host)
    print(f"uploaded {n} files from {args.host} to {args.url}/{prefix}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    dest = fetch(args.url, args.prefix, args.sas, Path(args.out))
    print(dest)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_stack_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("host", help="steps run on an Azure VM by the Pulumi program's remote commands")
    hsub = p.add_subparsers(dest="host_cmd", required=True)

    def q(name: str, func: Callable[[argparse.Namespace], int], help: str, run: bool = False, host: bool = False) -> argparse.ArgumentParser:
        x = hsub.add_parser(name, help=help)
        add_stack_args(x)
        if run:
            x.add_argument("--run-id", required=True)
            x.add_argument("--runs", default="/var/lib/mqttlab/runs")
            x.add_argument("--load-generator", choices=("mqttlab", "emqtt-bench"), default="mqttlab")
        if host:
            x.add_argument("--host", required=True, help="this VM's host name in the plan")
        x.set_defaults(func=func)
        return x

    q("security-install", cmd_security_install, "store the run's passwords and certificates, read from stdin")
    q("brokers-up", cmd_brokers_up, "render and start the broker containers, wait until each answers")
    x = hsub.add_parser("brokers-down", help="stop the broker containers")
    x.add_argument("--project-dir")
    x.set_defaults(func=cmd_brokers_down)
    q("balancer-apply", cmd_balancer_apply, "apply this host's IPVS rules, timeouts, iptables and sysctls (if the plan has a balancer here)", host=True)
    x = hsub.add_parser("balancer-clear", help="remove IPVS services and the SNAT rules")
    x.set_defaults(func=cmd_balancer_clear)
    m = q("monitors-start", cmd_monitors_start, "start this host's monitors in the background", run=True)
    m.add_argument("--role", choices=("brokers", "balancer"), required=True)
    m.add_argument("--host", default="brokers")
    q("bench-subs", cmd_bench_subs, "start this host's subscribers and wait until they are ready", run=True, host=True)
    q("bench-pubs", cmd_bench_pubs, "run this host's publishers to the end", run=True, host=True)
    q("bench-finish", cmd_bench_finish, "drain, stop the subscribers", run=True, host=True)
    c = q("collect", cmd_collect, "stop monitors, gather logs and tables, upload the run directory", run=True, host=True)
    c.add_argument("--url", required=True, help="results container URL")
    c.add_argument("--sas", required=True, help="SAS token for the container")

    r = sub.add_parser("results", help="results in the Azure container")
    rsub = r.add_subparsers(dest="results_cmd", required=True)
    f = rsub.add_parser("fetch", help="download a run's files into OUT/<stack>-<run-id>/")
    f.add_argument("--url", required=True)
    f.add_argument("--prefix", required=True)
    f.add_argument("--sas", required=True)
    f.add_argument("--out", default="runs")
    f.set_defaults(func=cmd_fetch)

