"""The lab's directors: what each kind of balancer needs, how it is applied on a balancer host,
what its monitor is told, and how its connection table is read. IPVS is the system under test;
nftables (the kernel's NAT) and HAProxy (a TCP proxy) stand in where the kernel has no IPVS
(:mod:`workloads.describe.standin` says what each changes)."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from workloads.base.errors import LabError
from workloads.describe.config import ExperimentConfig
from workloads.describe.plan import Balancer
from workloads.hosts.lab import health, netns
from workloads.hosts.lab.state import STATE_DIR
from workloads.render.balancer import haproxy_cfg, ipvs_apply_steps

if TYPE_CHECKING:
    from workloads.hosts.lab.lab import Lab

HAPROXY_SESS = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); "
                "s.sendall(b'show sess\\n'); d=b''\nwhile (c:=s.recv(65536)): d+=c\nprint(d.decode())")


class Director:
    """One kind of balancer on the lab's balancer hosts."""

    name: ClassVar[str]
    tools: ClassVar[tuple[str, ...]]

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @classmethod
    def required_tools(cls, cfg: ExperimentConfig) -> list[str]:
        return list(cls.tools)

    def apply(self, bal: Balancer) -> None:
        raise NotImplementedError

    def monitor_args(self, bal: Balancer) -> list[str]:
        """What ``mqttlab monitor balancer`` needs beyond its kind to read this director."""
        return []

    def connections(self, bal: Balancer) -> str:
        """The director's table of the connections it holds, as text."""
        raise NotImplementedError


class Ipvs(Director):
    name = "ipvs"
    tools = ("ipvsadm", "ipvsadm-restore", "iptables-restore")

    @classmethod
    def required_tools(cls, cfg: ExperimentConfig) -> list[str]:
        return [*cls.tools, *(["keepalived"] if cfg.balancer.health_check.type != "none" else [])]

    def apply(self, bal: Balancer) -> None:
        """The very steps ``mqttlab host balancer-apply`` runs on Azure, then keepalived's checks."""
        for argv, stdin, check in ipvs_apply_steps(bal.host, bal.scheduler, self.lab.rendered):
            netns.run(argv, ns=self.lab.ns(bal.host), check=check, input=stdin)
        if bal.health_check.type != "none":
            health.start_keepalived(self.lab, bal)

    def connections(self, bal: Balancer) -> str:
        return netns.run(["ipvsadm", "-Lnc"], ns=self.lab.ns(bal.host), check=False).stdout


class Nftables(Director):
    name = "nftables"
    tools = ("nft", "conntrack")

    def apply(self, bal: Balancer) -> None:
        ns = self.lab.ns(bal.host)
        netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns)  # it forwards, but needs no IPVS conntrack
        netns.run(["nft", "-f", str(self.lab.files / bal.host / "nft-balancer.nft")], ns=ns)

    def connections(self, bal: Balancer) -> str:
        return netns.run(["conntrack", "-L", "-p", "tcp"], ns=self.lab.ns(bal.host), check=False).stdout


class Haproxy(Director):
    name = "haproxy"
    tools = ("haproxy",)

    def socket(self, host: str) -> Path:
        """Stats sockets live in the state folder: a run folder's path can exceed the 108 bytes a
        Unix socket path may have."""
        d = STATE_DIR / self.lab.lab_id
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{host}.sock"

    def apply(self, bal: Balancer) -> None:
        lab, ns = self.lab, self.lab.ns(bal.host)
        netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns)
        cfg = lab.files / bal.host / "haproxy-lab.cfg"
        # each proxied connection takes two descriptors; stay under this host's hard limit
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        maxconn = 20000 if hard == resource.RLIM_INFINITY else max(256, min(20000, (hard - 100) // 2))
        cfg.write_text(haproxy_cfg(bal, maxconn=maxconn, stats_socket=str(self.socket(bal.host))))
        log = lab.run_dir / "logs" / f"haproxy-{bal.host}.log"
        lab.spawn(f"haproxy-{bal.host}", ["haproxy", "-W", "-db", "-f", str(cfg)], bal.host, log)
        try:
            netns.wait_tcp(ns, bal.vip, bal.port)
        except LabError as exc:
            raise LabError(f"{exc}; haproxy said: {log.read_text()[-1500:]}") from None

    def monitor_args(self, bal: Balancer) -> list[str]:
        return ["--haproxy-socket", str(self.socket(bal.host))]

    def connections(self, bal: Balancer) -> str:
        return netns.run(["python3", "-c", HAPROXY_SESS, str(self.socket(bal.host))], check=False).stdout


DIRECTORS: dict[str, type[Director]] = {d.name: d for d in (Ipvs, Nftables, Haproxy)}
