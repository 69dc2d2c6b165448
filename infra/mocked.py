"""The real ``__main__.py`` under Pulumi mocks, in process: every resource the program registers,
with its inputs resolved, its dependencies and options, and the stack's outputs.

The Pulumi engine cannot run here, so this is how the program is seen without it: by the tests
(which assert on the inputs) and by the rehearsal (which executes the remote steps it finds).
The mocks answer as the providers would and refuse what they refuse (:mod:`infra.contracts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import runpy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.mocks import MockMonitor

import infra.login
from infra.contracts import NAMESPACES, ContractMocks, ContractViolation, arm_stand_in, options_violation, unsecret

ROOT = Path(__file__).resolve().parent.parent  # the project: __main__.py and the stack files


@dataclass
class Res:
    type: str
    name: str
    urn: str
    deps: list[str]
    parent: str
    options: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # resolved, secrets unwrapped
    raw: dict[str, Any] = field(default_factory=dict)  # as the engine would see them (secrets wrapped)
    outputs: dict[str, Any] = field(default_factory=dict)  # what the mocks answered


@dataclass
class Program:
    resources: list[Res]
    outputs: dict[str, Any]
    violations: list[str] = field(default_factory=list)
    secret_outputs: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)  # the private keys and passwords the mocks made

    def of(self, typ: str) -> list[Res]:
        return [r for r in self.resources if r.type == typ]

    def one(self, name: str) -> Res:
        return next(r for r in self.resources if r.name == name)

    def names(self, urns: list[str]) -> set[str]:
        by = {r.urn: r.name for r in self.resources}
        return {by[u] for u in urns if u in by}


class Monitor(MockMonitor):
    """Records what the engine would see, including dependencies, which Mocks cannot."""

    def __init__(self, mocks: ContractMocks) -> None:
        super().__init__(mocks)
        self.registered: list[Res] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        why = options_violation(request.type, request.name, list(request.replaceOnChanges), list(request.ignoreChanges))
        if why:
            self.mocks.violations.append(why)  # type: ignore[attr-defined]
            raise ContractViolation(why)
        resp = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registered.append(Res(request.type, request.name, resp.urn, list(request.dependencies), request.parent,
                                       options={"replaceOnChanges": list(request.replaceOnChanges), "ignoreChanges": list(request.ignoreChanges),
                                                "deleteBeforeReplace": request.deleteBeforeReplace}))
        return resp


@contextlib.contextmanager
def _in(root: Path) -> Iterator[None]:
    """The program reads its stack files and writes its bundle relative to the project folder."""
    before = Path.cwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(before)


def run_program(stack: str, config: dict[str, str], mocks: ContractMocks | None = None, allow_violations: bool = False,
                root: Path = ROOT) -> Program:
    """``__main__.py`` of ``root`` for ``stack`` with the engine config ``config``, answered by
    ``mocks`` (and, for the providers check of :mod:`infra.login`, by a stand-in for ARM)."""
    mocks = mocks or ContractMocks(registered=NAMESPACES)
    with contextlib.ExitStack() as stack_of:
        endpoint = infra.login.ARM_ENDPOINT
        infra.login.ARM_ENDPOINT = stack_of.enter_context(arm_stand_in(mocks))
        stack_of.callback(setattr, infra.login, "ARM_ENDPOINT", endpoint)
        stack_of.enter_context(_in(root))
        return _run(stack, mocks, config, allow_violations)


def _run(stack: str, mocks: ContractMocks, config: dict[str, str], allow_violations: bool) -> Program:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi_settings.ROOT.set(None)
    pulumi_settings.SETTINGS.rpc_manager.clear()  # a program that failed leaves RPCs and output tasks
    pulumi_settings.SETTINGS.outputs.clear()  # of its own (closed) event loop behind
    recorded: dict[str, dict[str, Any]] = {}
    raw: dict[str, dict[str, Any]] = {}
    answered: dict[str, dict[str, Any]] = {}
    orig = mocks.new_resource

    def new_resource(args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        recorded[args.name] = unsecret(dict(args.inputs))
        raw[args.name] = dict(args.inputs)
        rid, out = orig(args)
        answered[args.name] = unsecret(dict(out))
        return rid, out

    mocks.new_resource = new_resource  # type: ignore[method-assign]
    monitor = Monitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="mqttlab", stack=stack, preview=False, monitor=monitor)  # type: ignore[arg-type]
    pulumi.runtime.set_all_config(config)
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    try:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        from pulumi.runtime.stack import wait_for_rpcs

        stack_resource = pulumi_settings.get_root_resource()
        for k, v in (stack_resource.outputs if stack_resource else {}).items():  # type: ignore[attr-defined]
            out = pulumi.Output.from_input(v)
            outputs[k] = loop.run_until_complete(out.future())
            if loop.run_until_complete(out.is_secret()):
                secret_outputs.add(k)
        loop.run_until_complete(wait_for_rpcs())
    except Exception:
        if mocks.violations and not allow_violations:
            raise ContractViolation("; ".join(mocks.violations)) from None
        if not allow_violations:
            raise
    finally:
        pulumi.runtime.set_all_config({})
    for r in monitor.registered:
        r.inputs = recorded.get(r.name, {})
        r.raw = raw.get(r.name, {})
        r.outputs = answered.get(r.name, {})
    if mocks.violations and not allow_violations:
        raise ContractViolation("; ".join(mocks.violations))
    return Program(monitor.registered, outputs if not mocks.violations else {}, list(mocks.violations), secret_outputs if not mocks.violations else set(),
                   set(mocks.secrets))
