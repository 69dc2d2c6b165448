#!/usr/bin/env python3
"""A stand-in for the ``docker`` CLI on the broker VM (no Docker engine runs here): it keeps the
containers' states in ``$FAKE_DOCKER_STATE`` (JSON), records every call with its time in
``calls.jsonl`` beside it, and refuses what the engine refuses, with the engine's messages
(moby ``daemon/errors.go`` errNotRunning "container %s is not running", ``daemon/pause.go``
"container %s is already paused", ``daemon/unpause.go`` "container %s is not paused",
``daemon/exec.go`` "container %s is paused, unpause the container before exec"; the CLI prints
them after "Error response from daemon: " and exits 1). ``docker start`` of a running container
succeeds and does nothing, as the engine's does; that of a stopped one starts a new process in a
new network namespace, as the engine's does (listed under ``started`` for the test to stop).
``{{.State.Pid}}`` answers the PID the state gives (a real process whose network namespace plays
the container's), 0 when stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    state_file = Path(os.environ["FAKE_DOCKER_STATE"])
    state = json.loads(state_file.read_text())
    with (state_file.parent / "calls.jsonl").open("a") as log:
        log.write(json.dumps({"at": time.time(), "argv": argv}) + "\n")

    def refuse(msg: str) -> int:
        print(f"Error response from daemon: {msg}", file=sys.stderr)
        return 1

    def get(name: str) -> dict[str, object] | None:
        return state.get(name)  # type: ignore[no-any-return]

    if not argv:
        return refuse("no command")
    cmd, rest = argv[0], argv[1:]
    if cmd == "inspect" and rest[:1] == ["-f"]:
        c = get(rest[2])
        if c is None:
            print(f"Error: No such object: {rest[2]}", file=sys.stderr)
            return 1
        pid = c["pid"] if c["running"] else 0
        print(rest[1].replace("{{.State.Pid}}", str(pid)).replace("{{.State.Paused}}", "true" if c["paused"] else "false"))
        return 0
    if cmd not in ("kill", "pause", "unpause", "start", "exec") or not rest:
        return refuse(f"the fake docker does not do {' '.join(argv)}")
    name = rest[0]
    c = get(name)
    if c is None:
        return refuse(f"No such container: {name}")
    if cmd == "kill":
        if not c["running"]:
            return refuse(f"cannot kill container: {name}: container {name} is not running")
        c["running"], c["paused"] = False, False
    elif cmd == "pause":
        if not c["running"]:
            return refuse(f"container {name} is not running")
        if c["paused"]:
            return refuse(f"container {name} is already paused")
        c["paused"] = True
    elif cmd == "unpause":
        if not c["paused"]:
            return refuse(f"container {name} is not paused")
        c["paused"] = False
    elif cmd == "start":
        if not c["running"]:  # as the engine: a new process in a new network namespace
            p = subprocess.Popen(["unshare", "-n", "sleep", "300"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ours = os.readlink("/proc/self/ns/net")
            end = time.time() + 30
            while os.readlink(f"/proc/{p.pid}/ns/net") == ours and time.time() < end:
                time.sleep(0.01)
            c["pid"] = p.pid
            started = c.setdefault("started", [])  # the test stops them
            assert isinstance(started, list)
            started.append(p.pid)
        c["running"] = True
    elif cmd == "exec":
        if not c["running"]:
            return refuse(f"container {name} is not running")
        if c["paused"]:
            return refuse(f"container {name} is paused, unpause the container before exec")
        print("42 seconds")
        return 0
    state_file.write_text(json.dumps(state))
    if cmd != "exec":
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
