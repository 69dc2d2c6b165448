"""The contract-checked mocks refuse what Azure and the providers refuse, naming the rule: the
proof that the Azure tests can fail where a real ``pulumi up`` would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_random as random
import pulumi_tls as tls
import pytest
import yaml
from pulumi.runtime import settings as pulumi_settings
from pulumi_azure_native import authorization, compute, network, storage

from infra.contracts import CALLER_OBJECT_ID, DEFAULT_REGISTERED, RULES, ContractMocks, autoname
from tests.conftest import ROOT
from tests.test_azure import AZURE, run, stack_config


def under_mocks(program: Callable[[], object], mocks: ContractMocks | None = None) -> list[str]:
    """Run a tiny program under the contract mocks; the violations they recorded."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi_settings.ROOT.set(None)
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    mocks = mocks or ContractMocks()
    pulumi.runtime.set_mocks(mocks, project="contracts", stack="t", preview=False)
    try:
        program()
        from pulumi.runtime.stack import wait_for_rpcs

        loop.run_until_complete(wait_for_rpcs())
    except Exception:  # noqa: BLE001, S110 - the registration error is what the rule raised; the record is asserted on
        pass
    return mocks.violations


CONN = command.remote.ConnectionArgs(host="20.50.0.1", user="mqttlab", private_key="k")


def test_every_rule_cites_a_source() -> None:
    assert len({r.id for r in RULES}) == len(RULES)
    assert all(r.source.startswith("S") and r.types for r in RULES)


def test_storage_account_named_results_sa_is_refused() -> None:
    assert autoname("azure-native:storage:StorageAccount", "results-sa", {}).startswith("results-sa")
    v = under_mocks(lambda: storage.StorageAccount("results-sa", resource_group_name="rg", kind="StorageV2", sku={"name": "Standard_LRS"}))
    assert len(v) == 1 and v[0].startswith("[azure-name] azure-native:storage:StorageAccount 'results-sa'") and "lowercase" in v[0]
    assert under_mocks(lambda: storage.StorageAccount("resultssa", resource_group_name="rg", kind="StorageV2", sku={"name": "Standard_LRS"})) == []


def test_asset_archive_source_is_refused() -> None:
    v = under_mocks(lambda: command.remote.CopyToRemote("bundle", connection=CONN, remote_path="/opt/x",
                                                         source=pulumi.AssetArchive({"a": pulumi.StringAsset("x")})))
    assert len(v) == 1 and v[0].startswith("[copy-source-kind]") and "archive must be a path to a file or directory" in v[0]
    ok = under_mocks(lambda: command.remote.CopyToRemote("bundle", connection=CONN, remote_path="/opt/x", source=pulumi.FileAsset("README.md")))
    assert ok == []


def rule(name: str, prio: int, direction: str = "Inbound") -> Any:
    return {"name": name, "priority": prio, "direction": direction, "access": "Allow", "protocol": "Tcp", "source_address_prefix": "*",
            "source_port_range": "*", "destination_address_prefix": "*", "destination_port_range": "22"}


@pytest.mark.parametrize(("rules", "refused"), [
    ([rule("a", 100), rule("b", 100)], True),
    ([rule("a", 100), rule("b", 100, "Outbound")], False),
    ([rule("a", 99)], True),
    ([rule("a", 4097)], True),
])
def test_nsg_priorities_unique_per_direction_in_range(rules: list[Any], refused: bool) -> None:
    v = under_mocks(lambda: network.NetworkSecurityGroup("nsg", resource_group_name="rg", security_rules=rules))
    assert bool(v) is refused
    if refused:
        assert v[0].startswith("[nsg-priority]")


def vm(name: str | None) -> None:
    compute.VirtualMachine("vm", vm_name=name, resource_group_name="rg", hardware_profile={"vm_size": "Standard_B2s"},
                           os_profile={"computer_name": "h", "admin_username": "mqttlab", "linux_configuration": {"ssh": {"public_keys": []}}},
                           opts=pulumi.ResourceOptions(replace_on_changes=["osProfile.customData"]))


def test_vm_name_too_long_is_refused() -> None:
    v = under_mocks(lambda: vm("v" * 65))
    assert len(v) == 1 and v[0].startswith("[azure-name] azure-native:compute:VirtualMachine") and "65 characters" in v[0] and "1-64" in v[0]
    assert under_mocks(lambda: vm("v" * 64)) == []


def test_secondary_ip_configuration_outside_the_primary_subnet_is_refused() -> None:
    cfgs: list[Any] = [{"name": "p", "primary": True, "subnet": {"id": "/subscriptions/0/a"}}, {"name": "s", "primary": False, "subnet": {"id": "/subscriptions/0/b"}}]
    v = under_mocks(lambda: network.NetworkInterface("nic", resource_group_name="rg", ip_configurations=cfgs))
    assert v and v[0].startswith("[nic-ip-configurations]")


