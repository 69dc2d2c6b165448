"""What stands in for IPVS when the kernel has none, and how the run says so.

The default stand-in is the kernel's own NAT (nftables DNAT), for every scheduler: like IPVS in
NAT mode it rewrites packets in the kernel, keeps one TCP connection from the client to the
broker, adds no process on the shared cores and no buffers of its own, and the broker sees the
client's address (or the masquerading balancer's in the centralized topology, as with IPVS).
HAProxy, a full TCP proxy that terminates every connection, changed the experiment's outcome
(README, "The faithful stand-in"), so it is only used when asked for (``--balancer haproxy``).

What nftables expresses exactly: ``rr`` (``numgen inc``), ``wrr`` (the same counter over weight
slots), ``sh`` (``jhash ip saddr``). What it cannot: least-connection (``lc``, ``wlc``) needs a
per-server connection count at scheduling time, which nftables has no expression for; there the
stand-in is round robin (weighted for ``wlc``), and the summary and manifest say so. With MQTT's
long-lived connections opened in one burst both spread the clients evenly; they differ when
connections close and reopen unevenly. ``mh`` (maglev hashing over the source) is approximated by
the same source hash as ``sh``.

A run is named for what ran, beside what it stands in for: the run id, the manifest and every
table, legend and report say ``nftables-rr standing in for ipvs-lc``, never plain ``lc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Per stand-in, per IPVS scheduler asked for: the scheduler it really runs (in its own name, as
# its configuration spells it) and what that does. The only place the mapping is written: the
# renderers (workloads/render/balancer.py), the run id, the manifest and every report read it.
NFTABLES = {
    "rr": ("rr", "round robin (numgen inc)"),
    "wrr": ("wrr", "weighted round robin (numgen inc over weight slots)"),
    "sh": ("sh", "source hashing (jhash ip saddr over weight slots)"),
    "lc": ("rr", "round robin (numgen inc): nftables has no least-connection scheduler"),
    "wlc": ("wrr", "weighted round robin (numgen inc over weight slots): nftables has no least-connection scheduler"),
    "mh": ("sh", "source hashing (jhash ip saddr): nftables has no maglev hashing"),
}
HAPROXY = {"rr": ("roundrobin", "roundrobin"), "wrr": ("roundrobin", "roundrobin"), "lc": ("leastconn", "leastconn"),
           "wlc": ("leastconn", "leastconn"), "sh": ("source", "source"), "mh": ("source", "source consistent hash")}
KINDS = {"ipvs": "kernel NAT", "nftables": "kernel NAT", "haproxy": "TCP proxy"}
IPVS = "ipvs"  # what every experiment asks for: the Azure deployment runs nothing else


@dataclass(frozen=True)
class Balancing:
    """What balanced a run beside what the experiment asked for, so that no number is read as
    IPVS lc when nftables round robin produced it."""

    balancer: str
    scheduler: str  # in the balancer's own terms: nftables rr, haproxy leastconn, ipvs lc
    requested_balancer: str
    requested_scheduler: str
    how: str

    @property
    def kind(self) -> str:
        return KINDS[self.balancer]

    @property
    def stood_in(self) -> bool:
        return self.balancer != self.requested_balancer

    @property
    def exact(self) -> bool:
        """Whether what ran is the asked scheduler in kernel NAT, as IPVS would do it."""
        return self.kind == KINDS[self.requested_balancer] and self.scheduler == self.requested_scheduler

    @property
    def label(self) -> str:
        return f"{self.balancer}-{self.scheduler}"

    @property
    def requested_label(self) -> str:
        return f"{self.requested_balancer}-{self.requested_scheduler}"

    @property
    def stands_in_for(self) -> str:
        """The requested balancer and scheduler when something else ran, else empty."""
        return self.requested_label if self.stood_in else ""

    @property
    def text(self) -> str:
        """The name every table, legend and report gives the run: ``nftables-rr standing in for ipvs-lc``."""
        return f"{self.label} standing in for {self.requested_label}" if self.stood_in else self.label

    @property
    def slug(self) -> str:
        """The same as ``text``, fit for a directory name (the run id)."""
        return f"{self.label}-for-{self.requested_label}" if self.stood_in else self.label

    def record(self) -> dict[str, Any]:
        """The manifest's ``stood_in``: what balanced the run and how faithfully it matches IPVS NAT."""
        return {"for": f"{self.requested_balancer} {self.requested_scheduler}", "by": self.balancer, "kind": self.kind,
                "scheduler": self.how, "exact": self.exact}

    def manifest_fields(self) -> dict[str, Any]:
        return {"balancer": self.balancer, "scheduler": self.scheduler, "requested_balancer": self.requested_balancer,
                "requested_scheduler": self.requested_scheduler, "balancing": self.text, "stood_in": self.record()}


