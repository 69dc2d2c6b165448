"""The broker VM's steps: the run's secrets, the broker containers (Docker, ipvlan L3 on the VM's NIC),
and from a balancer VM the probe that every broker answers MQTT.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from workloads.base.errors import LabError
from workloads.describe.names import container
from workloads.hosts.azure.common import MATERIAL, RENDERED, config_and_plan, render_to_disk
from workloads.hosts.shell import NotInstalled
from workloads.hosts.shell import run as sh

CONTAINER_UID = 1883  # the mosquitto user of the eclipse-mosquitto image


def cmd_security_install(args: argparse.Namespace) -> int:
    """Store the secrets piped in on stdin (never an argument), owner-only, after checking them."""
    from workloads.render import security

    cfg, plan = config_and_plan(args)
    text = sys.stdin.read()
    security.material_from_json(text, plan, cfg.security, "stdin")
    MATERIAL.parent.mkdir(parents=True, exist_ok=True)
    MATERIAL.unlink(missing_ok=True)
    with os.fdopen(os.open(MATERIAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)
    print(f"security material for mode {cfg.security.mode} stored in {MATERIAL}")
    return 0


def stray_addresses(ip_addr_output: str, wanted: Sequence[str]) -> list[str]:
    """Broker addresses found on the host's own interface (``ip -4 -o addr show`` lines), as
    ``addr/len``. cloud-init's Azure datasource puts every secondary IP configuration on eth0
    on first boot (``apply_network_config_for_secondary_ips``, default true); the host would
    then answer for the brokers itself instead of handing the packets to the ipvlan children."""
    found = []
    for line in ip_addr_output.splitlines():
        parts = line.split()
        if "inet" in parts:
            cidr = parts[parts.index("inet") + 1]
            if cidr.split("/")[0] in wanted:
                found.append(cidr)
    return found


def cmd_brokers_up(args: argparse.Namespace) -> int:
    cfg, plan = config_and_plan(args)
    render_to_disk(cfg, plan)
    d = RENDERED / "brokers"
    shown = sh(["ip", "-4", "-o", "addr", "show", "dev", args.parent], check=False).stdout
    for cidr in stray_addresses(shown, [b.address for b in plan.brokers]):
        sh(["ip", "addr", "del", cidr, "dev", args.parent])
        print(f"removed {cidr} from {args.parent}: it belongs to a broker container")
    if cfg.security.enabled:
        from workloads.render.security import give_to

        for b in plan.brokers:
            give_to(d / b.name, CONTAINER_UID)
    sh(["docker", "compose", "-p", "mqttlab", "-f", str(d / "docker-compose.yml"), "up", "-d", "--force-recreate"], timeout=600)
    for b in plan.brokers:
        end = time.time() + 60
        while True:
            cp = sh(["docker", "exec", container(b.name), "mosquitto_sub", "-h", b.address, "-p", str(b.port), "-t", "$SYS/broker/uptime",
                     "-C", "1", "-W", "5"], check=False, timeout=15)
            if cp.returncode == 0:
                break
            if time.time() > end:
                raise LabError(f"{b.name} does not answer on {b.address}:{b.port}: {cp.stderr.strip()}; {container_story(container(b.name))}")
            time.sleep(1)
        print(f"{b.name} up on {b.address}:{b.port}")
    return 0


def container_story(name: str, lines: int = 15) -> str:
    """What Docker says of a container that does not answer: its state and the end of its log
    (a broker that exited on a bad configuration says why only there)."""
    state = sh(["docker", "inspect", "-f", "{{.State.Status}} (exit {{.State.ExitCode}}) {{.State.Error}}", name], check=False, timeout=30)
    logs = sh(["docker", "logs", "--tail", str(lines), name], check=False, timeout=30)
    said = " | ".join(line for line in (logs.stdout + logs.stderr).splitlines() if line.strip())
    return f"container {name}: {(state.stdout or state.stderr).strip() or 'no state'}; its log: {said or 'empty'}"


PROBE_TIMEOUT_S = 15.0  # one subscription: a stopped container's address drops the SYN, so connect hangs


def probe_brokers(targets: Sequence[tuple[str, str, int]], attempts: int = 30, pause_s: float = 2.0, within_s: float = 120.0) -> list[str]:
    """Each broker answers a real MQTT subscription to its ``$SYS`` uptime from this host, or the
    unreachable ones are named. Run on a balancer host: the broker host cannot reach its own
    ipvlan children, and a broker the balancers cannot reach is otherwise found only when the
    subscribers time out. An attempt that hangs (a stopped container: nothing answers its
    address) counts as a failed one, and no attempt starts after ``within_s``."""
    pending = {name: (addr, port) for name, addr, port in targets}
    answered: list[str] = []
    last: dict[str, str] = {}
    end = time.monotonic() + within_s
    for i in range(attempts):
        for name, (addr, port) in list(pending.items()):
            try:
                cp = sh(["mosquitto_sub", "-h", addr, "-p", str(port), "-t", "$SYS/broker/uptime", "-C", "1", "-W", "5"], check=False,
                        timeout=PROBE_TIMEOUT_S)
            except LabError as exc:
                if isinstance(exc, NotInstalled):
                    raise
                last[name] = f"no answer within {PROBE_TIMEOUT_S:g}s"
                continue
            if cp.returncode == 0:
                answered.append(f"{name} {addr}:{port} answers: {cp.stdout.strip()}")
                del pending[name]
            else:
                last[name] = (cp.stderr or cp.stdout).strip()[-200:] or f"exit {cp.returncode}"
        if not pending:
            return answered
        if time.monotonic() >= end:
            attempts = i + 1
            break
        if i + 1 < attempts:
            time.sleep(pause_s)
    raise LabError("brokers unreachable from this host after " f"{attempts} attempts: "
                   + ", ".join(f"{n} {pending[n][0]}:{pending[n][1]} ({last.get(n, '')})" for n in sorted(pending))
                   + "; check the broker NIC's secondary IP configurations, the ipvlan network and the NSG")


def cmd_probe_brokers(args: argparse.Namespace) -> int:
    _, plan = config_and_plan(args)
    for line in probe_brokers([(b.name, b.address, b.port) for b in plan.brokers]):
        print(line)
    return 0


def cmd_brokers_down(args: argparse.Namespace) -> int:
    f = RENDERED / "brokers" / "docker-compose.yml"
    if f.exists():
        sh(["docker", "compose", "-p", "mqttlab", "-f", str(f), "down", "--remove-orphans"], timeout=300, check=False)
    return 0
