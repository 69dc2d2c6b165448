"""Health-checked IPVS: plan -> ``keepalived.conf`` per balancer host, and how to start it.

IPVS alone keeps scheduling new connections to a broker that died. keepalived (the standard
companion of IPVS) owns the virtual server instead of ``ipvsadm-restore``: it creates the same
service, scheduler, NAT real servers and weights, and removes a real server after ``retries``
failed checks ``interval`` seconds apart, adding it back on the first check that passes. Only its
checker runs (``--check``): no VRRP, the plan has one director per entry point.

The ``mqtt`` check runs ``workloads/render/probe.sh`` (CONNECT, expect CONNACK; bash, so a check costs
no interpreter start) as a MISC_CHECK; the ``tcp`` check is keepalived's own TCP_CHECK (the port
accepts).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from workloads.describe.config import HealthCheckConfig
from workloads.describe.plan import Balancer

PROBE = Path(__file__).with_name("probe.sh")
SHELL = "/bin/bash"  # the probe uses bash's /dev/tcp and read -t: nothing else is started
MISC_GRACE_S = 5


def _num(x: float) -> str:
    """keepalived takes fractional seconds (2.x); print whole ones without a decimal point."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def probe_command(address: str, port: int, timeout: float, shell: str = SHELL, probe: Path = PROBE) -> str:
    return f"{shell} {probe} {address} {port} {_num(timeout)}"


def _checker(hc: HealthCheckConfig, address: str, port: int, shell: str, probe: Path) -> list[str]:
    # keepalived fails a server after ``retry`` + 1 failed checks, each retry delay_before_retry apart
    common = [f"retry {hc.retries - 1}", f"delay_before_retry {_num(hc.interval)}"]
    if hc.type == "mqtt":
        # the probe ends itself at ``timeout`` (its watchdog covers the connect too);
        # misc_timeout (whole seconds only) is keepalived's hard stop for a probe that could not
        # even start, so it leaves room for a slow start: under CPU emulation, with three checks
        # and a monitor sharing two emulated CPUs, a 3 s stop took a live broker out
        return ["MISC_CHECK {", f'    misc_path "{probe_command(address, port, hc.timeout, shell, probe)}"',
                f"    misc_timeout {math.ceil(hc.timeout) + MISC_GRACE_S}", *(f"    {c}" for c in common), "}"]
    return ["TCP_CHECK {", f"    connect_port {port}", f"    connect_timeout {_num(hc.timeout)}", *(f"    {c}" for c in common), "}"]


def keepalived_conf(bal: Balancer, shell: str = SHELL, probe: Path = PROBE) -> str:
    """The balancer's virtual server with health-checked real servers; ``""`` without checks."""
    hc = bal.health_check
    if hc.type == "none":
        return ""
    lines = [
        f"# {bal.host}: {bal.vip}:{bal.port} {bal.scheduler} NAT, {hc.type} check every {_num(hc.interval)} s, "
        f"out after {hc.retries} failures, timeout {_num(hc.timeout)} s",
        "global_defs {",
        f"    router_id mqttlab-{bal.host}",
        "    script_user root",
        "    enable_script_security",  # keepalived runs the probe only if no other user can change it
        f"    lvs_timeouts tcp {bal.timeout_tcp} tcpfin {bal.timeout_tcpfin} udp {bal.timeout_udp}",
        "}",
        "",
        f"virtual_server {bal.vip} {bal.port} {{",
        f"    delay_loop {_num(hc.interval)}",
        f"    lb_algo {bal.scheduler}",
        f"    lb_kind {bal.forwarding.upper()}",
        "    protocol TCP",
    ]
    for rs in bal.real_servers:
        lines += ["", f"    real_server {rs.address} {rs.port} {{", f"        weight {rs.weight}"]
        lines += [f"        {c}" for c in _checker(hc, rs.address, rs.port, shell, probe)]
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def keepalived_argv(conf: Path, run_dir: Path, foreground: bool = True) -> list[str]:
    """Checker only, its own pid files (several directors may share one machine in the lab)."""
    argv = ["keepalived", "--check", "--log-console", "--log-detail", "-f", str(conf), "-p", str(run_dir / "keepalived.pid"),
            "-c", str(run_dir / "keepalived-checkers.pid"), "-r", str(run_dir / "keepalived-vrrp.pid")]
    return argv + (["--dont-fork"] if foreground else [])


def install_probe(directory: Path) -> Path:
    """Copy the probe where only root can write (``enable_script_security`` refuses a script
    in a folder another user could change, e.g. a clone in a home directory), and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PROBE.name
    shutil.copyfile(PROBE, target)
    target.chmod(0o755)
    return target


def prepare(bal: Balancer, directory: Path, shell: str = SHELL) -> tuple[Path, list[str]]:
    """Install the probe and this host's configuration in ``directory`` (root's only); returns
    the configuration and keepalived's command line (foreground; callers that want a daemon drop
    ``--dont-fork``)."""
    probe = install_probe(directory)
    conf = directory / "keepalived.conf"
    conf.write_text(keepalived_conf(bal, shell=shell, probe=probe))
    return conf, keepalived_argv(conf, directory)


def ipvs_reals(ipvsadm_ln: str, vip: str, port: int) -> set[str]:
    """Real servers (``addr:port``) of virtual server ``vip:port`` in ``ipvsadm -Ln`` output."""
    out: set[str] = set()
    inside = False
    for line in ipvsadm_ln.splitlines():
        parts = line.split()
        if parts[:1] in (["TCP"], ["UDP"]):
            inside = parts[1] == f"{vip}:{port}"
        elif inside and parts[:1] == ["->"] and len(parts) > 1 and parts[1][0].isdigit():
            out.add(parts[1])
    return out
