"""Run directories whose truth is known, written in the documented format: for testing the
analysis (and for timing it on tens of millions of records) without running anything."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workloads.describe.names import client_id
from workloads.rundir.hist import Histogram
from workloads.rundir.records import DELIVERY_DTYPE

T0 = 1_800_000_000.0


@dataclass
class Truth:
    """What the synthetic run contains; every number the analysis must find."""

    pubs: dict[int, tuple[str, str, int]]  # pub -> (host, broker, sent)
    subs: dict[int, tuple[str, str]]  # sub -> (host, broker)
    lost: set[tuple[int, int, int]] = field(default_factory=set)  # (sub, pub, seq) never delivered
    dups: list[tuple[int, int, int]] = field(default_factory=list)  # (sub, pub, seq) delivered twice
    latency_ms: dict[int, float] = field(default_factory=dict)  # per subscriber
    drops_logged: list[tuple[str, str]] = field(default_factory=list)  # (broker, client id)
    sys_dropped: dict[str, int] = field(default_factory=dict)
    status: str = "complete"
    topology: str = "distributed"
    balancer: str = "ipvs"
    scheduler: str = "lc"
    qos: int = 1
    tag: int = 0x1234ABCD

    def cid(self, role: str, i: int) -> str:
        return client_id(self.tag, role, i)


def write_run(path: Path, t: Truth, chunk: int = 5_000_000) -> Path:
    brokers = sorted({b for _h, b, _s in t.pubs.values()} | {b for _h, b in t.subs.values()} | {"broker1", "broker2", "broker3"})
    hosts = sorted({h for h, _b, _s in t.pubs.values()} | {h for h, _b in t.subs.values()})
    plan = {
        "topology": t.topology,
        "brokers": [{"name": b, "address": f"10.2.0.{20 + i}", "port": 1883} for i, b in enumerate(brokers)],
        "clients": [{"host": h, "target_host": h if t.topology == "distributed" else hosts[0]} for h in hosts],
    }
    path.mkdir(parents=True, exist_ok=True)
    sent_total = sum(s for _h, _b, s in t.pubs.values())
    manifest = {"format_version": 1, "run_id": path.name, "status": t.status, "kind": "lab", "topology": t.topology, "balancer": t.balancer,
                "scheduler": t.scheduler, "tag": t.tag, "plan": plan, "started_at": T0, "ended_at": T0 + 60,
                "scenario": {"qos": t.qos, "publishers": len(t.pubs), "subscribers": len(t.subs), "messages": sent_total}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    for h in hosts:
        d = path / "bench" / h
        d.mkdir(parents=True, exist_ok=True)
        with (d / "clients-run0.csv").open("w") as f:
            f.write("client_id,role,index,worker,entry_point,local_addr,connected_at,disconnects\n")
            for i, (hh, _b, _s) in t.pubs.items():
                if hh == h:
                    f.write(f"{t.cid('pub', i)},pub,{i},0,10.3.0.10:1883,10.3.0.10:{40000 + i},{T0},0\n")
            for i, (hh, _b) in t.subs.items():
                if hh == h:
                    f.write(f"{t.cid('sub', i)},sub,{i},0,10.3.0.10:1883,10.3.0.10:{50000 + i},{T0},0\n")
        with (d / "publishers-run0.csv").open("w") as f:
            f.write("pub,client_id,planned,sent,acked,failed,first_send_s,last_send_s,max_behind_ms\n")
            for i, (hh, _b, s) in t.pubs.items():
                if hh == h:
                    f.write(f"{i},{t.cid('pub', i)},{s},{s},{s},0,{T0},{T0 + 10},0.5\n")
        lost_per_pair: dict[tuple[int, int], int] = {}
        for s, p, _q in t.lost:
            lost_per_pair[(s, p)] = lost_per_pair.get((s, p), 0) + 1
        dup_per_pair: dict[tuple[int, int], int] = {}
        for s, p, _q in t.dups:
            dup_per_pair[(s, p)] = dup_per_pair.get((s, p), 0) + 1
        with (d / "subscribers-run0.csv").open("w") as f:
            f.write("sub,client_id,pub,received,duplicates,out_of_order,foreign\n")
            for i, (hh, _b) in t.subs.items():
                if hh == h:
                    for p, (_ph, _pb, sent) in t.pubs.items():
                        f.write(f"{i},{t.cid('sub', i)},{p},{sent - lost_per_pair.get((i, p), 0)},{dup_per_pair.get((i, p), 0)},0,0\n")
        hist = Histogram()
        with (d / "deliveries-run0.bin").open("wb") as f:
            for i, (hh, _b) in t.subs.items():
                if hh != h:
                    continue
                for p, (_ph, _pb, sent) in t.pubs.items():
                    for start in range(0, sent, chunk):
                        seq = np.arange(start, min(sent, start + chunk), dtype=np.uint32)
                        keep = np.ones(len(seq), bool)
                        for (s, pp, q) in t.lost:
                            if s == i and pp == p and start <= q < start + len(seq):
                                keep[q - start] = False
                        seq = seq[keep]
                        extra = np.array([q for (s, pp, q) in t.dups if s == i and pp == p and start <= q < start + chunk], dtype=np.uint32)
                        rec = np.empty(len(seq) + len(extra), DELIVERY_DTYPE)
                        rec["sub"], rec["pub"] = i, p
                        rec["seq"] = np.concatenate([seq, extra])
                        rec["dup"] = np.concatenate([np.zeros(len(seq), np.uint32), np.ones(len(extra), np.uint32)])
                        send = (T0 * 1e9 + rec["seq"].astype(np.int64) * 1_000_000).astype(np.int64)
                        rec["send_ns"] = send
                        rec["recv_ns"] = send + int(t.latency_ms.get(i, 1.0) * 1e6)
                        f.write(rec.tobytes())
                        hist.record((rec["recv_ns"][rec["dup"] == 0] - rec["send_ns"][rec["dup"] == 0]) // 1000)
        (d / "latency-run0.json").write_text(json.dumps(hist.to_json()))
        with (d / "timeline-run0.csv").open("w") as f:
            f.write("second,worker,sent,acked,received\n")
            for k in range(10):
                f.write(f"{int(T0) + k},0,{sent_total // 20},{sent_total // 20},{sent_total * len(t.subs) // 20}\n")
    logs = path / "logs"
    logs.mkdir(exist_ok=True)
    for b in brokers:
        lines = []
        for i, (_h, bb, _s) in t.pubs.items():
            if bb == b:
                lines.append(f"2027-01-15T08:00:00: New client connected from 10.3.0.10:{40000 + i} as {t.cid('pub', i)} (p2, c1, k60).")
        for i, (_h, bb) in t.subs.items():
            if bb == b:
                lines.append(f"2027-01-15T08:00:00: New client connected from 10.3.0.10:{50000 + i} as {t.cid('sub', i)} (p2, c1, k60).")
        lines.append("2027-01-15T08:00:00: New client connected from 10.2.0.20:41000 as mqttlab-bridge-x-broker1-broker2 (p2, c0, k60).")
        for bb, client in t.drops_logged:
            if bb == b:
                lines.append(f"2027-01-15T08:00:05: Outgoing messages are being dropped for client {client}.")
        (logs / f"{b}.log").write_text("\n".join(lines) + "\n")
    mon = path / "monitor"
    mon.mkdir(exist_ok=True)
    with (mon / "brokers.csv").open("w") as f:
        f.write("time_s,broker,cpu_pct,mem_bytes,clients_connected,msgs_received,msgs_sent,msgs_dropped,net_rx_bytes,net_tx_bytes\n")
        for k in range(5):
            for b in brokers:
                dropped = t.sys_dropped.get(b, 0) * k // 4
                f.write(f"{T0 + k},{b},{10 * k},{1000000},{3},{k * 100},{k * 300},{dropped},{k * 1000},{k * 3000}\n")
    return path


def reference_truth(sent: int = 100) -> Truth:
    """Two publishers, four subscribers over three brokers, with one loss of each kind:
    a subscriber's queue (sub0 on broker1 misses pub0 10-19), a bridge (broker3's only
    subscriber misses pub1 50-54), and pub1's last message missed by everyone, which no broker reports."""
    t = Truth(
        pubs={0: ("ipvs1", "broker1", sent), 1: ("ipvs2", "broker2", sent)},
        subs={0: ("ipvs1", "broker1"), 1: ("ipvs2", "broker1"), 2: ("ipvs1", "broker2"), 3: ("ipvs2", "broker3")},
        latency_ms={0: 1.0, 1: 1.0, 2: 1.0, 3: 5.0},
        dups=[(2, 0, 3)],
        sys_dropped={"broker1": 15, "broker2": 0, "broker3": 0},
    )
    t.lost |= {(0, 0, q) for q in range(10, 20)}
    t.lost |= {(3, 1, q) for q in range(50, 55)}
    t.lost |= {(s, 1, sent - 1) for s in range(4)}
    t.drops_logged = [("broker1", t.cid("sub", 0)), ("broker1", "mqttlab-bridge-x-broker1-broker3-local")]
    return t