def test_dynamic_standard_public_ip_is_refused() -> None:
    v = under_mocks(lambda: network.PublicIPAddress("pip", resource_group_name="rg", sku={"name": "Standard"}, public_ip_allocation_method="Dynamic"))
    assert v and v[0].startswith("[public-ip-standard-static]")


def test_ecdsa_admin_key_is_refused() -> None:
    key = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBA== x"
    v = under_mocks(lambda: compute.VirtualMachine(
        "vm", resource_group_name="rg", os_profile={"computer_name": "h", "admin_username": "u", "linux_configuration": {
            "ssh": {"public_keys": [{"path": "/home/u/.ssh/authorized_keys", "key_data": key}]}}},
        opts=pulumi.ResourceOptions(replace_on_changes=["osProfile.customData"])))
    assert v and v[0].startswith("[vm-os-profile]") and "ecdsa" in v[0]


@pytest.mark.parametrize(("make", "rule", "says"), [
    (lambda: tls.PrivateKey("k", algorithm="DSA"), "tls-private-key", "not one of RSA, ECDSA, ED25519"),
    (lambda: tls.PrivateKey("k", algorithm="ECDSA", ecdsa_curve="P192"), "tls-private-key", "P192"),
    (lambda: tls.SelfSignedCert("ca", validity_period_hours=24, allowed_uses=["cert_signing"]), "tls-certificate", "privateKeyPem"),
    (lambda: tls.SelfSignedCert("ca", private_key_pem="k", validity_period_hours=24, allowed_uses=["signing"]), "tls-certificate", "signing"),
    (lambda: tls.CertRequest("csr", private_key_pem="k", ip_addresses=["broker1"]), "tls-certificate", "'broker1' is not an IP address"),
    (lambda: tls.LocallySignedCert("c", cert_request_pem="r", ca_cert_pem="c", validity_period_hours=24, allowed_uses=["server_auth"]),
     "tls-certificate", "caPrivateKeyPem"),
    (lambda: random.RandomPassword("pw", length=3, min_upper=2, min_numeric=2), "random-password", "(4)"),
    (lambda: random.RandomPassword("pw", length=8, numeric=False, upper=False, lower=False, special=False), "random-password", "all false"),
])
def test_tls_and_random_inputs_the_providers_refuse(make: Callable[[], object], rule: str, says: str) -> None:
    v = under_mocks(make)
    assert len(v) == 1 and v[0].startswith(f"[{rule}]") and says in v[0], v


def test_tls_and_random_inputs_the_providers_accept_pass() -> None:
    def program() -> None:
        key = tls.PrivateKey("k", algorithm="ECDSA", ecdsa_curve="P256")
        ca = tls.SelfSignedCert("ca", private_key_pem=key.private_key_pem, validity_period_hours=24, allowed_uses=["cert_signing"], is_ca_certificate=True)
        csr = tls.CertRequest("csr", private_key_pem=key.private_key_pem, ip_addresses=["10.2.0.20"], dns_names=["broker1"])
        tls.LocallySignedCert("c", cert_request_pem=csr.cert_request_pem, ca_cert_pem=ca.cert_pem, ca_private_key_pem=key.private_key_pem,
                              validity_period_hours=24, allowed_uses=["digital_signature", "server_auth"])
        random.RandomPassword("pw", length=32, special=False)

    assert under_mocks(program) == []


def small_vm(size: str = "Standard_D2s_v5", **extra: Any) -> None:
    """A VM with nothing but what the rule under test looks at."""
    compute.VirtualMachine("vm", resource_group_name="rg", hardware_profile={"vm_size": size},
                           os_profile={"computer_name": "h", "admin_username": "u", "linux_configuration": {"ssh": {"public_keys": []}}},
                           opts=pulumi.ResourceOptions(replace_on_changes=["osProfile.customData"]), **extra)


def nic_and_vm(delete_option: str) -> None:
    nic = network.NetworkInterface("nic", resource_group_name="rg", ip_configurations=[{"name": "p", "primary": True, "subnet": {"id": "/subscriptions/0/s"}}])
    small_vm(network_profile={"network_interfaces": [{"id": nic.id, "primary": True, "delete_option": delete_option}]})


def test_a_vm_that_would_delete_the_nic_pulumi_manages_is_refused() -> None:
    v = under_mocks(lambda: nic_and_vm("Delete"))
    assert len(v) == 1 and v[0].startswith("[vm-nic-delete-option] azure-native:compute:VirtualMachine 'vm'") and "S14" in v[0], v
    assert under_mocks(lambda: nic_and_vm("Detach")) == []


