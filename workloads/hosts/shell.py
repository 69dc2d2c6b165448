"""The one way a host step runs a command: bounded, captured, dying with its parent, and failing
with one error (:class:`~workloads.base.errors.LabError`) that names the command, its status and
the end of what it said. The lab runs it inside a network namespace (``ns``), a VM step on the
VM itself; a fault's schedule records the error against the fault and goes on with the others.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from workloads.base.errors import LabError
from workloads.base.procs import pdeathsig_preexec

TIMEOUT_S = 120.0  # a VM step's command that gives no bound: a compose up or a docker logs of a long run fits
class NotInstalled(LabError):
    """The program to run is not there: no retry makes it appear."""


TAIL = 2000  # characters of a failed command's output kept in its error


def run(cmd: Sequence[str], ns: str | None = None, check: bool = True, timeout: float = TIMEOUT_S,
        input: str | None = None, die_with_parent: bool = False) -> subprocess.CompletedProcess[str]:
    """``cmd`` (in network namespace ``ns`` when given); a failure, a missing program or a hang
    past ``timeout`` raises :class:`LabError` (:class:`NotInstalled` for the second), unless
    ``check`` is off for the first. ``die_with_parent``: the command is SIGKILLed if this process
    dies (the lab's; it costs a fork instead of a vfork, so the samplers and VM steps go without)."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    try:
        cp = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input,
                            preexec_fn=pdeathsig_preexec() if die_with_parent else None)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(full)} did not finish within {timeout:g}s") from None
    except FileNotFoundError as exc:
        raise NotInstalled(f"{full[0]} is not installed: {exc}") from None
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(full)} failed ({cp.returncode}): {(cp.stderr or cp.stdout).strip()[-TAIL:]}")
    return cp