def write_fault_run(path: Path, health_checked: bool = True) -> tuple[Path, dict[str, Any]]:
    """A run in which broker2 failed 40 ms into publishing and came back 2 s later, with its
    clients' outages, their reconnections elsewhere and the balancer's view; returns the path and
    what the availability analysis must find.

    Messages are sent 1 ms apart (seq 40-99 inside the window). broker2's two subscribers lose
    seq 40-59 of both publishers (80 deliveries inside); sub0 loses pub0 10-14 (5 outside);
    sub3 gets pub0 50 twice (inside) and sub2 pub1 30 twice (outside). With health checks the
    balancer's first sample without broker2 is 0.55 s after the fault, and it sends it nothing
    more; without, it keeps it and sends it 6 more connections."""
    t = Truth(
        pubs={0: ("ipvs1", "broker1", 100), 1: ("ipvs2", "broker2", 100)},
        subs={0: ("ipvs1", "broker1"), 1: ("ipvs2", "broker2"), 2: ("ipvs1", "broker2"), 3: ("ipvs2", "broker3")},
        dups=[(3, 0, 50), (2, 1, 30)],
    )
    t.lost |= {(s, p, q) for s in (1, 2) for p in (0, 1) for q in range(40, 60)}
    t.lost |= {(0, 0, q) for q in range(10, 15)}
    write_run(path, t)
    start, end = T0 + 0.040, T0 + 2.040
    fault = {"spec": "broker2:restart@0.04s+2s", "kind": "broker", "target": "broker2", "action": "restart", "at_s": 0.04,
             "duration_s": 2.0, "t0": T0, "started_at": start, "ended_at": end, "detail": "SIGKILL pid 1"}
    (path / "faults.jsonl").write_text(json.dumps(fault) + "\n")
    back = {t.cid("sub", 1): (0.06, "ipvs2", "broker1"), t.cid("sub", 2): (0.26, "ipvs1", "broker3"), t.cid("pub", 1): (1.0, "ipvs2", "broker3")}
    for host in ("ipvs1", "ipvs2"):
        with (path / "bench" / host / "outages-run0.csv").open("w") as f:
            f.write("client_id,role,lost_at,back_at,attempts,local_before,local_after\n")
            for cid, (took, h, _b) in back.items():
                if h == host:
                    f.write(f"{cid},{cid.rsplit('-', 1)[1][:3]},{start:.6f},{start + took:.6f},2,10.3.0.10:1,10.3.0.10:2\n")
            if host == "ipvs1":  # an outage long before the fault belongs to no fault
                f.write(f"{t.cid('sub', 0)},sub,{T0 - 30:.6f},{T0 - 29:.6f},1,10.3.0.10:3,10.3.0.10:4\n")
    for cid, (_took, _h, broker) in back.items():
        with (path / "logs" / f"{broker}.log").open("a") as f:
            f.write(f"2027-01-15T08:00:01: New client connected from 10.3.0.10:2 as {cid} (p2, c1, k60).\n")
    with (path / "monitor" / "balancer-ipvs1.csv").open("w") as f:
        f.write("time_s,host,kind,virtual,real,active_conns,inactive_conns,total_conns,packets_in,packets_out,bytes_in,bytes_out,status\n")
        for k in range(8):
            now = T0 - 0.41 + 0.25 * k  # samples at -0.41, -0.16, +0.09, ..., +1.34 s
            for i, b in enumerate(("broker1", "broker2", "broker3")):
                gone = b == "broker2" and now >= start + 0.5 and health_checked
                if gone:
                    continue
                total = 10 + (k if b == "broker2" and not health_checked else 0)
                f.write(f"{now:.3f},ipvs1,ipvs,10.3.0.10:1883,10.2.0.{20 + i}:1883,3,0,{total},,,,,UP\n")
    truth = {
        "affected": sorted(back), "affected_by_host": {"ipvs1": 1, "ipvs2": 2},
        "reconnect_s": sorted(v[0] for v in back.values()), "back_on": {"broker1": 1, "broker3": 2},
        "lost_inside": 80, "lost_outside": 5, "dup_inside": 1, "dup_outside": 1,
        # first sample without broker2: T0 + 0.59 (k = 4)
        "balancer_out_after_s": {"ipvs1": 0.55 if health_checked else None},
        # its total connections: 11 at the last sample before the fault, 17 at the last in the window
        "sent_to_failed_broker": 0 if health_checked else 6,
    }
    return path, truth


