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
from pulumi.runtime import settings as pulumi_settings
from pulumi_azure_native import compute, network, storage

from tests.azure_contracts import RULES, ContractMocks, autoname


def under_mocks(program: Callable[[], object]) -> list[str]:
    """Run a tiny program under the contract mocks; the violations they recorded."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi_settings.ROOT.set(None)
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    mocks = ContractMocks()
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
