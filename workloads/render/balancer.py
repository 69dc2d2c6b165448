"""Renderers for the balancer hosts: plan -> IPVS rules, SNAT/forward rules, sysctls, and the
stand-in balancers (nftables DNAT, HAProxy) the local lab uses where the kernel has no IPVS.

All pure functions of the plan. The interface facing the VNet is ``eth0`` on Azure, and the lab
names its link ``eth0`` inside every namespace, so the same files apply in both places.
"""

from __future__ import annotations

from collections.abc import Mapping

from workloads.describe.plan import Balancer, Plan
from workloads.describe.standin import balancing
from workloads.render.probe import CONNACK, DISCONNECT, connect_packet

IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "mh")


def ipvs_rules(bal: Balancer) -> str:
    """``ipvsadm-restore`` input, written exactly as ``ipvsadm -Sn`` prints it back."""
    vs = f"{bal.vip}:{bal.port}"
    lines = [f"-A -t {vs} -s {bal.scheduler}"]
    for rs in bal.real_servers:
        lines.append(f"-a -t {vs} -r {rs.address}:{rs.port} -m -w {rs.weight}")
    return "\n".join(lines) + "\n"


def ipvs_timeouts(bal: Balancer) -> str:
    """Arguments for ``ipvsadm --set`` (tcp tcpfin udp seconds); not part of the save format."""
    return f"{bal.timeout_tcp} {bal.timeout_tcpfin} {bal.timeout_udp}\n"


def _forward_accepts(bal: Balancer) -> list[tuple[str, str]]:
    """(broker address, port) pairs whose traffic may cross this director."""
    return [(rs.address, str(rs.port)) for rs in bal.real_servers]