def test_a_remote_command_with_a_delete_is_refused() -> None:
    v = under_mocks(lambda: command.remote.Command("c", connection=CONN, create="sudo timeout 9 true", delete="sudo rm -f /x"))
    assert len(v) == 1 and v[0].startswith("[command-no-delete]") and "S15" in v[0], v
    assert under_mocks(lambda: command.remote.Command("c", connection=CONN, create="sudo timeout 9 true")) == []


def assignment(principal: str, principal_type: str | None) -> None:
    rd = "/subscriptions/0/providers/Microsoft.Authorization/roleDefinitions/2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
    authorization.RoleAssignment("ra", scope="/subscriptions/0/c", principal_id=principal, role_definition_id=rd,
                                 role_assignment_name="5b2a3e1c-0d7e-4f5a-9c1b-2e3f4a5b6c7d", principal_type=principal_type)


@pytest.mark.parametrize(("caller", "given", "refused"), [
    ("ServicePrincipal", None, True),  # the SDK's and Azure's default, User
    ("ServicePrincipal", "User", True),
    ("User", "ServicePrincipal", True),
    ("ServicePrincipal", "ServicePrincipal", False),
    ("User", "User", False),
])
def test_a_role_assignment_whose_principal_type_is_not_the_callers_is_refused(caller: str, given: str | None, refused: bool) -> None:
    v = under_mocks(lambda: assignment(CALLER_OBJECT_ID, given), ContractMocks(caller_type=caller))
    assert bool(v) is refused, v
    if refused:
        assert v[0].startswith("[role-principal-type]") and "UnmatchedPrincipalType" in v[0] and "S16" in v[0]
    unknown = under_mocks(lambda: assignment("44444444-4444-4444-4444-444444444444", caller), ContractMocks(caller_type=caller))
    assert unknown and unknown[0].startswith("[role-principal-type]")


def spot_vm(size: str) -> None:
    small_vm(size, priority="Spot", eviction_policy="Deallocate")


def test_spot_on_a_b_series_size_is_refused() -> None:
    v = under_mocks(lambda: spot_vm("Standard_B2s"))
    assert len(v) == 1 and v[0].startswith("[vm-spot-size]") and "S17" in v[0], v
    assert under_mocks(lambda: spot_vm("Standard_D2s_v5")) == []


@pytest.mark.parametrize(("source", "refused"), [("2001:db8::7/128", True), ("203.0.113.7/32", False), ("VirtualNetwork", False)])
def test_an_nsg_rule_allowing_an_ipv6_source_is_refused(source: str, refused: bool) -> None:
    r: Any = {**rule("ssh", 100), "source_address_prefix": source}
    v = under_mocks(lambda: network.NetworkSecurityGroup("nsg", resource_group_name="rg", security_rules=[r]))
    assert bool(v) is refused, v
    if refused:
        assert v[0].startswith("[nsg-ipv4-sources]") and "S18" in v[0]


def test_a_resource_in_an_unregistered_namespace_is_refused() -> None:
    fresh = ContractMocks(registered=DEFAULT_REGISTERED)
    v = under_mocks(lambda: storage.StorageAccount("resultssa", resource_group_name="rg", kind="StorageV2", sku={"name": "Standard_LRS"}), fresh)
    assert len(v) == 1 and v[0].startswith("[provider-registered]") and "MissingSubscriptionRegistration" in v[0] and "'Microsoft.Storage'" in v[0]
    assert under_mocks(lambda: storage.StorageAccount("resultssa", resource_group_name="rg", kind="StorageV2", sku={"name": "Standard_LRS"}),
                       ContractMocks(registered=DEFAULT_REGISTERED | {"Microsoft.Storage"})) == []


STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))
FAULTS = {"distributed": ["broker2:kill@5s", "director:ipvs2:kill@20s+10s"], "centralized": ["broker2:kill@5s", "director:ipvs1:kill@20s+10s"],
          "smoke": ["bridge:broker1-broker2:cut@10s+5s"]}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("mode", ["none", "password", "tls", "mtls"])
def test_every_stack_file_and_its_secured_and_fault_variants_pass_every_rule(monkeypatch: pytest.MonkeyPatch, stack: str, mode: str) -> None:
    """The program as each stack file in the repository configures it, in each security mode,
    with faults and without, as a user and as a service principal: no rule is broken."""
    assert {"smoke", "distributed", "centralized"} <= set(STACKS)
    own = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"].get("mqttlab:azure") or {}
    for faults, caller in (([], "User"), (FAULTS[stack], "ServicePrincipal")):
        extra: dict[str, Any] = {"mqttlab:security": {"mode": mode}, **({"mqttlab:faults": faults} if faults else {})}
        p = run(stack, monkeypatch, stack_config(stack, azure={**own, **AZURE}, extra=extra), caller=caller)
        assert p.violations == [] and p.of("azure-native:compute:VirtualMachine"), (stack, mode, faults)
