"""Secured brokers in the Azure program, under Pulumi mocks (no Azure, no Pulumi CLI here).

The mocks answer for pulumi-tls and pulumi-random with recognisable fake keys and passwords, and
keep every input exactly as the engine would receive it (secrets still wrapped), so the tests can
check that each one reaches the engine only as a secret."""

from __future__ import annotations

import asyncio
import json
import runpy
import zlib
from dataclasses import dataclass
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime import settings as pulumi_settings

from tests.conftest import ROOT
from workloads import security
from workloads.config import load_stack
from workloads.plan import build_plan
from workloads.render import render_files

AZURE = {"adminCidr": "203.0.113.7/32", "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly user@host"}
SSH_SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nmock-ssh\n-----END OPENSSH PRIVATE KEY-----\n"
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how the engine protocol marks a secret value


class Mocks(pulumi.runtime.Mocks):
    """Providers' answers: fake PEMs for pulumi-tls, fake passwords for pulumi-random (all
    containing SECRETMARK when private), stdout for commands, a SAS token."""

    def __init__(self) -> None:
        self.inputs: dict[str, tuple[str, dict[str, Any]]] = {}
        self.secrets: set[str] = {SSH_SECRET.strip()}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.inputs[args.name] = (args.typ, dict(args.inputs))
        out = dict(args.inputs)
        out.setdefault("name", f"{args.name}{zlib.crc32(args.name.encode()) % 0xFFFF:04x}")
        if args.typ == "tls:index/privateKey:PrivateKey":
            out["privateKeyPem"] = f"-----BEGIN PRIVATE KEY-----\nSECRETMARK-{args.name}\n-----END PRIVATE KEY-----\n"
            out["privateKeyOpenssh"] = f"SECRETMARK-openssh-{args.name}"
            out["publicKeyOpenssh"] = f"ssh-ed25519 AAAA{args.name}"
            self.secrets |= {out["privateKeyPem"].strip(), out["privateKeyOpenssh"]}
        elif args.typ == "random:index/randomPassword:RandomPassword":
            out["result"] = f"SECRETMARKpw{zlib.crc32(args.name.encode())}"
            self.secrets.add(out["result"])
        elif args.typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            out["certPem"] = f"-----BEGIN CERTIFICATE-----\n{args.name}\n-----END CERTIFICATE-----\n"
        elif args.typ == "tls:index/certRequest:CertRequest":
            out["certRequestPem"] = f"-----BEGIN CERTIFICATE REQUEST-----\n{args.name}\n-----END CERTIFICATE REQUEST-----\n"
        elif args.typ == "azure-native:network:PublicIPAddress":
            out["ipAddress"] = "20.50.0.7"
        elif args.typ == "azure-native:resources:ResourceGroup":
            out["location"] = "westeurope"
        elif args.typ == "command:remote:Command":
            out["stdout"], out["stderr"] = "{}", ""
        return f"/subscriptions/0/{args.typ}/{args.name}", out

    def call(self, args: pulumi.runtime.MockCallArgs) -> Any:
        return {"serviceSasToken": "sv=2024&sig=SECRETMARKsas"} if args.token.endswith("listStorageAccountServiceSAS") else {}


@dataclass
class Run:
    mocks: Mocks
    outputs: dict[str, Any]

    def of(self, typ: str) -> dict[str, dict[str, Any]]:
        return {n: i for n, (t, i) in self.mocks.inputs.items() if t == typ}


def run(stack: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> Run:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi_settings.ROOT.set(None)
    from pulumi.runtime.stack import _get_rpc_manager

    # a program that failed earlier in this process leaves RPCs and output tasks bound to its closed loop
    _get_rpc_manager().clear()
    pulumi_settings.SETTINGS.outputs.clear()
    mocks = Mocks()
    doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    doc |= {"mqttlab:azure": AZURE, "mqttlab:sshPrivateKey": SSH_SECRET, "mqttlab:security": {"mode": mode}}
    pulumi.runtime.set_mocks(mocks, project="mqttlab", stack=stack, preview=False)
    pulumi.runtime.set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}, secret_keys=["mqttlab:sshPrivateKey"])
    monkeypatch.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        from pulumi.runtime.stack import wait_for_rpcs

        root = pulumi_settings.get_root_resource()
        outputs = {k: loop.run_until_complete(pulumi.Output.from_input(v).future()) for k, v in (root.outputs if root else {}).items()}  # type: ignore[attr-defined]
        loop.run_until_complete(wait_for_rpcs())
    finally:
        pulumi.runtime.set_all_config({})
    return Run(mocks, outputs)


