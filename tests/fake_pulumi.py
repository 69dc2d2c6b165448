"""A stand-in for the ``pulumi`` CLI, for the Automation API to drive where neither Azure nor a
Pulumi backend exists. It records every command line (``$FAKE_PULUMI_LOG``, one JSON list per
line), answers the commands the Automation API issues for select / set config / up / outputs,
and refuses what the real CLI refuses (the messages are the CLI's own, from pulumi/pulumi
pkg/cmd/pulumi: ``stack select`` of an unknown stack, ``up`` without ``--yes`` when
non-interactive, unknown commands). Its ``up`` does what the mqttlab program does for a benchmark:
validates the stack's config (the program's own parser), and leaves a run directory in the
results container (``$FAKE_PULUMI_BLOB_URL``, Azurite: tests/azurite.py) under ``<stack>/<runId>/``, through
the VMs' own upload code.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

VERSION = "v3.150.0"
LOGIN_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nfake-generated-login-key\n-----END OPENSSH PRIVATE KEY-----\n"


def _state() -> dict[str, Any]:
    p = Path(os.environ["FAKE_PULUMI_STATE"])
    return json.loads(p.read_text()) if p.is_file() else {"stacks": ["distributed", "centralized"], "outputs": {}, "ups": 0}


def _save(st: dict[str, Any]) -> None:
    Path(os.environ["FAKE_PULUMI_STATE"]).write_text(json.dumps(st))


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def _set_path(cfg: dict[str, Any], key: str, value: str, path: bool) -> None:
    ns, _, rest = key.partition(":")
    if not rest:
        raise SystemExit(f"error: invalid configuration key {key!r}: it must be namespaced (project:key)")
    parsed: Any = yaml.safe_load(value) if path else value  # --path stores YAML scalars typed
    if not path or "." not in rest:
        cfg[key] = parsed
        return
    head, *tail = rest.split(".")
    node = cfg.setdefault(f"{ns}:{head}", {})
    for part in tail[:-1]:
        if not isinstance(node, dict):
            raise SystemExit(f"error: invalid config path {key!r}: {part} is not a map")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise SystemExit(f"error: invalid config path {key!r}")
    node[tail[-1]] = parsed


def _up(stack: str, cwd: Path) -> dict[str, Any]:
    """The program's benchmark: its config checks, then a complete run uploaded to the container."""
    from infra.settings import parse_azure
    from workloads.analysis.synthetic import Truth, write_run
    from workloads.describe.config import parse_config
    from workloads.storage import blob as storage

    doc = yaml.safe_load((cwd / f"Pulumi.{stack}.yaml").read_text())["config"]
    cfg = parse_config(doc, stack)
    run_id = str(doc.get("mqttlab:runId", "1"))
    parse_azure(doc.get("mqttlab:azure") or {"adminCidr": "192.0.2.1/32", "generateSshKey": True}, run_id)
    sc = cfg.scenario
    # loss grows with the offered rate past 400 msg/s, so campaign statistics have something to find
    rate = sc.publishers * 1000.0 / max(sc.interval_ms, 1)
    per_pub = sc.messages_of(0)
    pubs = {p: ("ipvs1" if p % 2 == 0 else "ipvs2", "broker1", per_pub) for p in range(sc.publishers)}
    subs = {s: ("ipvs1" if s % 2 == 0 else "ipvs2", f"broker{s % 3 + 1}") for s in range(sc.subscribers)}
    lost_n = int(per_pub * max(0.0, (rate - 400) / rate))
    t = Truth(pubs=pubs, subs=subs, topology=cfg.topology, scheduler=cfg.balancer.scheduler, qos=sc.qos,
              latency_ms={s: 2.0 for s in subs}, lost={(0, 0, q) for q in range(lost_n)})
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / run_id, t)
        # as the VMs do: as their managed identity (the metadata service's stand-in, $AZURE_POD_IDENTITY_AUTHORITY_HOST)
        c = storage.container(os.environ["FAKE_PULUMI_BLOB_URL"], storage.vm_credential())
        storage.upload_dir(c, run, f"{stack}/{run_id}/", skip_manifest=False)
    url = os.environ["FAKE_PULUMI_BLOB_URL"]
    return {"topology": cfg.topology, "runId": run_id, "resultsUrl": url, "resultsPrefix": f"{stack}/{run_id}/",
            "storageAccount": "resultssa1a2b3c4d", "benchSummary": f"run {run_id}: complete",
            "sshPrivateKey": {"secret": LOGIN_KEY}}  # as with azure.generateSshKey: a secret output


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_PULUMI_LOG"], "a") as fh:
        fh.write(json.dumps(argv) + "\n")
    args = [a for a in argv if a != "--non-interactive"]
    cwd = Path.cwd()
    st = _state()
    stack = _flag(args, "--stack")
    if args[:1] == ["version"]:
        print(VERSION)
        return 0
    if args[:2] == ["stack", "select"]:
        if stack not in st["stacks"]:
            print(f"error: no stack named '{stack}' found", file=sys.stderr)
            return 255
        st["selected"] = stack
        _save(st)
        return 0
    if stack is None and args[:1] in (["config"], ["up"], ["stack"]):
        stack = st.get("selected")
        if stack is None:
            print("error: no stack selected; please use `pulumi stack select` to choose one", file=sys.stderr)
            return 255
    if args[:2] == ["config", "set-all"]:
        path = "--path" in args
        file = cwd / f"Pulumi.{stack}.yaml"
        doc = yaml.safe_load(file.read_text()) if file.is_file() else {}
        cfg = doc.setdefault("config", {})
        i = 2
        while i < len(args):
            if args[i] in ("--plaintext", "--secret"):
                key, sep, value = args[i + 1].partition("=")
                if not sep:
                    print(f"error: invalid config value {args[i + 1]!r}: expected key=value", file=sys.stderr)
                    return 255
                try:
                    _set_path(cfg, key, value, path)
                except SystemExit as exc:
                    print(exc, file=sys.stderr)
                    return 255
                i += 2
            else:
                i += 2 if args[i] == "--stack" else 1
        file.write_text(yaml.safe_dump(doc, sort_keys=False))
        return 0
    if args[:1] == ["up"]:
        if "--yes" not in args and "--skip-preview" not in args:
            print("error: --yes or --skip-preview must be passed in to proceed when running in non-interactive mode", file=sys.stderr)
            return 255
        print(f"Updating ({stack})")
        try:
            outputs = _up(str(stack), cwd)
        except ValueError as exc:  # the program's ConfigError: the update fails, as the real one does
            print(f"error: an unhandled error occurred: Program exited with non-zero exit code: 1\n{exc}", file=sys.stderr)
            return 255
        st["outputs"][stack] = outputs
        st["ups"] += 1
        _save(st)
        print("Resources:\n    12 unchanged\n    3 updated")
        return 0
    if args[:2] == ["stack", "output"] and "--json" in args:
        outs = st["outputs"].get(stack, {})
        show = "--show-secrets" in args
        print(json.dumps({k: (v["secret"] if show else "[secret]") if isinstance(v, dict) and "secret" in v else v for k, v in outs.items()}))
        return 0
    if args[:2] == ["stack", "history"]:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        print(json.dumps([{"version": st["ups"], "kind": "update", "startTime": now, "endTime": now, "message": "", "environment": {},
                           "config": {}, "result": "succeeded", "resourceChanges": {"same": 12, "update": 3}}]))
        return 0
    print(f"error: unknown command {' '.join(args[:2])!r} for \"pulumi\"", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
