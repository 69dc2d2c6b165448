"""Carrying out faults in the lab, on time, and writing down exactly when each began and ended.

Brokers get signals by PID (SIGKILL, SIGSTOP/SIGCONT; a restart starts the same command in the
same cgroup). A bridge cut and a dead director are nftables drop rules in the namespace of the
host concerned, in a table of their own that is deleted to end the fault: packets vanish
without resets, as when a link or a VM dies. Everything reversible is reversed when the run
ends, whatever happened; ``faults.jsonl`` in the run directory is rewritten after every change,
so a crash leaves what had happened so far.
"""

from __future__ import annotations

import heapq
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workloads.base.errors import LabError
from workloads.describe.faults import Fault
from workloads.hosts.lab import netns
from workloads.hosts.lab.state import broker_command

if TYPE_CHECKING:
    from workloads.hosts.lab.lab import Lab

FILE = "faults.jsonl"


def bridge_cut_rules(table: str, hub: str, remote: str, port: int, host: str | None = None) -> str:
    """Drop both directions of the hub's bridge to ``remote``. The bridge should leave from the
    hub's own address (``bridge_bind_address``), but the lab's Debian Mosquitto 2.0.11 connects a
    bridge in two asynchronous steps and leaves from the brokers host's address instead (its log:
    "New bridge connected from <host address>"), so ``host`` is dropped too: that also cuts the
    remote broker's monitor for the same span (it resumes after), and nothing else."""
    src = f"{{ {hub}, {host} }}" if host else hub
    return (f"table ip {table} {{\n\tchain output {{\n\t\ttype filter hook output priority -300; policy accept;\n"
            f"\t\tip saddr {src} ip daddr {remote} tcp dport {port} drop\n"
            f"\t\tip saddr {remote} tcp sport {port} ip daddr {src} drop\n\t}}\n}}\n")


def director_dead_rules(table: str, vip: str, port: int, brokers: list[str], broker_port: int) -> str:
    """A silent director: nothing reaches its entry point (local clients, forwarded clients) and
    nothing it sends or forwards to the brokers, nor their answers, gets through."""
    bset = "{ " + ", ".join(brokers) + " }"
    return (f"table ip {table} {{\n"
            f"\tchain prerouting {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n"
            f"\t\tip daddr {vip} tcp dport {port} drop\n\t\tip saddr {bset} tcp sport {broker_port} drop\n\t}}\n"
            f"\tchain output {{\n\t\ttype filter hook output priority -300; policy accept;\n"
            f"\t\tip daddr {vip} tcp dport {port} drop\n\t\tip daddr {bset} tcp dport {broker_port} drop\n\t}}\n}}\n")


