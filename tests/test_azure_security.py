"""Secured brokers in the Azure program, under the contract-checked Pulumi mocks (no Azure, no
Pulumi CLI here).

The mocks of :mod:`infra.contracts` refuse what pulumi-tls, pulumi-random and Azure refuse,
answer with recognisable fake keys and passwords (all containing ``MOCK_SECRET``), and keep every
input exactly as the engine would receive it (secrets still wrapped), so the tests can check that
each one reaches the engine only as a secret."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.contracts import MOCK_SECRET, SECRET_SIG
from tests.conftest import ROOT
from tests.test_azure import SECRET, Program, stack_config
from tests.test_azure import run as run_program
from workloads.describe.config import load_stack
from workloads.describe.plan import build_plan
from workloads.render import security
from workloads.render.files import render_files


class Run:
    """A program run, seen through the raw inputs (secrets still wrapped) of each type."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.outputs = program.outputs
        self.secrets = program.secrets | {SECRET["mqttlab:sshPrivateKey"].strip()}

    def of(self, typ: str) -> dict[str, dict[str, Any]]:
        return {r.name: r.raw for r in self.program.of(typ)}

    def all_inputs(self) -> list[dict[str, Any]]:
        return [r.raw for r in self.program.resources]


def run(stack: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(run_program(stack, monkeypatch, stack_config(stack, extra={"mqttlab:security": {"mode": mode}})))


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
                assert MOCK_SECRET in secret_value(v)
    assert len(r.of("random:index/randomPassword:RandomPassword")) == len(security.users(plan))
    # each host gets the material on stdin, as a secret; the command line holds no secret
    installs = {n: i for n, i in r.of("command:remote:Command").items() if n.endswith("-security")}
    assert set(installs) == {f"{h.name}-security" for h in plan.hosts}
    for inputs in installs.values():
        doc = json.loads(secret_value(inputs["stdin"]))
        m = security.material_from_json(json.dumps(doc), plan, cfg.security, "stdin")
        assert set(m.servers) == {"broker1", "broker2", "broker3"} and all(MOCK_SECRET in p.key for p in m.servers.values())
        assert "security-install" in inputs["create"] and MOCK_SECRET not in inputs["create"]
    # nothing secret in plain text in ANY recorded input of ANY resource, nor in the outputs
    plain = " ".join(in_plain_text(i) for i in r.all_inputs())
    assert len(r.secrets) > 10 and not [s for s in r.secrets if s in plain]
    assert MOCK_SECRET not in plain
    exported = json.dumps(r.outputs, default=str)
    assert MOCK_SECRET not in exported and '"broker1": "10.2.0.20:8883"' in exported


def test_install_runs_before_anything_that_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    """brokers-up and balancer-apply render with the material: they must come after it."""
    r = run("distributed", "password", monkeypatch)
    cmds = r.of("command:remote:Command")
    assert set(n for n in cmds if n.endswith("-security")) == {"brokers-security", "ipvs1-security", "ipvs2-security"}
    assert not r.of("tls:index/selfSignedCert:SelfSignedCert")  # password mode: no certificates
    for inputs in r.of("azure-native:network:NetworkSecurityGroup").values():
        assert {x["destinationPortRange"] for x in inputs["securityRules"] if x["access"] == "Allow"} == {"22", "1883"}


def test_dependencies_put_the_material_first(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", "mtls", monkeypatch).program
    deps = {r.name: p.names(r.deps) for r in p.resources}
    assert "brokers-security" in deps["brokers-brokers-up"] and "ipvs1-security" in deps["ipvs1-balancer-apply"]
    assert "brokers-install" in deps["brokers-security"]


def test_mtls_issues_a_client_certificate_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("distributed", "mtls", monkeypatch)
    plan = build_plan(load_stack("distributed", ROOT))
    signed = r.of("tls:index/locallySignedCert:LocallySignedCert")
    clients = sorted(n.removeprefix("security-cert-") for n, i in signed.items() if "client_auth" in i["allowedUses"])
    assert clients == sorted(security.users(plan)) and len(signed) == 3 + len(clients)


def test_reference_mode_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", "none", monkeypatch).program
    assert not [r.name for r in p.resources if r.type.startswith(("tls:index/selfSigned", "random:")) or r.name.endswith("-security")]


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
