"""What the lab's parts share without importing the lab: where its state lives, and how a broker
is started (by the lab, and again by a fault that restarts it)."""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR = Path(os.environ.get("MQTTLAB_STATE_DIR", "/run/mqttlab"))


def broker_command(conf: Path) -> list[str]:
    """Line-buffered output: a broker killed by a fault would otherwise take its last log lines
    (who connected) with it. stdbuf execs mosquitto, so the PID stays the broker's."""
    return ["stdbuf", "-oL", "mosquitto", "-c", str(conf)]
