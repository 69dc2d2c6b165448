"""Assemble every rendered file of a plan as ``{relative path: text}``; write them out.

The mapping is what Azure uploads and what the lab starts, so ``mqttlab render`` shows a user
exactly what will run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workloads.describe.config import ExperimentConfig
from workloads.describe.plan import Plan
from workloads.render import balancer as bal_r
from workloads.render import brokers as brk_r
from workloads.render import keepalived, security


def render_files(plan: Plan, cfg: ExperimentConfig, material: security.Material | None = None,
                 root: str = security.CONTAINER_DIR) -> dict[str, str]:
    """A secured mode without ``material`` gets fresh secrets (every render is a new run's)."""
    if cfg.security.enabled and material is None:
        material = security.generate(plan, cfg.security)
    files: dict[str, str] = {"plan.json": json.dumps(plan.to_dict(), indent=2) + "\n"}
    files["brokers/docker-compose.yml"] = brk_r.compose_file(plan, cfg)
    for b in plan.brokers:
        files[f"brokers/{b.name}/mosquitto.conf"] = brk_r.mosquitto_conf(plan, cfg, b, material=material, root=root)
    if material is not None:
        files |= security.security_files(plan, cfg, material)
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
        if security.is_secret(rel, text):  # private keys and passwords: owner only, from the first byte
            path.unlink(missing_ok=True)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(text)
        else:
            path.write_text(text)
        written.append(path)
    return written
