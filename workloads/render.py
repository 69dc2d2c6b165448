"""Assemble every rendered file of a plan as ``{relative path: text}``; write them out.

The mapping is what Azure uploads and what the lab starts, so ``mqttlab render`` shows a user
exactly what will run.
"""

from __future__ import annotations

import json
from pathlib import Path

from workloads import balancer as bal_r
from workloads import brokers as brk_r
from workloads import keepalived
from workloads.config import ExperimentConfig
from workloads.plan import Plan


def render_files(plan: Plan, cfg: ExperimentConfig) -> dict[str, str]:
    files: dict[str, str] = {"plan.json": json.dumps(plan.to_dict(), indent=2) + "\n"}
    files["brokers/docker-compose.yml"] = brk_r.compose_file(plan, cfg)
    for b in plan.brokers:
        files[f"brokers/{b.name}/mosquitto.conf"] = brk_r.mosquitto_conf(plan, cfg, b)
    for c in plan.clients:
        files[f"{c.host}/client.json"] = json.dumps({"host": c.host, "target": c.target, "target_host": c.target_host}, indent=2) + "\n"
    for bal in plan.balancers:
        d = bal.host
        files[f"{d}/ipvs.rules"] = bal_r.ipvs_rules(bal)
        files[f"{d}/ipvs-timeouts"] = bal_r.ipvs_timeouts(bal)
        files[f"{d}/rules.v4"] = bal_r.iptables_rules(bal)
        files[f"{d}/rules.nft"] = bal_r.nft_rules(bal)
        files[f"{d}/sysctl.conf"] = bal_r.sysctl_conf(plan, d)
        files[f"{d}/nft-balancer.nft"] = bal_r.nft_balancer(bal)
        files[f"{d}/haproxy.cfg"] = bal_r.haproxy_cfg(bal)
        if bal.health_check.type != "none":
            files[f"{d}/keepalived.conf"] = keepalived.keepalived_conf(bal)
    return files


def write_files(files: dict[str, str], out: Path) -> list[Path]:
    written = []
    for rel, text in sorted(files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
