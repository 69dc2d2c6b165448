"""The Azure program against rules a real ``pulumi up`` meets that the first contract table did
not hold: each test names the rule and where it is written (Microsoft Learn page or provider
source file), and runs the real ``__main__.py`` under the contract-checked mocks."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from datetime import UTC, datetime

import pulumi
import pytest
import yaml

import infra.settings
from infra.contracts import CALLER_OBJECT_ID, DEFAULT_REGISTERED, SECRET_SIG
from tests.conftest import ROOT
from tests.test_azure import AZURE, commands, record_registrations, run, stack_config

SECURED = ("tls", "mtls", "password")


def smoke_azure(**over: object) -> dict[str, object]:
    """The smoke stack's own Azure settings with the test's address and key."""
    own = yaml.safe_load((ROOT / "Pulumi.smoke.yaml").read_text())["config"]["mqttlab:azure"]
    return {**own, **AZURE, **over}


@pytest.mark.parametrize(("key", "value"), [("adminCidr", "2001:db8::7/128"), ("adminCidr", ["203.0.113.7/32", "2001:db8::/64"]),
                                            ("mqttCidrs", ["2001:db8::/64"])])
def test_an_ipv6_cidr_is_refused_because_the_vms_have_ipv4_public_addresses_only(monkeypatch: pytest.MonkeyPatch, key: str, value: object) -> None:
    """Microsoft Learn "Public IP addresses": ``publicIPAddressVersion`` defaults to IPv4, and an
    IPv6 public address needs a dual-stack NIC; this program's addresses are IPv4, so an NSG rule
    allowing an IPv6 source never matches a packet and every SSH dial is denied."""
    with pytest.raises(pulumi.RunError, match=rf"mqttlab:azure\.{key}.*IPv4"):
        run("distributed", monkeypatch, stack_config("distributed", azure={**AZURE, key: value}))


def test_spot_is_refused_on_b_series_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Microsoft Learn "Use Azure Spot Virtual Machines" (virtual-machines/spot-vms), Limitations:
    "The following VM sizes aren't supported for Azure Spot Virtual Machines: B-series"."""
    with pytest.raises(pulumi.RunError, match=r"mqttlab:azure\.spot.*B-series.*Standard_B2s"):
        run("smoke", monkeypatch, stack_config("smoke", azure=smoke_azure(spot=True)))
    p = run("smoke", monkeypatch, stack_config("smoke", azure=smoke_azure(spot=True, brokerVmSize="Standard_D2s_v5", balancerVmSize="Standard_D2s_v5")))
    assert {vm.inputs["priority"] for vm in p.of("azure-native:compute:VirtualMachine")} == {"Spot"}


