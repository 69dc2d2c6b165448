"""The program's remote steps as the rehearsal executes them: taken from ``__main__.py`` run under
the contract mocks (:mod:`infra.mocked`), never re-typed.

Three answers differ from the tests' mocks, because here they are used for real:
- every ``tls:PrivateKey`` is a real Ed25519 key (the host keys end up in the hosts' sshd and
  are pinned by the steps' connections);
- each VM's public address is the address of the rehearsal host that stands in for it;
- each ``Command``'s ``stdout`` is a marker: the value the engine only knows once the step ran
  (the agreed start of ``bench-start``) is replaced in the steps that consume it by what the
  step really printed (:func:`resolve`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.contracts import NAMESPACES, ContractMocks
from infra.mocked import ROOT, Program, Res, run_program
from workloads.describe.config import parse_config
from workloads.hosts.azure.bench import start_epoch

COMMAND, COPY = "command:remote:Command", "command:remote:CopyToRemote"
MARK_BASE = 4_102_444_800  # 2100-01-01: a step's stdout before it ran, far beyond any real agreed start
ADMIN_NET = ipaddress.ip_network("198.19.255.0/24")  # the "public" side: the controller and each host's public address
CONTROLLER = str(ADMIN_NET.network_address + 2)  # where the steps are dialled from (adminCidr)


def ssh_keypair(comment: str) -> tuple[str, str]:
    """A real Ed25519 key: (OpenSSH private key, public key line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}\n"


class RehearsalMocks(ContractMocks):
    """The contract mocks (every rule still applies) with real keys, the rehearsal hosts'
    addresses as the VMs' public IPs, and a marker for each command's stdout."""

    def __init__(self, addresses: dict[str, str], keys: dict[str, list[str]]) -> None:
        super().__init__(registered=NAMESPACES)
        self.addresses = addresses  # VM (plan host) name -> address the controller dials
        self.keys = keys  # key name -> [private, public]: kept between rehearsals, as Pulumi keeps them in its state
        self.marks: dict[str, str] = {}  # command name -> its stdout marker

    def _tls_key(self, name: str, inputs: Mapping[str, Any], digest: str) -> dict[str, str]:
        out = super()._tls_key(name, inputs, digest)
        if inputs.get("algorithm") == "ED25519":
            if name not in self.keys:
                self.keys[name] = list(ssh_keypair(name))
            out["privateKeyOpenssh"], out["publicKeyOpenssh"] = self.keys[name]
            self.secrets.add(self.keys[name][0].strip())
        return out

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, out = super().new_resource(args)
        if args.typ == "azure-native:network:PublicIPAddress":
            vm = args.name.removesuffix("-pip")
            if vm not in self.addresses:  # the next rehearsal host's address on the administration switch
                self.addresses[vm] = str(ADMIN_NET.network_address + 10 + len(self.addresses))
            out["ipAddress"] = self.addresses[vm]
        if args.typ == COMMAND:
            mark = f"{MARK_BASE + len(self.marks):.3f}"
            self.marks[args.name] = mark
            out["stdout"] = mark + "\n"
        return rid, out


@dataclass(frozen=True)
class RemoteStep:
    """One ``Command`` or ``CopyToRemote`` the program registers, as the engine would run it."""

    name: str
    kind: str  # "command" or "copy"
    vm: str  # the plan host whose VM it dials
    component: str  # the component it belongs to (the parent's name)
    user: str
    host_key: str  # the pinned server key (connection.hostKey)
    inputs: dict[str, Any]  # create, environment, stdin, triggers, connection, source, remotePath: as registered
    after: tuple[str, ...]  # remote steps it waits for (its dependencies, through other resources)
    source: str | None = None  # CopyToRemote: the local file
    mark: str | None = None  # this command's stdout marker

    @property
    def create(self) -> str:
        return str(self.inputs.get("create") or "")

    @property
    def digest(self) -> str:
        """What decides whether a real update runs the step again: every input (pulumi-command
        replaces on ``connection`` and ``triggers`` and updates, running ``create`` again, on
        any other change; remote/command.go), plus the copied file's content."""
        data = json.dumps(self.inputs, sort_keys=True, default=_plain)
        if self.source:
            data += hashlib.sha256(Path(self.source).read_bytes()).hexdigest()
        return hashlib.sha256(data.encode()).hexdigest()


def _plain(value: Any) -> str:
    """An asset by its path (its content is hashed apart), never by its object's address."""
    path = getattr(value, "path", None)
    if path is None:
        raise TypeError(f"a step input of type {type(value).__name__} cannot be compared between updates")
    return f"asset:{path}"


@dataclass
class Rehearsed:
    """The program as the rehearsal sees it."""

    program: Program
    steps: list[RemoteStep]  # in an order the dependencies allow (registration order among equals)
    user_data: dict[str, str]  # VM -> its cloud-init user-data, decoded from customData
    addresses: dict[str, str]  # VM -> the address its connection dials
    operator_key: str  # the private key the steps log in with
    marks: dict[str, str] = field(default_factory=dict)


