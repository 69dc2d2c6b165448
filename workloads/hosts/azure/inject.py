"""Carrying out ``mqttlab:faults`` on the Azure VMs, on time, with the same record as the lab.

Where each fault happens: a broker fault or a bridge cut on the broker VM, a director kill on
that director's VM. What it does there:

- broker kill / pause / restart: ``docker kill`` (SIGKILL; docker-kill(1): "the restart policy is
  disabled until the next time the container is started", so ``restart: unless-stopped`` does not
  bring it back), ``docker pause`` then ``docker unpause`` (the cgroup freezer: TCP still
  accepted by the kernel, MQTT unanswered, as SIGSTOP in the lab), ``docker kill`` then
  ``docker start`` (in force until the broker answers MQTT again, as in the lab);
- bridge cut: an nftables drop table in the hub broker's own network namespace (``nsenter -t
  PID -n``). The brokers are ipvlan L3 children of the VM's NIC, and ipvlan hands traffic
  between two children of one parent to the other directly, past the VM's own netfilter hooks,
  so a rule in the VM's namespace would never see a bridge. The bridge leaves from the hub's
  address (``bridge_bind_address``) to the remote's ``address``, so the pair hub -> remote:port
  names it exactly; clients and monitors use other pairs;
- director kill: the shared rules (:func:`workloads.hosts.faults.rules.director_dead_rules`) in the
  director VM's namespace: nothing reaches its entry point, nothing it forwards or sends to the
  brokers and nothing they answer gets through. SSH (port 22) and the uploads stay open: a
  silent director, not a lost VM.

When: every host's publishers start at one agreed epoch (``--start-at``), printed by the
``bench-start`` step once every subscriber is ready and handed by the Pulumi program to the
publisher steps and to the fault steps alike. Fault times count from that epoch, as the lab's
count from its ``start_at``. Azure VMs keep time with chrony against the host's clock (PTP),
typically within a millisecond of each other; watching a broker's ``$SYS`` counters instead
would see publishing only one ``sys_interval`` late and not at all while a broker is down.

Records: ``faults/<host>.jsonl`` in the run directory, each line the lab's ``faults.jsonl``
record plus the fault's place in ``mqttlab:faults`` (``index``) and the VM (``host``); each VM
uploads its own file (one shared name would be overwritten by the last upload), and the report
reads them together.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from workloads.base import procs
from workloads.base.errors import LabError
from workloads.describe.faults import Fault
from workloads.describe.names import container
from workloads.describe.plan import Plan
from workloads.hosts import shell
from workloads.hosts.faults.rules import director_dead_rules, hub_bridge_cut_rules
from workloads.hosts.faults.schedule import Schedule


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def run(cmd: Sequence[str], timeout: float = 60, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A fault's command, bounded at 60 s unless it says otherwise: the schedule records its failure
    against the fault and goes on with the others."""
    return shell.run(cmd, check=check, timeout=timeout, input=input)


TABLE = "mqttlab_fault"  # every fault table's name starts so: the end-of-run cleanup finds them all
LATE_S = 5.0  # a publisher step starting later than this after the agreed start shifts the faults' timing
SETTLE_S = 600.0  # after the run's time limit and drain: the injector stops itself if nobody stopped it


def injecting_host(f: Fault) -> str:
    return "brokers" if f.kind in ("broker", "bridge") else f.target


def faults_on(faults: Sequence[Fault], host: str) -> list[tuple[int, Fault]]:
    """This VM's faults, each with its place in ``mqttlab:faults``."""
    return [(i, f) for i, f in enumerate(faults) if injecting_host(f) == host]


def hosts_with_faults(faults: Sequence[Fault]) -> list[str]:
    return sorted({injecting_host(f) for f in faults})


def container_pid(broker: str) -> int:
    """The broker container's init PID (its network namespace), 0 when it is not running."""
    out = run(["docker", "inspect", "-f", "{{.State.Pid}}", container(broker)]).stdout.strip()
    try:
        return int(out)
    except ValueError:
        raise LabError(f"docker inspect gave no PID for {container(broker)}: {out!r}") from None


def nft_tables(pid: int | None) -> list[str]:
    """Our fault tables in a namespace (``pid`` None: this one)."""
    pre = ["nsenter", "-t", str(pid), "-n"] if pid else []
    out = run([*pre, "nft", "list", "tables", "ip"]).stdout
    return [w.split()[-1] for w in out.splitlines() if w.strip().startswith("table ip") and w.split()[-1].startswith(TABLE)]


def nft_delete(pid: int | None, table: str) -> str:
    pre = ["nsenter", "-t", str(pid), "-n"] if pid else []
    run([*pre, "nft", "delete", "table", "ip", table])
    return f"table {table} deleted"


