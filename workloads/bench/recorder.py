"""What a worker measures and writes: per-delivery records, per-second counts, events, and the
per-client result files at the end (docs/run-format.md).

Deliveries are appended to plain ``array`` columns on the hot path (a few hundred nanoseconds
each) and written to disk as numpy records twice a second, so a crash loses at most half a
second of records and the run directory still loads.
"""

from __future__ import annotations

import array
import json
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from workloads.bench.payload import HEADER
from workloads.bench.state import ClientState
from workloads.describe.scenario import Scenario
from workloads.rundir.hist import Histogram
from workloads.rundir.records import DELIVERY_DTYPE, INTENDED_DTYPE

_unpack = HEADER.unpack_from


class Recorder:
    """One worker's records; the file names carry ``label`` so processes never share a file."""

    def __init__(self, out: Path, label: str, worker: int, tag: int, scenario: Scenario) -> None:
        self.out = out
        self.label = label
        self.worker = worker
        self.tag = tag
        self.sc = scenario
        out.mkdir(parents=True, exist_ok=True)
        self.events: IO[str] = (out / f"events-{label}.csv").open("a")
        self.timeline: IO[str] = (out / f"timeline-{label}.csv").open("a")
        self.deliveries: IO[bytes] = (out / f"deliveries-{label}.bin").open("ab")
        self.intended: IO[bytes] = (out / f"intended-{label}.bin").open("ab")
        if self.events.tell() == 0:
            self.events.write("time_s,client_id,event,detail\n")
        if self.timeline.tell() == 0:
            self.timeline.write("second,worker,sent,acked,received\n")
        self.rec_sub = array.array("I")
        self.rec_pub = array.array("I")
        self.rec_seq = array.array("I")
        self.rec_dup = array.array("I")
        self.rec_send = array.array("q")
        self.rec_recv = array.array("q")
        self.rec_intended = array.array("q")
        self.hist = Histogram()
        self.hist_intended = Histogram()
        self.sec_counts: dict[int, list[int]] = {}
        self.flushed = 0
        self.outages: list[str] = []  # client_id,role,lost_at,back_at,attempts,local_before,local_after

    @property
    def received(self) -> int:
        return len(self.rec_sub) + self.flushed

    def count(self, kind: int, n: int = 1) -> None:
        """Per-second timeline: kind 0 sent, 1 acked, 2 received."""
        self.count_at(int(time.time()), kind, n)

    def count_at(self, sec: int, kind: int, n: int) -> None:
        c = self.sec_counts.get(sec)
        if c is None:
            c = self.sec_counts[sec] = [0, 0, 0]
        c[kind] += n

    def event(self, st: ClientState, name: str, detail: str = "") -> None:
        self.events.write(f"{time.time():.6f},{st.spec.client_id},{name},{detail}\n")

    def outage(self, st: ClientState, back_at: float) -> None:
        """An established connection that was lost and is back: when, after how many attempts, from where to where."""
        self.outages.append(f"{st.spec.client_id},{st.spec.role},{st.lost_at:.6f},{back_at:.6f},{st.failures},{st.lost_local},{st.local}")

    def payload(self, st: ClientState, buf: bytes | bytearray, start: int, end: int) -> None:
        """One delivery to subscriber ``st``: the payload is ``buf[start:end]``."""
        now = time.time_ns()
        if end - start < HEADER.size:
            st.foreign += 1
            return
        pub, seq, send_ns, tag, intended_ns = _unpack(buf, start)
        if tag != self.tag:
            st.foreign += 1
            return
        s = st.seen.get(pub)
        if s is None:
            s = st.seen[pub] = [bytearray(self.sc.messages_of(pub) if pub < self.sc.publishers else 0), 0, 0, 0, -1]
        bm = s[0]
        dup = 0
        if seq < len(bm):
            if bm[seq]:
                s[2] += 1
                dup = 1
            else:
                bm[seq] = 1
                s[1] += 1
        else:
            st.foreign += 1
            return
        if seq < s[4]:
            s[3] += 1
        else:
            s[4] = seq
        self.rec_sub.append(st.spec.index)
        self.rec_pub.append(pub)
        self.rec_seq.append(seq)
        self.rec_dup.append(dup)
        self.rec_send.append(send_ns)
        self.rec_intended.append(intended_ns)
        self.rec_recv.append(now)  # counted per second at the next flush, not here: the hot path

    def flush(self, final: bool = False) -> None:
        """Append what was measured since the last flush; complete seconds only, unless final."""
        n = len(self.rec_sub)
        if n:
            rec = np.empty(n, DELIVERY_DTYPE)
            rec["sub"] = np.frombuffer(self.rec_sub, dtype=np.uint32)
            rec["pub"] = np.frombuffer(self.rec_pub, dtype=np.uint32)
            rec["seq"] = np.frombuffer(self.rec_seq, dtype=np.uint32)
            rec["dup"] = np.frombuffer(self.rec_dup, dtype=np.uint32)
            rec["send_ns"] = np.frombuffer(self.rec_send, dtype=np.int64)
            rec["recv_ns"] = np.frombuffer(self.rec_recv, dtype=np.int64)
            intended = np.frombuffer(self.rec_intended, dtype=np.int64).copy()  # a copy: the column is emptied below
            self.deliveries.write(rec.tobytes())
            self.intended.write(intended.astype(INTENDED_DTYPE).tobytes())
            self.hist.record((rec["recv_ns"] - rec["send_ns"]) // 1000)
            self.hist_intended.record((rec["recv_ns"] - intended) // 1000)
            secs, counts = np.unique(rec["recv_ns"] // 1_000_000_000, return_counts=True)
            for sec, k in zip(secs.tolist(), counts.tolist(), strict=True):
                self.count_at(int(sec), 2, int(k))
            self.flushed += n
            for a in (self.rec_sub, self.rec_pub, self.rec_seq, self.rec_dup, self.rec_send, self.rec_recv, self.rec_intended):
                del a[:]
        now = int(time.time()) + (1 if final else 0)
        for sec in sorted(s for s in self.sec_counts if s < now):
            c = self.sec_counts.pop(sec)
            self.timeline.write(f"{sec},{self.worker},{c[0]},{c[1]},{c[2]}\n")
        for fh in (self.deliveries, self.intended, self.timeline, self.events):
            fh.flush()

    def finish(self, states: list[ClientState], self_check: dict[str, Any]) -> None:
        """The end-of-run files: self-check, latency histogram, clients, publishers, subscribers."""
        self.flush(final=True)
        label, out, sc = self.label, self.out, self.sc
        (out / f"self-{label}.json").write_text(json.dumps(self_check, indent=1))
        (out / f"latency-{label}.json").write_text(json.dumps(self.hist.to_json() | {"intended": self.hist_intended.to_json()}))
        with (out / f"clients-{label}.csv").open("w") as fh:
            fh.write("client_id,role,index,worker,entry_point,local_addr,connected_at,disconnects,connect_ms\n")
            for st in states:
                fh.write(f"{st.spec.client_id},{st.spec.role},{st.spec.index},{self.worker},{st.spec.target},{st.local},{st.connected_at:.6f},"
                         f"{st.disconnects},{st.connect_s * 1000:.3f}\n")
        with (out / f"outages-{label}.csv").open("w") as fh:
            fh.write("client_id,role,lost_at,back_at,attempts,local_before,local_after\n")
            for line in self.outages:
                fh.write(line + "\n")
            for st in states:  # still without a connection at the end
                if st.lost_at:
                    fh.write(f"{st.spec.client_id},{st.spec.role},{st.lost_at:.6f},0,{st.failures},{st.lost_local},\n")
        with (out / f"publishers-{label}.csv").open("w") as fh:
            fh.write("pub,client_id,planned,sent,acked,failed,first_send_s,last_send_s,max_behind_ms,refused\n")
            for st in states:
                if st.spec.role == "pub":
                    fh.write(f"{st.spec.index},{st.spec.client_id},{st.planned},{st.sent},{st.acked},{st.failed},{st.first_send:.6f},{st.last_send:.6f},"
                             f"{st.max_behind * 1000:.3f},{st.refused}\n")
        with (out / f"subscribers-{label}.csv").open("w") as fh:
            fh.write("sub,client_id,pub,received,duplicates,out_of_order,foreign\n")
            for st in states:
                if st.spec.role != "sub":
                    continue
                _, heard = sc.subscription_of(st.spec.index)
                pubs = range(sc.publishers) if heard is None else [heard]
                for p in pubs:
                    s = st.seen.get(p)
                    got, dup, ooo = (s[1], s[2], s[3]) if s else (0, 0, 0)
                    fh.write(f"{st.spec.index},{st.spec.client_id},{p},{got},{dup},{ooo},{st.foreign if p == pubs[0] else 0}\n")
        self.events.close()
        self.timeline.close()
        self.deliveries.close()
        self.intended.close()