def stack_config(stack: str, operator_public: str, operator_private: str, run_id: str | None, root: Path = ROOT,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``Pulumi.<stack>.yaml`` as the engine would pass it, with the operator's key and adminCidr
    of the rehearsal (what the README asks every user to set) and ``overrides`` (``--set``: what
    ``pulumi config set --path`` would have changed in the stack, checked by the same rules)."""
    path = root / f"Pulumi.{stack}.yaml"
    doc = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    if overrides:
        doc = dict(parse_config(doc, stack).with_overrides(overrides).raw)
    azure = dict(doc.get("mqttlab:azure") or {})
    azure |= {"adminCidr": f"{CONTROLLER}/32", "sshPublicKey": operator_public.strip()}
    azure.pop("generateSshKey", None)
    doc = {**doc, "mqttlab:azure": azure, "mqttlab:sshPrivateKey": operator_private}
    if run_id is not None:
        doc["mqttlab:runId"] = run_id
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items() if v is not None}


def remote_steps(program: Program, marks: Mapping[str, str], addresses: Mapping[str, str]) -> list[RemoteStep]:
    """Every Command and CopyToRemote, each with the remote steps it waits for, in dependency order."""
    by_urn = {r.urn: r for r in program.resources}
    children: dict[str, list[Res]] = {}
    for r in program.resources:
        children.setdefault(r.parent, []).append(r)
    remote = [r for r in program.resources if r.type in (COMMAND, COPY)]
    vm_of = {a: vm for vm, a in addresses.items()}

    def waits_for(r: Res) -> set[str]:
        found: set[str] = set()
        seen: set[str] = set()
        todo = list(r.deps)
        while todo:
            urn = todo.pop()
            if urn in seen or urn not in by_urn:
                continue
            seen.add(urn)
            d = by_urn[urn]
            if d.type in (COMMAND, COPY):
                found.add(d.name)
                continue
            todo += d.deps
            if d.type.startswith("mqttlab:"):  # a component: the engine waits for its children
                todo += [c.urn for c in children.get(urn, [])]
        return found

    steps: dict[str, RemoteStep] = {}
    for r in remote:
        conn = r.inputs.get("connection") or {}
        host = str(conn.get("host") or "")
        if host not in vm_of:
            raise ValueError(f"step {r.name} dials {host!r}, which no rehearsal host has")
        source = None
        if r.type == COPY:
            asset = r.raw.get("source")
            source = str(getattr(asset, "path", "")) or None
        steps[r.name] = RemoteStep(r.name, "copy" if r.type == COPY else "command", vm_of[host], by_urn[r.parent].name if r.parent in by_urn else "",
                                   str(conn.get("user") or ""), str(conn.get("hostKey") or ""), dict(r.inputs), tuple(sorted(waits_for(r))),
                                   source, marks.get(r.name))
    return order(list(steps.values()))


def order(steps: Sequence[RemoteStep]) -> list[RemoteStep]:
    """A topological order, stable in registration order; a cycle is refused (the engine would too)."""
    left = list(steps)
    done: set[str] = set()
    out: list[RemoteStep] = []
    names = {s.name for s in steps}
    while left:
        ready = [s for s in left if all(a in done or a not in names for a in s.after)]
        if not ready:
            raise ValueError("the remote steps wait for each other in a circle: " + ", ".join(s.name for s in left))
        for s in ready:
            out.append(s)
            done.add(s.name)
        left = [s for s in left if s.name not in done]
    return out


def user_data(program: Program) -> dict[str, str]:
    """Each VM's cloud-init user-data, as Azure hands ``customData`` to cloud-init."""
    out: dict[str, str] = {}
    for vm in program.of("azure-native:compute:VirtualMachine"):
        data = (vm.inputs.get("osProfile") or {}).get("customData")
        out[vm.name.removesuffix("-vm")] = base64.b64decode(str(data)).decode() if data else ""
    return out


def rehearsed(stack: str, memory: dict[str, Any], run_id: str | None = None, root: Path = ROOT,
              overrides: Mapping[str, Any] | None = None) -> Rehearsed:
    """The program for ``stack`` under the rehearsal's mocks; each VM it makes answers at the next
    address of the administration switch. ``memory`` holds what a real stack keeps between
    updates and gains what this run made: the keys (the operator's and each ``tls:PrivateKey``)
    and the VMs' public addresses."""
    keys = memory.setdefault("keys", {})
    if "operator" not in keys:
        keys["operator"] = list(ssh_keypair("mqttlab-rehearsal"))
    private, public = keys["operator"]
    mocks = RehearsalMocks(memory.setdefault("addresses", {}), keys)
    program = run_program(stack, stack_config(stack, public, private, run_id, root, overrides), mocks, root=root)
    steps = remote_steps(program, mocks.marks, mocks.addresses)
    return Rehearsed(program, steps, user_data(program), dict(mocks.addresses), private, dict(mocks.marks))


def resolve(text: str, stdout: Mapping[str, str], marks: Mapping[str, str]) -> str:
    """``text`` (a step's create, stdin or environment value) with each marker replaced by what
    its step printed, in the form the program hands it on (``start_epoch``)."""
    for step, mark in marks.items():
        if mark in text:
            if step not in stdout:
                raise ValueError(f"an input needs the output of step {step}, which has not run")
            text = text.replace(mark, start_epoch(stdout[step]))
    return text