def in_plain_text(value: Any) -> str:
    """Everything of a recorded input that is NOT wrapped as a secret, as text."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return ""
        return " ".join(f"{k} {in_plain_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(in_plain_text(v) for v in value)
    return str(value)


def secret_value(value: Any) -> Any:
    assert isinstance(value, dict) and SECRET_SIG in value, f"not a secret: {str(value)[:80]}"
    return value["value"]


@pytest.mark.parametrize("stack", ["distributed", "centralized"])
def test_tls_certificates_are_secrets_and_mqtt_is_8883_from_the_vnet_only(stack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run(stack, "tls", monkeypatch)
    cfg = load_stack(stack, ROOT).with_overrides({"security.mode": "tls"})
    plan = build_plan(cfg)
    # NSGs: MQTT on 8883 only, only from inside the VNet; nothing on 1883
    for nsg in r.of("azure-native:network:NetworkSecurityGroup").values():
        allowed = [x for x in nsg["securityRules"] if x["access"] == "Allow" and x["destinationPortRange"] != "22"]
        assert [(x["destinationPortRange"], x["sourceAddressPrefix"]) for x in allowed] == [("8883", "VirtualNetwork")]
    # one CA, one server certificate per broker, named for the broker and every entry point
    cas = r.of("tls:index/selfSignedCert:SelfSignedCert")
    assert len(cas) == 1 and next(iter(cas.values()))["isCaCertificate"] is True
    csrs = r.of("tls:index/certRequest:CertRequest")
    vips = sorted({c.target.rsplit(":")[0] for c in plan.clients})
    assert {i["subject"]["commonName"]: i["ipAddresses"] for i in csrs.values()} == {b.name: [b.address, *vips] for b in plan.brokers}
    signed = r.of("tls:index/locallySignedCert:LocallySignedCert")
    assert len(signed) == 3 and all("server_auth" in i["allowedUses"] for i in signed.values())
    for inputs in [*csrs.values(), *signed.values(), *cas.values()]:  # every private key reaches the engine as a secret
        for k, v in inputs.items():
            if "private" in k.lower():
                assert "SECRETMARK" in secret_value(v)
    assert len(r.of("random:index/randomPassword:RandomPassword")) == len(security.users(plan))
    # each host gets the material on stdin, as a secret; the command line holds no secret
    installs = {n: i for n, i in r.of("command:remote:Command").items() if n.endswith("-security")}
    assert set(installs) == {f"{h.name}-security" for h in plan.hosts}
    for inputs in installs.values():
        doc = json.loads(secret_value(inputs["stdin"]))
        m = security.material_from_json(json.dumps(doc), plan, cfg.security, "stdin")
        assert set(m.servers) == {"broker1", "broker2", "broker3"} and all("SECRETMARK" in p.key for p in m.servers.values())
        assert "security-install" in inputs["create"] and "SECRETMARK" not in inputs["create"]
    # nothing secret in plain text in ANY recorded input of ANY resource, nor in the outputs
    plain = " ".join(in_plain_text(i) for _t, i in r.mocks.inputs.values())
    assert r.mocks.secrets and not [s for s in r.mocks.secrets if s in plain]
    assert "SECRETMARK" not in plain
    exported = json.dumps({k: v for k, v in r.outputs.items() if k not in ("resultsSas", "fetchCommand")}, default=str)
    assert "SECRETMARK" not in exported and '"broker1": "10.2.0.20:8883"' in exported


def test_install_runs_before_anything_that_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    """brokers-up and balancer-apply render with the material: they must come after it."""
    r = run("distributed", "password", monkeypatch)
    cmds = r.of("command:remote:Command")
    assert set(n for n in cmds if n.endswith("-security")) == {"brokers-security", "ipvs1-security", "ipvs2-security"}
    assert not r.of("tls:index/selfSignedCert:SelfSignedCert")  # password mode: no certificates
    for inputs in r.of("azure-native:network:NetworkSecurityGroup").values():
        assert {x["destinationPortRange"] for x in inputs["securityRules"] if x["access"] == "Allow"} == {"22", "1883"}


def test_dependencies_put_the_material_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from pulumi.runtime.mocks import MockMonitor

    deps: dict[str, list[str]] = {}
    orig = MockMonitor.RegisterResource

    def record(self: MockMonitor, request: Any) -> Any:
        resp = orig(self, request)
        deps[request.name] = [u.rsplit("::", 1)[-1] for u in request.dependencies]
        return resp

    monkeypatch.setattr(MockMonitor, "RegisterResource", record)
    run("distributed", "mtls", monkeypatch)
    assert "brokers-security" in deps["brokers-brokers-up"] and "ipvs1-security" in deps["ipvs1-balancer-apply"]
    assert "brokers-install" in deps["brokers-security"]


def test_mtls_issues_a_client_certificate_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("distributed", "mtls", monkeypatch)
    plan = build_plan(load_stack("distributed", ROOT))
    signed = r.of("tls:index/locallySignedCert:LocallySignedCert")
    clients = sorted(n.removeprefix("security-cert-") for n, i in signed.items() if "client_auth" in i["allowedUses"])
    assert clients == sorted(security.users(plan)) and len(signed) == 3 + len(clients)


def test_reference_mode_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("distributed", "none", monkeypatch)
    assert not [n for n, (t, _i) in r.mocks.inputs.items() if t.startswith(("tls:index/selfSigned", "random:")) or n.endswith("-security")]


def test_material_from_the_program_renders_what_the_lab_renders() -> None:
    """A VM renders from the delivered JSON exactly the files the lab renders from its own
    material (passwd differs only by its random salts), and refuses material that lacks a part."""
    cfg = load_stack("distributed", ROOT).with_overrides({"security.mode": "mtls"})
    plan = build_plan(cfg)
    m = security.generate(plan, cfg.security)
    again = security.material_from_json(security.material_to_json(m), plan, cfg.security, "test")
    a, b = render_files(plan, cfg, m), render_files(plan, cfg, again)
    assert set(a) == set(b) and [k for k in a if a[k] != b[k]] == [f"brokers/{x.name}/passwd" for x in plan.brokers]
    doc = json.loads(security.material_to_json(m))
    del doc["servers"]["broker2"], doc["passwords"]["bench-sub"]
    with pytest.raises(security.SecurityFileError, match="bench-sub.*server certificate of broker2"):
        security.material_from_json(json.dumps(doc), plan, cfg.security, "stdin")