class HostInjector(Schedule):
    """The schedule (:class:`Schedule`) with the VM's actions: docker, and nftables in a namespace."""

    def __init__(self, plan: Plan, mine: Sequence[tuple[int, Fault]], host: str, rd: Path,
                 on_restart: Callable[[str], str] | None = None) -> None:
        super().__init__(tuple(f for _, f in mine), rd / "faults" / f"{host}.jsonl", say)
        self.plan, self.host, self.on_restart = plan, host, on_restart
        self.index = [i for i, _ in mine]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for i, rec in zip(self.index, self.records, strict=True):
            rec |= {"index": i, "host": host}

    def begin(self, i: int) -> None:
        f, rec = self.faults[i], self.records[i]
        table = f"{TABLE}{self.index[i]}"
        began = time.time()  # before the act, as in the lab
        if f.kind == "broker":
            c = container(f.target)
            if f.action == "pause":
                run(["docker", "pause", c])
                self.undo[i] = lambda: self.unpause(c)
                rec["detail"] = f"docker pause {c}"
            else:
                run(["docker", "kill", c])
                rec["detail"] = f"docker kill {c}"
                if f.action == "restart":
                    self.undo[i] = lambda: self.start_again(f.target)
        elif f.kind == "bridge":
            link = next(b for b in self.plan.bridges if b.name == f.target)
            hub = next(b for b in self.plan.brokers if b.name == link.local)
            pid = container_pid(hub.name)
            run(["nsenter", "-t", str(pid), "-n", "nft", "-f", "-"],
                input=hub_bridge_cut_rules(table, hub.address, link.remote_address, link.remote_port))
            self.undo[i] = lambda: nft_delete(pid, table)
            rec["detail"] = f"drop {hub.address} <-> {link.remote_address}:{link.remote_port} in {container(hub.name)}'s namespace (pid {pid})"
        else:
            bal = next(b for b in self.plan.balancers if b.host == f.target)
            rs = [r.address for r in bal.real_servers]
            run(["nft", "-f", "-"], input=director_dead_rules(table, bal.vip, bal.port, rs, bal.real_servers[0].port))
            self.undo[i] = lambda: nft_delete(None, table)
            rec["detail"] = f"drop all of {bal.vip}:{bal.port} and its broker traffic on {self.host}"
        rec["started_at"] = began
        self.write()
        self.say(f"fault {f.spec}: {rec['detail']}")

    def unpause(self, c: str) -> str:
        run(["docker", "unpause", c])
        return f"docker unpause {c}"

    def start_again(self, broker: str, bound_s: float = 60.0) -> str:
        """In force until the broker answers MQTT again (its ``$SYS`` uptime, from inside the
        container: the VM cannot reach its own ipvlan children)."""
        b = next(x for x in self.plan.brokers if x.name == broker)
        run(["docker", "start", container(broker)])
        end = time.time() + bound_s
        while True:
            cp = run(["docker", "exec", container(broker), "mosquitto_sub", "-h", b.address, "-p", str(b.port), "-t", "$SYS/broker/uptime",
                      "-C", "1", "-W", "5"], timeout=15, check=False)
            if cp.returncode == 0:
                done = f"docker start {container(broker)}, answering"
                if self.on_restart is not None:
                    try:
                        done += self.on_restart(broker)
                    except Exception as exc:  # noqa: BLE001 - the broker is back; a monitor that is not is a gap in its CSV, said here
                        done += f"; its monitor not started again: {exc}"
                return done
            if time.time() > end:
                raise LabError(f"{broker} started again but did not answer within {bound_s:g}s")
            time.sleep(0.5)


def cleanup(plan: Plan, host: str) -> list[str]:
    """End of run, whatever happened before: no fault table and no paused broker stays behind.
    The injector undoes its own faults when stopped; this covers an injector that was killed."""
    done = []
    if host == "brokers":
        for b in plan.brokers:
            state = run(["docker", "inspect", "-f", "{{.State.Pid}} {{.State.Paused}}", container(b.name)], check=False).stdout.split()
            if len(state) != 2:
                continue
            pid, paused = int(state[0]), state[1] == "true"
            if paused:
                run(["docker", "unpause", container(b.name)])
                done.append(f"docker unpause {container(b.name)}")
            if pid:
                done += [f"{container(b.name)}: {nft_delete(pid, t)}" for t in nft_tables(pid)]
    else:
        done += [nft_delete(None, t) for t in nft_tables(None)]
    return done


def run_injector(plan: Plan, mine: Sequence[tuple[int, Fault]], host: str, rd: Path, start_at: float, until: float,
                 on_restart: Callable[[str], str] | None = None) -> int:
    """The fault process: arm the schedule, then wait for SIGTERM (the collect step) or its own
    bound, and undo whatever is still in force before exiting. ``on_restart`` runs once a
    restarted broker answers (its monitor follows it into its new namespace)."""
    inj = HostInjector(plan, mine, host, rd, on_restart)
    stop = procs.StopFlag()  # not threading.Event: `timeout` passes SIGTERM on, twice in a row
    stop.install()
    inj.start(start_at)
    inj.say(f"armed {len(mine)} fault(s) on {host} from {start_at:.3f}: " + ", ".join(f.spec for _, f in mine))
    stop.wait(max(0.0, until - time.time()))
    inj.stop()
    inj.say("faults stopped: " + ("error " + inj.error if inj.error else "all carried out"))
    return 1 if inj.error else 0


def armed_in_time(mine: Sequence[tuple[int, Fault]], start_at: float, now: float) -> str:
    """Empty when the schedule can still be kept, else why not."""
    first = min(f.at_s for _, f in mine)
    if now > start_at + first:
        return (f"fault step arrived {now - start_at:.1f}s after the agreed start, past the first fault ({first:g}s): "
                "its timing could not be kept; run again with a new mqttlab:runId")
    return ""
