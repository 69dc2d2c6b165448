"""Secured brokers on Azure: the CA, certificates and passwords as Pulumi resources.

The same material the lab makes with ``cryptography`` (:mod:`workloads.render.security`), made here
with ``pulumi-tls`` and ``pulumi-random`` so it lives in the stack's state, where Pulumi encrypts
secrets: private keys and passwords are secret outputs, reach each VM only on a remote command's
stdin (``mqttlab host security-install``), and never appear in a command line, a tag, an output or
a log. Certificate names and addresses come from the plan, as in the lab.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_random as random
import pulumi_tls as tls

from workloads.describe.config import SecurityConfig
from workloads.describe.plan import Plan
from workloads.hosts.azure import steps
from workloads.render import security


def _key(name: str, opts: pulumi.ResourceOptions) -> tls.PrivateKey:
    return tls.PrivateKey(name, algorithm="ECDSA", ecdsa_curve="P256", opts=opts)  # the lab's key type too


def _secret(value: pulumi.Output[str]) -> pulumi.Output[str]:
    """Secret by our own say-so, not only by the provider's additionalSecretOutputs."""
    return pulumi.Output.secret(value)


class SecurityMaterial(pulumi.ComponentResource):
    """Everything :func:`workloads.render.security.material_from_json` expects, as one secret JSON."""

    def __init__(self, name: str, plan: Plan, sec: SecurityConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:SecurityMaterial", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        hours = sec.cert_days * 24
        parts: dict[str, Any] = {"passwords": {}, "caCert": "", "servers": {}, "clients": {}}
        for user in security.users(plan):
            pw = random.RandomPassword(f"{name}-pw-{user}", length=32, special=False, opts=child)
            parts["passwords"][user] = _secret(pw.result)
        if sec.tls:
            ca_key = _key(f"{name}-ca-key", child)
            ca_pem = _secret(ca_key.private_key_pem)
            ca = tls.SelfSignedCert(
                f"{name}-ca", private_key_pem=ca_pem, is_ca_certificate=True, validity_period_hours=hours,
                allowed_uses=["cert_signing", "crl_signing"], subject={"common_name": f"mqttlab {plan.stack} CA", "organization": "mqttlab"},
                opts=child,
            )
            parts["caCert"] = ca.cert_pem

            def issue(cn: str, server: bool, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> dict[str, Any]:
                key = _key(f"{name}-key-{cn}", child)
                key_pem = _secret(key.private_key_pem)
                csr = tls.CertRequest(f"{name}-csr-{cn}", private_key_pem=key_pem, dns_names=list(dns), ip_addresses=list(ips),
                                      subject={"common_name": cn, "organization": "mqttlab"}, opts=child)
                cert = tls.LocallySignedCert(
                    f"{name}-cert-{cn}", cert_request_pem=csr.cert_request_pem, ca_private_key_pem=ca_pem,
                    ca_cert_pem=ca.cert_pem, validity_period_hours=hours,
                    allowed_uses=["digital_signature", "key_agreement", "server_auth" if server else "client_auth"], opts=child,
                )
                return {"cert": cert.cert_pem, "key": key_pem}

            parts["servers"] = {b.name: issue(b.name, True, *security.server_names(plan, b)) for b in plan.brokers}
            if sec.mode == "mtls":
                parts["clients"] = {u: issue(u, False) for u in security.users(plan)}
        # one secret value: whatever is derived from it stays secret in state and in every diff
        self.json: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.from_input(parts).apply(lambda d: json.dumps(d, sort_keys=True)))
        self.register_outputs({})

    def install(self, name: str, conn: command.remote.ConnectionArgs, stack: str,
                depends_on: list[pulumi.Resource], vm_id: pulumi.Input[str], timeout_s: int = 300) -> command.remote.Command:
        """A host's copy of the material, piped on stdin; rerun whenever the material or the VM
        changes. No ``delete``: pulumi-command runs a delete over SSH at destroy (a deallocated VM
        cannot answer) and, on a change, after the new create, where it would remove what that
        create just wrote (provider/pkg/provider/remote/commandController.go). The file goes
        with the VM's disk; a rerun overwrites it."""
        return command.remote.Command(
            f"{name}-security", connection=conn, stdin=self.json, triggers=[self.json, vm_id],
            create=steps.line("security-install", stack, timeout_s),
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )
