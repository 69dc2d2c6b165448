"""Failures a real ``pulumi up`` must survive, rehearsed on the hosts after a successful update
(``--failures``): each is one more update with a runId of its own, the failure made real on the
hosts over the same SSH (a container stopped, new connections refused), then undone; the
rehearsal checks that the chain stops, or goes on, where the program says it does.

- **A broker that does not come up**: its container is stopped before the update; the chain must
  stop at the probe steps, each naming that broker, and no subscriber may start.
- **Publishers that fail**: once the agreed start is chosen, each client host refuses new
  connections to the balancer's port; the publisher steps still end (they record the outcome),
  every host still collects and uploads, and the verdict fails naming the publishers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.rehearse.engine import FAILED, NOT_RUN, RAN, Outcome, Runner, StepResult
from infra.rehearse.program import RemoteStep
from workloads.describe.names import container
from workloads.describe.plan import Plan

Action = tuple[str, str]  # (VM, shell command run there with sudo available)


@dataclass(frozen=True)
class Case:
    name: str
    run_id: str
    before: tuple[Action, ...] = ()
    after_step: Mapping[str, tuple[Action, ...]] = field(default_factory=dict)  # step name -> actions once it succeeded
    undo: tuple[Action, ...] = ()
    check: Callable[[list[StepResult]], list[str]] = lambda results: []  # what differs from the expected


def _named(results: list[StepResult], part: str) -> list[StepResult]:
    return [r for r in results if f"-{part}-" in f"-{r.name}-"]


def cases(plan: Plan) -> list[Case]:
    victim = plan.brokers[-1].name
    port = plan.clients[0].target.rsplit(":", 1)[1]
    clients = [c.host for c in plan.clients]

    def broker_down(results: list[StepResult]) -> list[str]:
        probes = _named(results, "probe")
        wrong = [f"{r.name} {r.status}" for r in probes if r.status != FAILED or not any(victim in line for line in r.tail)]
        started = [r.name for r in _named(results, "subs") if r.status != NOT_RUN]
        return ([f"probe steps not failed naming {victim}: {', '.join(wrong)}"] if wrong or not probes else []) + \
               ([f"subscribers started: {', '.join(started)}"] if started else [])

    def pubs_fail(results: list[StepResult]) -> list[str]:
        out = []
        pubs = _named(results, "pubs")
        if not pubs or any(r.status != RAN for r in pubs):
            out.append("publisher steps did not end (they record the outcome and exit 0): " + ", ".join(f"{r.name} {r.status}" for r in pubs))
        collect = _named(results, "collect")
        if not collect or any(r.status != RAN for r in collect):
            out.append("not every host collected and uploaded: " + ", ".join(f"{r.name} {r.status}" for r in collect))
        verdict = _named(results, "verdict")
        if len(verdict) != 1 or verdict[0].status != FAILED or not any("pubs" in line for line in verdict[0].tail):
            out.append("the verdict did not fail naming the publishers: " + ", ".join(f"{r.name} {r.status} {r.tail[-2:]}" for r in verdict))
        return out

    # ahead of IPVS and of conntrack (raw priority), by the SYN itself: a director handing a local
    # client's connection to a broker marks it untracked (its conntrack setting off), so a rule
    # on "ct state new" after it let every publisher through
    refuse = (f"sudo nft add table inet rehearsal && sudo nft 'add chain inet rehearsal out {{ type filter hook output priority -300; }}' && "
              f"sudo nft 'add rule inet rehearsal out tcp dport {port} tcp flags & (syn | ack) == syn reject with tcp reset'")
    return [
        Case(f"a broker that does not come up ({victim} stopped)", "failure-broker-down",
             before=(("brokers", f"sudo docker stop {container(victim)}"),), undo=(("brokers", f"sudo docker start {container(victim)}"),),
             check=broker_down),
        Case(f"publishers that fail (new connections to port {port} refused on {', '.join(clients)} after the agreed start)",
             "failure-publishers", after_step={"bench-start": tuple((h, refuse) for h in clients)},
             undo=tuple((h, "sudo nft delete table inet rehearsal") for h in clients), check=pubs_fail),
    ]


class Hooked:
    """A runner that carries out ``after_step``'s actions once the named step succeeded, on the
    named hosts over the same connection, as an outage or an operator would between two steps."""

    def __init__(self, runner: Runner, steps: Sequence[RemoteStep], after_step: Mapping[str, tuple[Action, ...]], log: Callable[[str], None]):
        self.runner, self.after_step, self.log = runner, after_step, log
        self.by_vm = {s.vm: s for s in reversed(steps) if s.kind == "command"}  # a step's kind, not its resource type

    def act(self, vm: str, command: str) -> Outcome:
        base = self.by_vm[vm]
        out = self.runner.run(dataclasses.replace(base, name=f"rehearsal-action-{vm}"),
                              {**base.inputs, "create": command, "environment": {}, "stdin": ""})
        self.log(f"    action on {vm}: {command} -> exit {out.rc}" + (f" ({out.stderr.strip()[-200:]})" if out.rc else ""))
        return out

    def run(self, step: RemoteStep, inputs: Mapping[str, Any]) -> Outcome:
        out = self.runner.run(step, inputs)
        if out.rc == 0:
            for vm, command in self.after_step.get(step.name, ()):
                self.act(vm, command)
        return out
