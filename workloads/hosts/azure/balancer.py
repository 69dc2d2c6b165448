"""A balancer VM's steps: IPVS, its timeouts, SNAT and sysctls from the plan, as the lab applies them.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from workloads.base.errors import LabError
from workloads.describe.plan import Plan
from workloads.hosts.azure.common import config_and_plan, render_to_disk
from workloads.hosts.shell import run as sh
from workloads.render.balancer import ipvs_apply_steps


def apply_balancer(plan: Plan, host: str, rendered: dict[str, str]) -> str:
    """Apply this host's director (if the plan has one here); returns ``ipvsadm -Sn`` for the log."""
    bal = plan.balancer_on(host)
    if bal is None:
        sh(["ipvsadm", "-C"], check=False)
        return f"no balancer on {host} in the {plan.topology} topology; its clients use {next(c.target for c in plan.clients if c.host == host)}\n"
    for argv, stdin, check in ipvs_apply_steps(host, bal.scheduler, rendered):
        sh(argv, input=stdin, check=check)
    if bal.health_check.type != "none":
        from workloads.render import keepalived

        try:
            keepalived.start_daemon(bal, Path("/run/mqttlab/keepalived") / host)  # root-only: script security
        except (RuntimeError, subprocess.SubprocessError) as exc:
            raise LabError(str(exc)) from None
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