class Injector:
    """Runs the faults of one lab run on a timer thread relative to the start of publishing."""

    def __init__(self, lab: Lab, faults: tuple[Fault, ...]) -> None:
        self.lab = lab
        self.faults = faults
        self.records: list[dict[str, Any]] = [f.to_dict() | {"t0": None, "started_at": None, "ended_at": None, "detail": ""} for f in faults]
        self.undo: dict[int, Callable[[], str]] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.path: Path = lab.run_dir / FILE
        self.error: str = ""

    # ------------------------------------------------------------------ schedule

    def start(self, t0: float) -> None:
        for r in self.records:
            r["t0"] = t0
        self.write()
        self.thread = threading.Thread(target=self._loop, args=(t0,), name="faults", daemon=True)
        self.thread.start()

    def _loop(self, t0: float) -> None:
        events: list[tuple[float, int, str]] = [(t0 + f.at_s, i, "begin") for i, f in enumerate(self.faults)]
        heapq.heapify(events)
        while events and not self.stopping.is_set():
            when, i, what = events[0]
            if self.stopping.wait(max(0.0, when - time.time())):
                break
            heapq.heappop(events)
            try:
                if what == "begin":
                    self.begin(i)
                    f = self.faults[i]
                    end = f.end_s if f.end_s is not None else (f.at_s if f.action == "restart" else None)
                    if i in self.undo and end is not None:
                        heapq.heappush(events, (t0 + end, i, "end"))
                else:
                    self.end(i)
            except (LabError, OSError) as exc:
                self.error = f"{self.faults[i].spec}: {exc}"
                self.records[i]["detail"] = f"failed: {exc}"
                self.write()
                self.lab.say(f"fault {self.faults[i].spec} failed: {exc}")

    def stop(self) -> None:
        """End of run: stop the timer, reverse whatever is still in force, write the record."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
        for r in self.records:  # the measurement ends here: what the teardown breaks is no fault's doing
            r["run_ended_at"] = time.time()
        for i in list(self.undo):
            try:
                self.end(i, by_teardown=True)
            except (LabError, OSError) as exc:
                self.records[i]["detail"] += f"; undo failed: {exc}"
        self.write()

    def write(self) -> None:
        with self.lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            os.replace(tmp, self.path)

    # ------------------------------------------------------------------ actions

    def begin(self, i: int) -> None:
        f = self.faults[i]
        rec = self.records[i]
        lab = self.lab
        began = time.time()  # before the act: on one machine a client can notice within a millisecond
        if f.kind == "broker":
            pid = lab.procs[f.target].pid
            if f.action == "pause":
                os.kill(pid, signal.SIGSTOP)
                self.undo[i] = lambda: self.resume(pid)
                rec["detail"] = f"SIGSTOP pid {pid}"
            else:
                os.kill(pid, signal.SIGKILL)
                rec["detail"] = f"SIGKILL pid {pid}"
                if f.action == "restart":
                    self.undo[i] = lambda: self.restart_broker(f.target)
        elif f.kind == "bridge":
            link = next(b for b in lab.plan.bridges if b.name == f.target)
            hub = next(b for b in lab.plan.brokers if b.name == link.local)
            table = f"mqttlab_fault{i}"
            host = next(h.address for h in lab.plan.hosts if h.role == "brokers")
            self.nft(lab.ns("brokers"), bridge_cut_rules(table, hub.address, link.remote_address, link.remote_port, host))
            self.undo[i] = lambda: self.nft_delete(lab.ns("brokers"), table)
            rec["detail"] = f"drop {hub.address}, {host} <-> {link.remote_address}:{link.remote_port} in {lab.ns('brokers')}"
        else:
            bal = next(b for b in lab.plan.balancers if b.host == f.target)
            table = f"mqttlab_fault{i}"
            brokers = [rs.address for rs in bal.real_servers]
            self.nft(lab.ns(bal.host), director_dead_rules(table, bal.vip, bal.port, brokers, bal.real_servers[0].port))
            self.undo[i] = lambda: self.nft_delete(lab.ns(bal.host), table)
            rec["detail"] = f"drop all of {bal.vip}:{bal.port} and its broker traffic in {lab.ns(bal.host)}"
        rec["started_at"] = began
        self.write()
        lab.say(f"fault {f.spec}: {rec['detail']}")

    def end(self, i: int, by_teardown: bool = False) -> None:
        undo = self.undo.pop(i)
        what = undo()
        rec = self.records[i]
        rec["ended_at"] = time.time()  # in force until undone (a restarted broker: until it listens)
        rec["detail"] += f"; ended: {what}" + (" (at the end of the run)" if by_teardown else "")
        self.write()
        self.lab.say(f"fault {self.faults[i].spec} ended: {what}")

    def resume(self, pid: int) -> str:
        os.kill(pid, signal.SIGCONT)
        return f"SIGCONT pid {pid}"

    def nft(self, ns: str, rules: str) -> None:
        netns.run(["nft", "-f", "-"], ns=ns, input=rules)

    def nft_delete(self, ns: str, table: str) -> str:
        netns.run(["nft", "delete", "table", "ip", table], ns=ns)
        return f"table {table} deleted"

    def restart_broker(self, name: str) -> str:
        lab = self.lab
        b = next(x for x in lab.plan.brokers if x.name == name)
        conf = lab.files / "brokers" / name / "mosquitto.conf"
        cap = lab.caps.get(name)

        p = lab.spawn(name, broker_command(conf), "brokers", lab.run_dir / "logs" / f"{name}.log",
                      cap.procs_files if cap else ())
        netns.wait_tcp(lab.ns("brokers"), b.address, b.port)
        return f"started again as pid {p.pid}, listening"


def read_faults(run_dir: Path) -> list[dict[str, Any]]:
    """The faults of a run as recorded (empty when it had none)."""
    path = run_dir / FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
