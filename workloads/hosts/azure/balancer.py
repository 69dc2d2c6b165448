"""A balancer VM's steps: IPVS, its timeouts, SNAT and sysctls from the plan, as the lab applies them.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from workloads.base.errors import LabError
from workloads.describe.plan import Balancer, Plan
from workloads.hosts.azure.common import config_and_plan, render_to_disk
from workloads.hosts.shell import run as sh
from workloads.render import keepalived
from workloads.render.balancer import ipvs_apply_steps


def start_keepalived(bal: Balancer, directory: Path, ready_s: float = 30.0) -> str:
    """Azure's director: (re)start keepalived in the background and wait, bounded, until every
    weighted broker passed its check; returns ``ipvsadm -Ln`` for the step's log."""
    pidfile = directory / "keepalived.pid"
    if pidfile.exists():  # a previous apply: replace it, so re-running the step is idempotent
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            time.sleep(1)
        except (ProcessLookupError, ValueError):
            pass
    _conf, argv = keepalived.prepare(bal, directory)
    sh([a for a in argv if a not in ("--dont-fork", "--log-console")], timeout=30)
    want = {f"{rs.address}:{rs.port}" for rs in bal.real_servers if rs.weight > 0}
    end = time.time() + ready_s
    while True:
        text = sh(["ipvsadm", "-Ln"], check=False, timeout=10).stdout
        if want <= keepalived.ipvs_reals(text, bal.vip, bal.port):
            return text
        if time.time() > end:
            raise LabError(f"keepalived on {bal.host}: brokers {sorted(want - keepalived.ipvs_reals(text, bal.vip, bal.port))} "
                           f"fail the {bal.health_check.type} check after {ready_s:.0f}s")
        time.sleep(0.5)


def apply_balancer(plan: Plan, host: str, rendered: dict[str, str]) -> str:
    """Apply this host's director (if the plan has one here); returns ``ipvsadm -Sn`` for the log."""
    bal = plan.balancer_on(host)
    if bal is None:
        sh(["ipvsadm", "-C"], check=False)
        return f"no balancer on {host} in the {plan.topology} topology; its clients use {next(c.target for c in plan.clients if c.host == host)}\n"
    for argv, stdin, check in ipvs_apply_steps(host, bal.scheduler, rendered):
        sh(argv, input=stdin, check=check)
    if bal.health_check.type != "none":
        start_keepalived(bal, Path("/run/mqttlab/keepalived") / host)  # root-only: script security
    return sh(["ipvsadm", "-Sn"]).stdout


def cmd_balancer_apply(args: argparse.Namespace) -> int:
    cfg, plan = config_and_plan(args)
    print(apply_balancer(plan, args.host, render_to_disk(cfg, plan)), end="")
    return 0


def cmd_balancer_clear(args: argparse.Namespace) -> int:
    sh(["ipvsadm", "-C"], check=False)
    sh(["iptables-restore"], input="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n"
       ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", check=False)
    return 0
