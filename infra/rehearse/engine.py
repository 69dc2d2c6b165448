"""``pulumi up`` for the remote steps, as the engine and pulumi-command carry them out.

- A step starts once every step it waits for has succeeded; independent steps run at the same
  time (the engine's default parallelism is unbounded for a graph this small), which the
  benchmark needs: every host's publishers wait in parallel for the one agreed start.
- A step runs when it is new or any of its inputs changed since the last update that ran it
  (pulumi-command replaces on ``connection`` and ``triggers`` and, with no ``update`` command,
  runs ``create`` again on any other change; provider/pkg/provider/remote/command.go). A step
  that failed is not recorded, so the next update runs it again.
- After the first failure no new step starts; those running finish (the engine's default
  without ``--continue-on-error``, which stops only what waits for the failure); what did not
  start is reported as not run, with what it waited for.
- ``destroy`` runs no remote step: none of the program's commands has a ``delete``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from infra.rehearse.program import RemoteStep, resolve

RAN, UNCHANGED, FAILED, NOT_RUN = "ran", "unchanged", "failed", "not run"


@dataclass(frozen=True)
class Outcome:
    rc: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Carries one step out on its host (over SSH, for the rehearsal)."""

    def run(self, step: RemoteStep, inputs: Mapping[str, Any]) -> Outcome: ...


@dataclass
class StepResult:
    name: str
    vm: str
    status: str  # RAN, UNCHANGED, FAILED or NOT_RUN
    rc: int | None = None
    seconds: float = 0.0
    tail: list[str] = field(default_factory=list)  # the last lines of its output
    why: str = ""  # NOT_RUN: what it waited for


@dataclass
class State:
    """What the stack's state keeps of each step: the digest of the inputs it last ran with and
    its outputs (later steps consume ``stdout``)."""

    path: Path
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> State:
        return cls(path, json.loads(path.read_text())["steps"] if path.exists() else {})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"steps": self.steps}, indent=1, sort_keys=True))
        tmp.replace(self.path)


def resolved(step: RemoteStep, stdout: Mapping[str, str], marks: Mapping[str, str]) -> dict[str, Any]:
    """The step's inputs with every other step's output filled in (what the engine would pass)."""
    inputs = dict(step.inputs)
    for key in ("create", "stdin"):
        if isinstance(inputs.get(key), str):
            inputs[key] = resolve(inputs[key], stdout, marks)
    if isinstance(inputs.get("environment"), dict):
        inputs["environment"] = {k: resolve(str(v), stdout, marks) for k, v in inputs["environment"].items()}
    return inputs


def digest(step: RemoteStep, inputs: Mapping[str, Any]) -> str:
    return RemoteStep(**{**asdict(step), "inputs": dict(inputs), "after": step.after}).digest


def tail(text: str, n: int = 8) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()][-n:]


def up(steps: Sequence[RemoteStep], runner: Runner, state: State, marks: Mapping[str, str],
       report: Callable[[StepResult, int, int], None] = lambda r, done, total: None, continue_on_error: bool = False,
       running: Callable[[list[tuple[str, str, float]]], None] = lambda steps: None, every_s: float = 30.0) -> list[StepResult]:
    """Carry the steps out as ``pulumi up`` would; ``report(result, done, total)`` after each.
    ``continue_on_error``: as ``pulumi up --continue-on-error``, a failure stops only what waits for it.
    ``running([(step, host, seconds so far)])`` every ``every_s`` in which no step ended, as the
    Pulumi CLI keeps showing what is still being created: a step that waits quietly (a broker
    probe, a compose up) is then seen to be alive, and bounded by the runner, not by a guess of
    how long silence may last."""
    by_name = {s.name: s for s in steps}
    stdout: dict[str, str] = {k: v.get("stdout", "") for k, v in state.steps.items()}
    results: dict[str, StepResult] = {}
    lock = threading.Lock()
    failed = False

    def carry_out(step: RemoteStep) -> StepResult:
        inputs = resolved(step, stdout, marks)
        d = digest(step, inputs)
        kept = state.steps.get(step.name)
        if kept and kept.get("digest") == d:
            return StepResult(step.name, step.vm, UNCHANGED, kept.get("rc", 0))
        t0 = time.monotonic()
        out = runner.run(step, inputs)
        res = StepResult(step.name, step.vm, RAN if out.rc == 0 else FAILED, out.rc, round(time.monotonic() - t0, 2),
                         tail(out.stdout + "\n" + out.stderr))
        with lock:
            if out.rc == 0:
                stdout[step.name] = out.stdout
                state.steps[step.name] = {"digest": d, "rc": 0, "stdout": out.stdout}
            else:
                state.steps.pop(step.name, None)
            state.save()
        return res

    started: dict[Future[StepResult], tuple[str, float]] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(steps))) as pool:
        while True:
            if not failed:
                for s in steps:
                    if s.name in results or s.name in (n for n, _ in started.values()):
                        continue
                    if all(results.get(a) is not None and results[a].status in (RAN, UNCHANGED) for a in s.after if a in by_name):
                        started[pool.submit(carry_out, s)] = (s.name, time.monotonic())
            if not started:
                break
            finished, _ = wait(list(started), timeout=every_s, return_when=FIRST_COMPLETED)
            if not finished:
                now = time.monotonic()
                running([(n, by_name[n].vm, now - t) for n, t in sorted(started.values(), key=lambda v: v[1])])
            for f in finished:
                name, _t = started.pop(f)
                try:
                    res = f.result()
                except Exception as exc:  # noqa: BLE001 - a step that cannot even be tried fails, named
                    res = StepResult(name, by_name[name].vm, FAILED, None, 0.0, [str(exc)])
                results[name] = res
                failed = failed or (res.status == FAILED and not continue_on_error)
                report(res, len(results), len(steps))
    for s in steps:
        if s.name not in results:
            blocked = [a for a in s.after if a in by_name and (results.get(a) is None or results[a].status not in (RAN, UNCHANGED))]
            results[s.name] = StepResult(s.name, s.vm, NOT_RUN, why=("waits for " + ", ".join(blocked)) if blocked else "the update stopped")
    return [results[s.name] for s in steps]