def write_bridge_cut_run(path: Path, hub_drop: bool = False) -> tuple[Path, dict[str, Any]]:
    """A run in which the bridge broker1-broker2 (hub broker1, star) was cut 40 ms into
    publishing for 20 ms; returns the path and what the availability analysis must find.

    pub0 publishes on broker1, pub1 on broker2; sub0 listens on broker1, sub1 on broker2, sub2 on
    broker3. Into broker2 the hub dropped pub0 40-59 (sub1 misses them: 20 messages); out of
    broker2, broker2's queue for the bridge dropped pub1 40-49 (sub0 and sub2 miss them: 10
    messages, 20 deliveries); sub2's own queue dropped pub0 70-74 (not the bridge's doing). The
    brokers' counters over the span: broker1 20, broker2 10, then 7 more on broker1 long after.
    With ``hub_drop``, the hub also dropped pub1 55 on its other bridge (sub0 on the hub got it,
    sub2 on broker3 did not): broker1's counter holds it, and it was not lost out of broker2."""
    t = Truth(
        pubs={0: ("ipvs1", "broker1", 100), 1: ("ipvs2", "broker2", 100)},
        subs={0: ("ipvs1", "broker1"), 1: ("ipvs2", "broker2"), 2: ("ipvs1", "broker3")},
    )
    t.lost |= {(1, 0, q) for q in range(40, 60)} | {(s, 1, q) for s in (0, 2) for q in range(40, 50)} | {(2, 0, q) for q in range(70, 75)}
    t.lost |= {(2, 1, 55)} if hub_drop else set()
    write_run(path, t)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["plan"]["bridges"] = [{"name": f"broker1-{b}", "local": "broker1", "remote": b} for b in ("broker2", "broker3")]
    (path / "manifest.json").write_text(json.dumps(manifest))
    fault = {"spec": "bridge:broker1-broker2:cut@0.04s+0.02s", "kind": "bridge", "target": "broker1-broker2", "action": "cut", "at_s": 0.04,
             "duration_s": 0.02, "t0": T0, "started_at": T0 + 0.040, "ended_at": T0 + 0.060, "detail": "nft drop"}
    (path / "faults.jsonl").write_text(json.dumps(fault) + "\n")
    with (path / "monitor" / "brokers.csv").open("w") as f:
        f.write("time_s,broker,cpu_pct,mem_bytes,clients_connected,msgs_received,msgs_sent,msgs_dropped,net_rx_bytes,net_tx_bytes\n")
        extra = int(hub_drop)
        for k, counts in ((-1, (3, 0, 0)), (0, (3, 0, 0)), (2, (23 + extra, 10, 5)), (30, (30 + extra, 10, 5))):
            for b, n in zip(("broker1", "broker2", "broker3"), counts, strict=True):
                f.write(f"{T0 + k},{b},1,1000000,3,0,0,{n},0,0\n")
    return path, {"bridge_lost_messages": {"into broker2": 20, "out of broker2": 10}, "bridge_dropped_sys": {"broker1": 20 + extra, "broker2": 10}}