def balancing(balancer: str, scheduler: str) -> Balancing:
    """What runs when ``balancer`` is asked to carry out the IPVS scheduler ``scheduler``."""
    if balancer not in KINDS:
        raise ValueError(f"balancer {balancer!r}: choose one of {', '.join(KINDS)}")
    if scheduler not in NFTABLES:  # every IPVS scheduler has a row in each stand-in's table
        raise ValueError(f"scheduler {scheduler!r}: choose one of {', '.join(NFTABLES)}")
    if balancer == IPVS:
        return Balancing(IPVS, scheduler, IPVS, scheduler, scheduler)
    ran, how = (NFTABLES if balancer == "nftables" else HAPROXY)[scheduler]
    return Balancing(balancer, ran, IPVS, scheduler, how)


COLUMNS = ("balancer", "scheduler", "stands_in_for", "requested_balancer", "requested_scheduler", "balancing")


def balancing_columns(ran: Balancing | None) -> dict[str, str | None]:
    """What ran (balancer, scheduler), what it stood in for, what was asked, and the name tables and
    legends give it, as columns of their own: no table shows a requested ``lc`` as if it ran.
    None for each where nothing balanced (a standalone bench)."""
    if ran is None:
        return dict.fromkeys(COLUMNS)
    return dict(zip(COLUMNS, (ran.balancer, ran.scheduler, ran.stands_in_for, ran.requested_balancer, ran.requested_scheduler, ran.text),
                    strict=True))


def from_manifest(m: dict[str, Any]) -> Balancing | None:
    """What balanced a recorded run, also for runs written before the manifest said so: there
    ``scheduler`` is the one asked for and ``stood_in`` (where present) says who carried it out.
    None for a run without a balancer (a standalone bench)."""
    if m.get("requested_scheduler") and m.get("balancer"):
        return balancing(str(m["balancer"]), str(m["requested_scheduler"]))
    si = m.get("stood_in")
    if isinstance(si, dict) and si.get("by") and str(si.get("for", "")).startswith(f"{IPVS} "):
        return balancing(str(si["by"]), str(si["for"]).split(" ", 1)[1])
    if m.get("balancer") and m.get("scheduler"):
        return balancing(str(m["balancer"]), str(m["scheduler"]))
    return None


def default_standin(scheduler: str) -> tuple[str, str]:
    """(balancer, note) for a kernel without IPVS: nftables, with what it does for ``scheduler``."""
    how = balancing("nftables", scheduler).how
    return "nftables", f"no IPVS in this kernel: nftables kernel NAT stands in for IPVS {scheduler}, {how} (use --vm for real IPVS)"


def explicit_note(balancer: str, scheduler: str) -> str:
    """The note for a stand-in the user chose, so a run never hides what balanced it."""
    b = balancing(balancer, scheduler)
    if balancer == "nftables" and not b.exact:
        return f"nftables balances by {b.how}; IPVS {scheduler} is not available there"
    if balancer == "haproxy":
        return (f"haproxy (TCP proxy, {b.how}) instead of IPVS {scheduler}: it terminates every connection, "
                "so brokers see the balancer as the client and its buffers sit in the data path")
    return ""


def stood_in(balancer: str, scheduler: str) -> dict[str, Any]:
    """The manifest's record of what balanced the run and how faithfully it matches IPVS NAT."""
    return balancing(balancer, scheduler).record()
