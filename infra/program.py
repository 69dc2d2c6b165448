"""The Azure program: stack config -> plan -> components -> outputs.

Configuration is read and validated completely before the first resource is registered, so a
bad value stops ``pulumi up`` with the key named and nothing created.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi_tls as tls
from pulumi.runtime import config as config_runtime
from pulumi.runtime.config import get_config
from pulumi_azure_native import authorization

from infra.bundle import build_bundle
from infra.components import BalancerHost, BenchmarkRun, BrokerHost, Ctx, Network, ResultsStore, ssh_commands
from infra.login import caller_principal_type, require_providers
from infra.security import SecurityMaterial
from infra.settings import AzureSettings, parse_azure, private_key_is_encrypted
from workloads.describe.config import ConfigError, ExperimentConfig, parse_config
from workloads.describe.plan import Plan, build_plan
from workloads.describe.schema import check_config

SECTIONS = ("network", "brokers", "bridge", "balancer", "scenario", "security")


def read_config(stack: str) -> tuple[ExperimentConfig, AzureSettings, pulumi.Output[str] | None, dict[str, Any]]:
    """The experiment through the same parser the local lab uses, plus the Azure settings, plus
    the experiment sections as read (they become the VMs' stack file)."""
    check_config(engine_config())  # a misspelt key or section is refused before anything is read
    cfg = pulumi.Config("mqttlab")
    raw: dict[str, Any] = {}
    if cfg.get("topology") is not None:
        raw["mqttlab:topology"] = cfg.get("topology")
    for section in SECTIONS:
        try:
            value = cfg.get_object(section)
        except Exception as exc:  # noqa: BLE001 - pulumi raises its own type for non-JSON values
            raise ConfigError(f"mqttlab:{section}", cfg.get(section), f"must be a mapping ({exc})") from None
        if value is not None:
            raw[f"mqttlab:{section}"] = value
    try:
        faults = cfg.get_object("faults")
    except Exception as exc:  # noqa: BLE001 - as above
        raise ConfigError("mqttlab:faults", cfg.get("faults"), f"must be a list of faults like broker2:kill@5s ({exc})") from None
    if faults is not None:  # checked against the plan by parse_config; carried out by the fault steps
        raw["mqttlab:faults"] = faults
    experiment = parse_config(raw, stack)
    az = parse_azure(cfg.get_object("azure"), cfg.get("runId"))
    private_key = cfg.get_secret("sshPrivateKey")
    if private_key is None and not az.generate_ssh_key:
        raise ConfigError("mqttlab:sshPrivateKey", None, "is required for the remote commands unless azure.generateSshKey is true "
                          "(pulumi config set --secret mqttlab:sshPrivateKey < ~/.ssh/id_ed25519)")
    # read raw (no secret warning) only to check it; the value used stays wrapped as a secret
    raw_key = get_config("mqttlab:sshPrivateKey")
    if private_key is not None and raw_key and private_key_is_encrypted(raw_key) and get_config("mqttlab:sshPrivateKeyPassword") is None:
        raise ConfigError("mqttlab:sshPrivateKey", "(passphrase-protected key)", "needs its passphrase: "
                          "pulumi config set --secret mqttlab:sshPrivateKeyPassword (or use a key without one)")
    return experiment, az, private_key, raw


def engine_config() -> dict[str, Any]:
    """Every key the engine passed (``PULUMI_CONFIG`` and the runtime's map, as
    ``pulumi.Config`` reads them), objects decoded: ``pulumi.Config`` only answers for the keys
    asked, so a misspelt one would otherwise go unseen."""
    merged = {**config_runtime.get_config_env(), **config_runtime.CONFIG.get()}
    out: dict[str, Any] = {}
    for key, value in merged.items():
        try:
            out[key] = json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value
        except json.JSONDecodeError:
            out[key] = value  # the section's own parse names what is wrong with it
    return out


def from_login(field: str, value: str | None) -> str:
    """A value of the Azure login (``getClientConfig``) the role assignments are built from. An
    empty one would otherwise surface as a malformed role definition id or principal deep inside
    Pulumi, or as Azure's refusal after the VMs exist; here it stops the program, named."""
    if not value:
        raise pulumi.RunError(f"the Azure login gives no {field} (azure-native getClientConfig): "
                              "log in with `az login` and pick the subscription with `az account set -s ...`")
    return value


def namespaces(az: AzureSettings) -> list[str]:
    """The resource provider namespaces this program creates resources in, beyond those every
    subscription has registered (Microsoft.Resources, Microsoft.Authorization)."""
    return ["Microsoft.Compute", "Microsoft.Network", "Microsoft.Storage", *(["Microsoft.DevTestLab"] if az.auto_shutdown else [])]


def build() -> dict[str, Any]:
    project, stack = pulumi.get_project(), pulumi.get_stack()
    try:
        experiment, az, private_key, raw = read_config(stack)
    except ConfigError as exc:
        raise pulumi.RunError(f"configuration error: {exc}") from None
    plan: Plan = build_plan(experiment)
    require_providers(namespaces(az))  # before the first resource: Azure would refuse part-way
    tags = {"project": project, "stack": stack, "run": az.run_id}
    if az.generate_ssh_key:
        key = tls.PrivateKey("ssh-key", algorithm="ED25519")
        public_key: pulumi.Input[str] = key.public_key_openssh
        private: pulumi.Input[str] = key.private_key_openssh
    else:
        public_key, private = str(az.ssh_public_key), private_key  # type: ignore[assignment]
    bundle = build_bundle(Path.cwd(), stack, raw)
    client = authorization.get_client_config_output()
    operator_type = caller_principal_type()  # the operator's role assignment must name it
    net = Network("mqttlab", plan, az, tags)
    sec = SecurityMaterial("security", plan, experiment.security) if experiment.security.enabled else None
    ctx = Ctx(project, stack, plan, az, location=net.resource_group.location, resource_group=net.resource_group.name, bundle=bundle,
              private_key_password=pulumi.Config("mqttlab").get_secret("sshPrivateKeyPassword"),
              subscription_id=client.subscription_id.apply(lambda v: from_login("subscriptionId", v)),
              operator_object_id=client.object_id.apply(lambda v: from_login("objectId", v)), operator_principal_type=operator_type,
              security=sec, plan_faults=experiment.faults)
    store = ResultsStore("results", ctx)
    brokers = BrokerHost("brokers", ctx, net.subnets[plan.host("brokers").subnet], public_key, private)
    balancers = [BalancerHost(h.name, ctx, h, net.subnets[h.subnet], public_key, private) for h in plan.balancer_hosts]
    run = BenchmarkRun("bench", ctx, brokers, balancers, store)
    prefix = f"{stack}/{az.run_id}/"
    outputs: dict[str, Any] = {
        "topology": plan.topology,
        "runId": az.run_id,
        "resultsUrl": store.url,
        "resultsPrefix": prefix,
        "storageAccount": store.account.name,
        # the operator's own Azure login (Storage Blob Data Reader on the container): no key, no SAS
        "fetchCommand": pulumi.Output.concat(
            "mkdir -p runs/azure && az storage blob download-batch --auth-mode login --account-name ", store.account.name,
            f" --source results --pattern '{prefix}*' --destination runs/azure"),
        "entryPoints": {c.host: c.target for c in plan.clients},
        "balancers": [b.host for b in plan.balancers],
        "brokerAddresses": {b.name: f"{b.address}:{b.port}" for b in plan.brokers},
        "sshCommands": ssh_commands([brokers.vm, *[b.vm for b in balancers]], az.admin_user),
        "benchSummary": run.summary,
    }
    if az.generate_ssh_key:
        outputs["sshPrivateKey"] = pulumi.Output.secret(private)
    for k, v in outputs.items():
        pulumi.export(k, v)
    return outputs
