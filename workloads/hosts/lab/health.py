"""Health-checked directors in the lab: keepalived in a balancer host's namespace.

The rendered ``keepalived.conf`` is the one Azure uses; only the probe's path differs, because
keepalived's script security wants the probe in a folder no other user can change, and the
lab's state folder (root's) is such a place while a clone in a home directory is not.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workloads.base.errors import LabError
from workloads.describe.plan import Balancer
from workloads.hosts.lab import netns
from workloads.hosts.lab.state import STATE_DIR
from workloads.render import keepalived

if TYPE_CHECKING:
    from workloads.hosts.lab.lab import Lab

READY_S = 60.0  # keepalived's first round of checks; generous because the micro-VM is emulated


def start_keepalived(lab: Lab, bal: Balancer) -> None:
    directory = STATE_DIR / lab.lab_id / f"keepalived-{bal.host}"
    _conf, argv = keepalived.prepare(bal, directory)
    log = lab.run_dir / "logs" / f"keepalived-{bal.host}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = lab.spawn(f"keepalived-{bal.host}", argv, bal.host, log)
    want = {f"{rs.address}:{rs.port}" for rs in bal.real_servers if rs.weight > 0}
    end = time.time() + READY_S
    have: set[str] = set()
    while time.time() < end:
        if proc.poll() is not None:
            raise LabError(f"keepalived on {bal.host} exited ({proc.returncode}): {log.read_text()[-1500:]}")
        have = keepalived.ipvs_reals(netns.run(["ipvsadm", "-Ln"], ns=lab.ns(bal.host), check=False).stdout, bal.vip, bal.port)
        if want <= have:
            lab.say(f"keepalived on {bal.host}: {len(have)} brokers pass the {bal.health_check.type} check")
            return
        time.sleep(0.5)
    raise LabError(f"keepalived on {bal.host}: only {sorted(have)} of {sorted(want)} in service after {READY_S:.0f}s "
                   f"(see {log})")
