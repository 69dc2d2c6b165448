"""The lab's fault actions, on the shared schedule (:class:`~workloads.hosts.faults.schedule.Schedule`).

Brokers get signals by PID (SIGKILL, SIGSTOP/SIGCONT; a restart starts the same command in the
same cgroup). A bridge cut and a dead director are nftables drop rules in the namespace of the
host concerned, in a table of their own that is deleted to end the fault: packets vanish
without resets, as when a link or a VM dies. ``faults.jsonl`` in the run directory is the record.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from workloads.describe.faults import Fault
from workloads.hosts.faults.rules import bridge_cut_rules, director_dead_rules
from workloads.hosts.faults.schedule import Schedule
from workloads.hosts.lab import netns
from workloads.hosts.lab.state import broker_command

if TYPE_CHECKING:
    from workloads.hosts.lab.lab import Lab

FILE = "faults.jsonl"


class Injector(Schedule):
    """The schedule with the lab's actions: signals by PID, nftables tables in the host's namespace."""

    def __init__(self, lab: Lab, faults: tuple[Fault, ...]) -> None:
        super().__init__(faults, lab.run_dir / FILE, lab.say)
        self.lab = lab

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
