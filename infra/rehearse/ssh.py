"""The steps carried out over OpenSSH from the controller namespace, as pulumi-command carries them
out with its own SSH client: the connection's user and key, the server's key pinned (a host that
answers with another key is refused), the environment sent as the session's variables (the server
keeps only those its ``AcceptEnv`` allows, as for ``session.Setenv``), stdin passed, the command
run as one line; a copy is an SFTP put of the file to ``remotePath``. Dialling is retried on
failure up to the connection's ``dialErrorLimit`` (connection.go)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.rehearse.engine import Outcome
from infra.rehearse.hosts import CTL
from infra.rehearse.program import RemoteStep

SSH_FAILED = 255  # ssh's own status: it could not connect or authenticate


class SshRunner:
    def __init__(self, keydir: Path, operator_key: str, timeout_s: float = 3600.0, outdir: Path | None = None) -> None:
        """``outdir``: each step's stdout and stderr are written there (``NAME.out``, ``NAME.err``)
        as they come, so what a step said survives a run that is stopped while it runs."""
        keydir.mkdir(parents=True, exist_ok=True)
        self.keydir = keydir
        self.outdir = outdir or keydir / "steps"
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.key = keydir / "operator"
        self.key.write_text(operator_key)
        os.chmod(self.key, 0o600)
        self.timeout_s = timeout_s

    def _options(self, step: RemoteStep, conn: Mapping[str, Any]) -> list[str]:
        known = self.keydir / f"known_hosts.{step.vm}"
        known.write_text(f"{conn['host']} {step.host_key.strip()}\n")
        return ["-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(conn.get('perDialTimeout') or 15)}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=8", "-o", "LogLevel=ERROR"]

    def run(self, step: RemoteStep, inputs: Mapping[str, Any]) -> Outcome:
        conn = inputs["connection"]
        target = f"{step.user}@{conn['host']}"
        env = inputs.get("environment") or {}
        if step.kind == "copy":
            remote = str(inputs["remotePath"])
            if not step.source:
                return Outcome(1, "", f"{step.name}: no local file to copy")
            cmd = ["sftp", "-b", "-", *self._options(step, conn), target]
            stdin = f"put {shlex.quote(step.source)} {shlex.quote(remote)}\n"
        else:
            cmd = ["ssh", *self._options(step, conn), *[a for k, v in env.items() for a in ("-o", f"SetEnv={k}={v}")], target,
                   str(inputs.get("create") or "true")]
            stdin = str(inputs.get("stdin") or "")
        limit = int(conn.get("dialErrorLimit") or 10)
        for attempt in range(limit):
            out_path, err_path = self.outdir / f"{step.name}.out", self.outdir / f"{step.name}.err"
            with out_path.open("w") as out, err_path.open("w") as err:
                try:
                    rc = subprocess.run(["ip", "netns", "exec", CTL, *cmd], input=stdin, stdout=out, stderr=err, text=True,
                                        timeout=self.timeout_s).returncode
                except subprocess.TimeoutExpired:
                    rc = None
            stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
            if rc is None:
                return Outcome(124, stdout, stderr + f"\n{step.name}: no end within {self.timeout_s:g}s")
            dial_failed = rc == SSH_FAILED and ("Connection refused" in stderr or "timed out" in stderr or "No route" in stderr)
            if not dial_failed or attempt == limit - 1:
                return Outcome(rc, stdout, stderr)
            time.sleep(1)
        raise AssertionError("unreachable")