def iptables_rules(bal: Balancer, out_interface: str = "eth0") -> str:
    """``iptables-restore`` input: the reference's FORWARD policy and the centralized SNAT."""
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    for addr, port in _forward_accepts(bal):
        lines.append(f"-A FORWARD -d {addr}/32 -p tcp -m tcp --dport {port} -j ACCEPT")
        lines.append(f"-A FORWARD -s {addr}/32 -p tcp -m tcp --sport {port} -j ACCEPT")
    lines += ["COMMIT", "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
    for src in bal.snat_sources:
        lines.append(f"-A POSTROUTING -s {src} -o {out_interface} -j MASQUERADE")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_rules(bal: Balancer, out_interface: str = "eth0") -> str:
    """The nftables equivalent of :func:`iptables_rules`, in a table of its own."""
    fwd = []
    for addr, port in _forward_accepts(bal):
        fwd.append(f"\t\tip daddr {addr} tcp dport {port} accept")
        fwd.append(f"\t\tip saddr {addr} tcp sport {port} accept")
    snat = [f'\t\tip saddr {src} oifname "{out_interface}" masquerade' for src in bal.snat_sources]
    return _nft_table("mqttlab", [
        ("forward", "type filter hook forward priority filter; policy drop;", ["\t\tct state related,established accept", *fwd]),
        ("postrouting", "type nat hook postrouting priority srcnat; policy accept;", snat),
    ])


def _nft_table(name: str, chains: list[tuple[str, str, list[str]]]) -> str:
    """An ``nft -f`` table: (chain name, its ``type ... hook ...`` line, its rule lines)."""
    lines = [f"table ip {name} {{"]
    for chain, head, rules in chains:
        lines += [f"\tchain {chain} {{", f"\t\t{head}", *rules, "\t}"]
    return "\n".join([*lines, "}"]) + "\n"


Step = tuple[list[str], str | None, bool]  # argv, standard input, must succeed


def ipvs_apply_steps(host: str, scheduler: str, rendered: Mapping[str, str]) -> list[Step]:
    """The reference's sequence on a director, as commands over the rendered files: load the
    modules, set the sysctls, ``ipvsadm -C``, ``ipvsadm-restore``, timeouts, iptables. The
    Azure host step and the local lab both run exactly this, each in its own place."""
    steps: list[Step] = [(["modprobe", "-a", "ip_vs", f"ip_vs_{scheduler}"], None, False)]  # built in on some kernels
    steps += [(["sysctl", "-w", line.replace(" ", "")], None, True) for line in rendered[f"{host}/sysctl.conf"].splitlines()]
    steps += [
        (["ipvsadm", "-C"], None, True),
        (["ipvsadm-restore"], rendered[f"{host}/ipvs.rules"], True),
        (["ipvsadm", "--set", *rendered[f"{host}/ipvs-timeouts"].split()], None, True),
        (["iptables-restore"], rendered[f"{host}/rules.v4"], True),
    ]
    if f"{host}/keepalived.conf" in rendered:  # health-checked: keepalived creates the virtual server itself
        steps = [s for s in steps if s[0][0] != "ipvsadm-restore"]
    return steps


def sysctl_conf(plan: Plan, host: str) -> str:
    return "".join(f"{k} = {v}\n" for k, v in plan.sysctls(host).items())


def nft_balancer(bal: Balancer) -> str:
    """Kernel DNAT balancing for kernels without IPVS: weighted round robin with ``numgen``, or a
    hash of the client's address (``jhash``) for the source-hashing schedulers (sh, mh).

    Each real server takes ``weight`` slots of the counter or hash, so weights are honoured; least
    connection has no nftables equivalent, which the lab reports (workloads/describe/standin.py).
    """
    slots: list[str] = []
    for rs in bal.real_servers:
        slots += [rs.address] * rs.weight
    mapping = ", ".join(f"{i} : {addr}" for i, addr in enumerate(slots))
    port = bal.real_servers[0].port
    hashed = balancing("nftables", bal.scheduler).scheduler == "sh"
    pick = f"jhash ip saddr mod {len(slots)}" if hashed else f"numgen inc mod {len(slots)}"
    dnat = f"ip daddr {bal.vip} tcp dport {bal.port} dnat to {pick} map {{ {mapping} }} : {port}"
    brokers = ", ".join(rs.address for rs in bal.real_servers)
    snat = [f"\t\tip saddr {src} ip daddr {{ {brokers} }} masquerade" for src in bal.snat_sources]
    return _nft_table("mqttlab_lb", [
        ("prerouting", "type nat hook prerouting priority dstnat; policy accept;", [f"\t\t{dnat}"]),
        ("output", "type nat hook output priority -100; policy accept;", [f"\t\t{dnat}"]),
        ("postrouting", "type nat hook postrouting priority srcnat; policy accept;", snat),
    ])


def haproxy_cfg(bal: Balancer, maxconn: int = 20000, stats_socket: str | None = None) -> str:
    """HAProxy in TCP mode; a full proxy, so brokers see the balancer as the client (no SNAT)."""
    algo = balancing("haproxy", bal.scheduler).scheduler
    lines = [
        "global",
        f"\tmaxconn {maxconn}",
        *([f"\tstats socket {stats_socket} mode 600 level admin"] if stats_socket else []),
        "defaults",
        "\tmode tcp",
        "\ttimeout connect 5s",
        f"\ttimeout client {bal.timeout_tcp}s",
        f"\ttimeout server {bal.timeout_tcp}s",
        "frontend mqtt",
        f"\tbind {bal.vip}:{bal.port}",
        "\tdefault_backend brokers",
        "backend brokers",
        f"\tbalance {algo}",
    ]
    if bal.scheduler == "mh":
        lines.append("\thash-type consistent")
    lines += haproxy_checks(bal)
    check = haproxy_server_check(bal)
    for rs in bal.real_servers:
        lines.append(f"\tserver {rs.broker} {rs.address}:{rs.port} weight {rs.weight}{check}")
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def haproxy_checks(bal: Balancer) -> list[str]:
    """The same health check as keepalived's: for ``mqtt`` an MQTT CONNECT must be answered by
    an accepting CONNACK (the bytes of :mod:`workloads.render.probe`), for ``tcp`` the port must accept."""
    hc = bal.health_check
    if hc.type == "none":
        return []
    lines = [f"\ttimeout check {_ms(hc.timeout)}"]
    if hc.type == "mqtt":
        lines += [
            "\toption tcp-check",
            "\ttcp-check connect",
            f"\ttcp-check send-binary {connect_packet(f'mqttlab-probe-{bal.host}').hex()}",
            f"\ttcp-check expect binary {CONNACK.hex()}",  # any CONNACK: the broker answers MQTT
            f"\ttcp-check send-binary {DISCONNECT.hex()}",
        ]
    return lines


def haproxy_server_check(bal: Balancer) -> str:
    """Per-server check timing: out after ``retries`` failures (``fall``), back on the first pass
    (``rise 1``, as keepalived puts a server back after one good check)."""
    hc = bal.health_check
    if hc.type == "none":
        return ""
    return f" check inter {_ms(hc.interval)} fall {hc.retries} rise 1"
