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
"""

from __future__ import annotations

from typing import Any

EXACT = {"rr": "round robin (numgen inc)", "wrr": "weighted round robin (numgen inc over weight slots)",
         "sh": "source hashing (jhash ip saddr over weight slots)"}
APPROXIMATE = {"lc": "round robin (numgen inc): nftables has no least-connection scheduler",
               "wlc": "weighted round robin (numgen inc over weight slots): nftables has no least-connection scheduler",
               "mh": "source hashing (jhash ip saddr): nftables has no maglev hashing"}
HAPROXY = {"rr": "roundrobin", "wrr": "roundrobin", "lc": "leastconn", "wlc": "leastconn", "sh": "source", "mh": "source consistent hash"}


def default_standin(scheduler: str) -> tuple[str, str]:
    """(balancer, note) for a kernel without IPVS: nftables, with what it does for ``scheduler``."""
    how = EXACT.get(scheduler) or APPROXIMATE[scheduler]
    return "nftables", f"no IPVS in this kernel: nftables kernel NAT stands in for IPVS {scheduler}, {how} (use --vm for real IPVS)"


def explicit_note(balancer: str, scheduler: str) -> str:
    """The note for a stand-in the user chose, so a run never hides what balanced it."""
    if balancer == "nftables" and scheduler in APPROXIMATE:
        return f"nftables balances by {APPROXIMATE[scheduler]}; IPVS {scheduler} is not available there"
    if balancer == "haproxy":
        return (f"haproxy (TCP proxy, {HAPROXY[scheduler]}) instead of IPVS {scheduler}: it terminates every connection, "
                "so brokers see the balancer as the client and its buffers sit in the data path")
    return ""


def stood_in(balancer: str, scheduler: str) -> dict[str, Any]:
    """The manifest's record of what balanced the run and how faithfully it matches IPVS NAT."""
    if balancer == "ipvs":
        return {"for": f"ipvs {scheduler}", "by": "ipvs", "kind": "kernel NAT", "scheduler": scheduler, "exact": True}
    if balancer == "nftables":
        return {"for": f"ipvs {scheduler}", "by": "nftables", "kind": "kernel NAT", "scheduler": EXACT.get(scheduler) or APPROXIMATE[scheduler],
                "exact": scheduler in EXACT}
    return {"for": f"ipvs {scheduler}", "by": "haproxy", "kind": "TCP proxy", "scheduler": HAPROXY[scheduler], "exact": False}