def test_a_vm_replacement_keeps_the_nic_pulumi_manages(monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-compute-docs virtual-machines/delete.md: ``deleteOption: Delete`` on a NIC reference
    deletes the NIC with the VM. The NIC is a resource of this program; with
    ``deleteBeforeReplace`` the replacement VM would name a NIC Azure has just deleted."""
    p = run("distributed", monkeypatch)
    nics = {r.name for r in p.of("azure-native:network:NetworkInterface")}
    assert len(nics) == 3
    for vm in p.of("azure-native:compute:VirtualMachine"):
        refs = vm.inputs["networkProfile"]["networkInterfaces"]
        assert [r.get("deleteOption", "Detach") for r in refs] == ["Detach"], vm.name
        assert vm.options["deleteBeforeReplace"] is True


@pytest.mark.parametrize("mode", SECURED)
@pytest.mark.parametrize("faults", [[], ["broker2:kill@5s", "director:ipvs1:kill@20s+10s"]])
def test_secured_modes_never_dial_at_destroy_and_reinstall_on_a_new_vm(monkeypatch: pytest.MonkeyPatch, mode: str, faults: list[str]) -> None:
    """pulumi-command provider/pkg/provider/remote/commandController.go: ``Delete`` runs the
    ``delete`` command over SSH at destroy, and on a replacement after the new resource's create.
    A deallocated VM cannot answer; a replacement's delete would remove what the create wrote."""
    extra: dict[str, object] = {"mqttlab:security": {"mode": mode}}
    if faults:
        extra["mqttlab:faults"] = faults
    p = run("centralized", monkeypatch, stack_config("centralized", extra=extra))
    cmds = commands(p)
    for c in [*cmds.values(), *p.of("command:remote:CopyToRemote")]:
        assert not c.inputs.get("delete"), f"{c.name} dials at destroy: {c.inputs['delete']}"
    installs = {n: c for n, c in cmds.items() if n.endswith("-security")}
    assert len(installs) == 3
    for n, c in installs.items():
        host = n.removesuffix("-security")
        assert re.match(r"^sudo timeout \d+ ", c.inputs["create"]), c.inputs["create"]
        assert set(cmds[f"{host}-cloud-init"].inputs["triggers"]) <= set(c.inputs["triggers"]), n  # the VM's id: a new VM gets its material
        assert SECRET_SIG in json.dumps(c.raw["stdin"])


@pytest.mark.parametrize("caller", ["User", "ServicePrincipal"])
def test_the_operators_role_assignment_names_the_callers_principal_type(monkeypatch: pytest.MonkeyPatch, caller: str) -> None:
    """Azure RBAC REST API, Role Assignments - Create: ``principalType`` is taken as ``User`` when
    absent, and an assignment to a service principal or managed identity (CI, automation) of any
    other stated type is refused with ``UnmatchedPrincipalType``."""
    p = run("distributed", monkeypatch, caller=caller)
    reader = p.one("results-reader-operator").inputs
    assert reader["principalId"] == CALLER_OBJECT_ID and reader["principalType"] == caller
    writers = [r.inputs for r in p.of("azure-native:authorization:RoleAssignment") if r.name.startswith("results-writer-")]
    assert len(writers) == 3 and {w["principalType"] for w in writers} == {"ServicePrincipal"}  # the VMs' managed identities


def test_an_unregistered_resource_provider_stops_the_preview_before_any_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    """Microsoft Learn "Resource providers and types": Azure registers a namespace by itself only
    for portal actions and templates, and Microsoft.DevTestLab is not registered by default;
    azure-native registers none (pulumi/pulumi-azure-native#3479). Unchecked, ``pulumi up -s
    smoke`` on a fresh subscription fails with MissingSubscriptionRegistration after the VMs exist."""
    seen = record_registrations(monkeypatch)
    fresh = DEFAULT_REGISTERED | {"Microsoft.Compute", "Microsoft.Network", "Microsoft.Storage"}
    with pytest.raises(pulumi.RunError, match=r"Microsoft\.DevTestLab \(NotRegistered\).*az provider register --namespace Microsoft\.DevTestLab --wait$"):
        run("smoke", monkeypatch, stack_config("smoke", azure=smoke_azure()), registered=fresh)
    assert [t for t in seen if t != "pulumi:pulumi:Stack"] == []
    with pytest.raises(pulumi.RunError, match="register --namespace Microsoft.Compute --wait && az provider register --namespace Microsoft.Network"):
        run("distributed", monkeypatch, registered=DEFAULT_REGISTERED)
    run("distributed", monkeypatch, registered=fresh)  # no auto-shutdown: DevTestLab is not needed


def at(monkeypatch: pytest.MonkeyPatch, hhmm: str) -> None:
    """The program's clock, set to today at ``hhmm`` UTC."""
    now = datetime.now(UTC).replace(hour=int(hhmm[:2]), minute=int(hhmm[2:]), second=0, microsecond=0)
    monkeypatch.setattr(infra.settings, "utc_now", lambda: now, raising=False)


def test_auto_shutdown_never_falls_inside_the_run_that_pulumi_up_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Microsoft Learn "Auto-shutdown a VM" (DevTest Labs ``GlobalSchedule``,
    ``ComputeVmShutdownTask``): the VM is deallocated at the daily time whatever runs on it.
    The smoke stack at 18:50 UTC with a fixed 19:00 would be deallocated mid-run."""
    at(monkeypatch, "1850")
    p = run("smoke", monkeypatch, stack_config("smoke", azure=smoke_azure()))
    shut = p.of("azure-native:devtestlab:GlobalSchedule")
    assert len(shut) == 3
    for s in shut:
        assert s.inputs["dailyRecurrence"] == {"time": "2050"} and s.inputs["timeZoneId"] == "UTC"  # two hours after this pulumi up
    with pytest.raises(pulumi.RunError, match=r"mqttlab:azure\.autoShutdown.*comes in 10 minutes.*\+2h"):
        run("smoke", monkeypatch, stack_config("smoke", azure=smoke_azure(autoShutdown="1900")))
    with pytest.raises(pulumi.RunError, match=r"mqttlab:azure\.autoShutdown.*sooner than this run can end"):
        run("distributed", monkeypatch, stack_config("distributed", azure={**AZURE, "autoShutdown": "+1h"}))  # 3600 s of benchmark alone
    at(monkeypatch, "0800")
    assert {s.inputs["dailyRecurrence"]["time"] for s in run("smoke", monkeypatch, stack_config(
        "smoke", azure=smoke_azure(autoShutdown="1900"))).of("azure-native:devtestlab:GlobalSchedule")} == {"1900"}


def azure_section() -> str:
    """The documentation's Azure page, where the prerequisites and the fetch commands are."""
    return (ROOT / "docs" / "azure.md").read_text()


def test_the_readmes_fetch_commands_need_only_the_roles_the_program_grants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Microsoft Learn "Create a user delegation SAS for a container or blob with the Azure CLI":
    the user delegation key's action (``.../blobServices/generateUserDelegationKey``) must be
    granted at the storage account's scope or above. The program grants the operator Storage
    Blob Data Reader on the container only, which is enough for reads with the login itself."""
    p = run("distributed", monkeypatch)
    account = p.of("azure-native:storage:StorageAccount")[0]
    account_id = f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mock/providers/{account.type}/{p.outputs['storageAccount']}"
    scopes = [r.inputs["scope"] for r in p.of("azure-native:authorization:RoleAssignment") if r.inputs["principalId"] == CALLER_OBJECT_ID]
    at_account = [s for s in scopes if account_id == s or account_id.startswith(s + "/")]
    commands_shown = " ".join(azure_section().split())
    for m in re.finditer(r"az storage \S+ generate-sas[^`]*", commands_shown):
        if "--as-user" in m.group(0):
            assert at_account, f"the Azure page's {m.group(0)[:60]!r} needs a role at account scope; the operator holds one at {scopes}"
    fetch = re.search(r"`(mqttlab results fetch [^`]*)`", commands_shown)
    assert fetch and "--sas" not in fetch.group(1)
    cp = subprocess.run([sys.executable, "-m", "workloads.cli", "results", "fetch", "--help"], capture_output=True, text=True, cwd=ROOT)
    for flag in re.findall(r"--[a-z-]+", fetch.group(1)):  # the command the Azure page shows exists as written
        assert flag in cp.stdout, flag


# Microsoft Learn, "Azure built-in roles" (role-based-access-control/built-in-roles): Actions and
# NotActions of the roles the Azure page may name.
BUILT_IN_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Owner": (("*",), ()),
    "Contributor": (("*",), ("Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write", "Microsoft.Authorization/elevateAccess/Action",
                             "Microsoft.Blueprint/blueprintAssignments/write", "Microsoft.Blueprint/blueprintAssignments/delete",
                             "Microsoft.Compute/galleries/share/action", "Microsoft.Purview/consents/write", "Microsoft.Purview/consents/delete",
                             "Microsoft.Resources/deploymentStacks/manageDenySetting/action", "Microsoft.Subscription/cancel/action",
                             "Microsoft.Subscription/enable/action")),
    "User Access Administrator": (("*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"), ()),
    "Role Based Access Control Administrator": (("Microsoft.Authorization/roleAssignments/write", "Microsoft.Authorization/roleAssignments/delete",
                                                 "*/read", "Microsoft.Support/*"), ()),
}
# the ARM write action (Microsoft Learn, "Azure resource provider operations") behind each type
WRITE_ACTION = {
    "azure-native:resources:ResourceGroup": "Microsoft.Resources/subscriptions/resourceGroups/write",
    "azure-native:network:VirtualNetwork": "Microsoft.Network/virtualNetworks/write",
    "azure-native:network:Subnet": "Microsoft.Network/virtualNetworks/subnets/write",
    "azure-native:network:NetworkSecurityGroup": "Microsoft.Network/networkSecurityGroups/write",
    "azure-native:network:NetworkInterface": "Microsoft.Network/networkInterfaces/write",
    "azure-native:network:PublicIPAddress": "Microsoft.Network/publicIPAddresses/write",
    "azure-native:compute:VirtualMachine": "Microsoft.Compute/virtualMachines/write",
    "azure-native:storage:StorageAccount": "Microsoft.Storage/storageAccounts/write",
    "azure-native:storage:BlobContainer": "Microsoft.Storage/storageAccounts/blobServices/containers/write",
    "azure-native:authorization:RoleAssignment": "Microsoft.Authorization/roleAssignments/write",
    "azure-native:devtestlab:GlobalSchedule": "Microsoft.DevTestLab/schedules/write",
}


def allows(role: str, action: str) -> bool:
    actions, not_actions = BUILT_IN_ROLES[role]
    def match(pattern: str) -> bool:
        return fnmatch.fnmatchcase(action.lower(), pattern.lower())
    return any(match(a) for a in actions) and not any(match(n) for n in not_actions)


def test_the_readmes_permission_statement_covers_every_resource_the_program_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each alternative the Azure page gives ("your account needs A, or B plus C") must hold every
    write action the smoke stack's resources need, and the providers' register action."""
    p = run("smoke", monkeypatch, stack_config("smoke", azure=smoke_azure()))
    types = {r.type for r in p.resources if r.type.startswith("azure-native:")}
    assert types <= set(WRITE_ACTION), types - set(WRITE_ACTION)
    needed = {WRITE_ACTION[t] for t in types} | {"Microsoft.DevTestLab/register/action"}
    said = re.search(r"your account needs (.+?) on the subscription", " ".join(azure_section().split()))
    assert said, "the Azure page's Azure prerequisites say no role"
    for alternative in re.split(r",? or ", said.group(1)):
        roles = [r.strip(" ,*") for r in re.split(r" plus | and ", alternative)]
        assert all(r in BUILT_IN_ROLES for r in roles), roles
        lacking = sorted(a for a in needed if not any(allows(r, a) for r in roles))
        assert not lacking, f"{' + '.join(roles)} cannot {lacking}"
