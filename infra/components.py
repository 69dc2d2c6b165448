"""Pulumi components for the Azure testbed. Each reads the plan; none recomputes it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_tls as tls
from pulumi_azure_native import authorization, compute, devtestlab, network, resources, storage

from infra.bundle import Bundle
from infra.cloudinit import cloud_config, custom_data
from infra.settings import AzureSettings
from workloads.describe.faults import Fault
from workloads.describe.plan import Host, Plan
from workloads.hosts.azure import steps
from workloads.hosts.azure.bench import start_epoch
from workloads.hosts.azure.inject import hosts_with_faults
from workloads.hosts.azure.steps import MQTTLAB, PROJECT_DIR, REMOTE_ROOT

UBUNTU = {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}
BUNDLE = f"{REMOTE_ROOT}/bundle.tar.gz"
# Azure built-in roles (Microsoft Learn, "Azure built-in roles": Storage section)
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
# Bounds (seconds) on every remote step: pulumi up never hangs on a VM
T_CLOUD_INIT, T_INSTALL, T_BROKERS, T_BALANCER, T_PROBE, T_COLLECT, T_VERDICT, T_SECURITY = 1200, 1200, 900, 300, 300, 1800, 600, 300


@dataclass(frozen=True)
class Ctx:
    """What every component needs: names, tags, location and the validated settings."""

    project: str
    stack: str
    plan: Plan
    az: AzureSettings
    location: pulumi.Input[str]
    resource_group: pulumi.Input[str]
    bundle: Bundle
    private_key_password: pulumi.Input[str] | None = None
    subscription_id: pulumi.Input[str] = ""
    operator_object_id: pulumi.Input[str] = ""
    operator_principal_type: str = "User"  # of the login running pulumi up (infra.login); Azure refuses a mismatch
    extra: dict[str, Any] = field(default_factory=dict)
    security: Any = None  # infra.security.SecurityMaterial when the stack's security mode is not none
    plan_faults: tuple[Fault, ...] = ()  # mqttlab:faults, checked against the plan

    @property
    def tags(self) -> dict[str, str]:
        return {"project": self.project, "stack": self.stack, "run": self.az.run_id}


class Network(pulumi.ComponentResource):
    """VNet, one subnet per plan subnet, one NSG per role: SSH only from the admin CIDRs, MQTT
    only from inside the VNet (and the listed CIDRs), everything else inbound denied."""

    def __init__(self, name: str, plan: Plan, az: AzureSettings, tags: dict[str, str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.resource_group = resources.ResourceGroup(f"{name}-rg", tags=tags, opts=child)
        rg = self.resource_group.name
        self.vnet = network.VirtualNetwork(f"{name}-vnet", resource_group_name=rg, address_space={"address_prefixes": [plan.vnet]}, tags=tags,
                                           opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]))
        self.nsgs: dict[str, network.NetworkSecurityGroup] = {}
        for role in ("brokers", "balancer"):
            self.nsgs[role] = network.NetworkSecurityGroup(f"{name}-nsg-{role}", resource_group_name=rg, security_rules=nsg_rules(az, str(plan.brokers[0].port)), tags=tags,
                                                           opts=child)
        self.subnets: dict[str, network.Subnet] = {}
        for host in plan.hosts:
            if host.subnet in self.subnets:
                continue
            self.subnets[host.subnet] = network.Subnet(
                f"{name}-snet-{host.name}", resource_group_name=rg, virtual_network_name=self.vnet.name, address_prefix=host.subnet,
                network_security_group={"id": self.nsgs[host.role].id}, opts=child,
            )
        self.register_outputs({"resourceGroup": rg, "vnet": self.vnet.name})


def nsg_rules(az: AzureSettings, mqtt_port: str = "1883") -> list[Any]:
    """``mqtt_port``: the plan's (8883 when TLS is on; brokers and balancers then share it)."""
    rules: list[Any] = []
    prio = 100
    for cidr in az.admin_cidrs:
        rules.append({"name": f"ssh-admin-{prio}", "priority": prio, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                      "source_address_prefix": cidr, "source_port_range": "*", "destination_address_prefix": "*", "destination_port_range": "22"})
        prio += 1
    rules.append({"name": "mqtt-vnet", "priority": 200, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                  "source_address_prefix": "VirtualNetwork", "source_port_range": "*", "destination_address_prefix": "*",
                  "destination_port_range": mqtt_port})
    for i, cidr in enumerate(az.mqtt_cidrs):
        rules.append({"name": f"mqtt-extra-{i}", "priority": 210 + i, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                      "source_address_prefix": cidr, "source_port_range": "*", "destination_address_prefix": "*", "destination_port_range": mqtt_port})
    # the VNet's own traffic (IPVS NAT replies, bridges) is allowed above on the MQTT port only; all else is denied
    rules.append({"name": "deny-all-inbound", "priority": 4000, "direction": "Inbound", "access": "Deny", "protocol": "*",
                  "source_address_prefix": "*", "source_port_range": "*", "destination_address_prefix": "*", "destination_port_range": "*"})
    return rules


class LinuxVm(pulumi.ComponentResource):
    """Ubuntu 24.04 VM with a static Standard public IP (administration only), a NIC with the
    plan's private address (plus one secondary address per broker on the broker host, which
    the Azure fabric otherwise drops), SSH key login only, a host key of the program's own, a
    system-assigned identity (for uploading results). The OS disk is deleted with the VM; the NIC
    and public IP are resources of their own, deleted by Pulumi.

    ``customData`` is create-only in Azure (an update is refused with PropertyChangeNotAllowed).
    A change to it (e.g. ``loadGenerator`` switching Docker on for the balancers) therefore
    replaces the VM on purpose (``replace_on_changes``), deleting the old one first because its
    NIC can be attached to one VM only. Ignoring the change instead would leave a VM that lacks
    what the new configuration needs, and the run would fail later and less clearly. Every
    remote step carries the VM's ``vmId`` in its triggers, so a replaced VM is installed anew.
    """

    def __init__(self, name: str, ctx: Ctx, host: Host, subnet: network.Subnet, size: str, ssh_key: pulumi.Input[str],
                 secondary: Sequence[str] = (), ip_forwarding: bool = False, role: str = "balancer", docker: bool = False,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:LinuxVm", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = ctx.resource_group
        self.host_key = tls.PrivateKey(f"{name}-hostkey", algorithm="ED25519", opts=child)
        self.public_ip = network.PublicIPAddress(f"{name}-pip", resource_group_name=rg, sku={"name": "Standard"},
                                                 public_ip_allocation_method="Static", tags=ctx.tags, opts=child)
        ipconfigs: list[Any] = [{
            "name": "primary", "primary": True, "subnet": {"id": subnet.id}, "private_ip_allocation_method": "Static",
            "private_ip_address": host.address, "public_ip_address": {"id": self.public_ip.id},
        }]
        for i, addr in enumerate(secondary):
            ipconfigs.append({"name": f"broker{i + 1}", "primary": False, "subnet": {"id": subnet.id}, "private_ip_allocation_method": "Static",
                              "private_ip_address": addr})
        self.nic = network.NetworkInterface(f"{name}-nic", resource_group_name=rg, ip_configurations=ipconfigs,
                                            enable_ip_forwarding=ip_forwarding, tags=ctx.tags, opts=child)
        spot: dict[str, Any] = {}
        if ctx.az.spot:
            spot = {"priority": "Spot", "eviction_policy": "Deallocate", "billing_profile": {"max_price": -1}}
        user = ctx.az.admin_user
        init: pulumi.Output[str] = pulumi.Output.all(self.host_key.private_key_openssh, self.host_key.public_key_openssh).apply(
            lambda k: pulumi.Output.secret(custom_data(cloud_config(role, user, docker=docker, host_key=(str(k[0]), str(k[1]))))))
        os_profile: Any = {
            "computer_name": host.name, "admin_username": user, "custom_data": init,
            "linux_configuration": {"disable_password_authentication": True,
                                    "ssh": {"public_keys": [{"path": f"/home/{user}/.ssh/authorized_keys", "key_data": ssh_key}]}},
        }
        storage_profile: Any = {"image_reference": UBUNTU,
                                "os_disk": {"create_option": "FromImage", "delete_option": "Delete", "managed_disk": {"storage_account_type": "Premium_LRS"}}}
        # the NIC is this program's resource: Detach, so a replacement (delete first) finds it again;
        # Delete would remove it with the old VM (azure-compute-docs virtual-machines/delete.md)
        network_profile: Any = {"network_interfaces": [{"id": self.nic.id, "primary": True, "delete_option": "Detach"}]}
        identity: Any = {"type": "SystemAssigned"}  # uploads results as itself: no key or SAS on the VM
        self.vm = compute.VirtualMachine(
            f"{name}-vm", resource_group_name=rg, hardware_profile={"vm_size": size},
            os_profile=os_profile, storage_profile=storage_profile, network_profile=network_profile,
            identity=identity, tags=ctx.tags, **spot,
            opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["osProfile.customData"], delete_before_replace=True),
        )
        if ctx.az.auto_shutdown:
            devtestlab.GlobalSchedule(
                f"{name}-shutdown", resource_group_name=rg, name=self.vm.name.apply(lambda n: f"shutdown-computevm-{n}"),
                status="Enabled", task_type="ComputeVmShutdownTask", daily_recurrence={"time": ctx.az.auto_shutdown_at},
                time_zone_id=ctx.az.auto_shutdown_tz, target_resource_id=self.vm.id, tags=ctx.tags, opts=child,
            )
        self.host = host
        self.ip_address: pulumi.Output[str] = self.public_ip.ip_address.apply(lambda ip: ip or "")
        self.vm_id: pulumi.Output[str] = self.vm.vm_id.apply(lambda v: v or "")
        self.principal_id: pulumi.Output[str] = self.vm.identity.apply(lambda i: (i.principal_id if i else None) or "")
        self.register_outputs({"publicIp": self.ip_address, "privateIp": host.address})


def role_definition(ctx: Ctx, role_id: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("/subscriptions/", ctx.subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role_id)


def assignment_name(scope: pulumi.Input[str], principal: pulumi.Input[str], role_id: str) -> pulumi.Output[str]:
    """Role assignment names must be GUIDs; derived from what they grant, so a re-run keeps them."""
    return pulumi.Output.all(scope, principal).apply(lambda v: str(uuid.uuid5(uuid.NAMESPACE_URL, f"{v[0]}|{v[1]}|{role_id}")))


class ResultsStore(pulumi.ComponentResource):
    """A storage account with one private container. No key or SAS exists for it anywhere:
    shared-key access is off; VMs write with their managed identity (Storage Blob Data
    Contributor on the container), the operator who ran ``pulumi up`` reads with ``az login``
    (Storage Blob Data Reader on the container)."""

    def __init__(self, name: str, ctx: Ctx, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:ResultsStore", name, None, opts)
        self.name, self.ctx = name, ctx
        self.child = pulumi.ResourceOptions(parent=self)
        # the logical name is auto-named as-is plus 8 hex characters (azure-native), and account
        # names allow only 3-24 lowercase letters and digits: no hyphen here
        self.account = storage.StorageAccount(
            f"{name}sa", resource_group_name=ctx.resource_group, kind="StorageV2", sku={"name": "Standard_LRS"},
            allow_blob_public_access=False, allow_shared_key_access=False, minimum_tls_version="TLS1_2", enable_https_traffic_only=True,
            tags=ctx.tags, opts=self.child,
        )
        self.container = storage.BlobContainer(f"{name}-results", resource_group_name=ctx.resource_group, account_name=self.account.name,
                                               container_name="results", public_access=storage.PublicAccess.NONE, opts=self.child)
        self.url = pulumi.Output.concat("https://", self.account.name, ".blob.core.windows.net/", self.container.name)
        self.reader = authorization.RoleAssignment(
            f"{name}-reader-operator", scope=self.container.id, principal_id=ctx.operator_object_id, principal_type=ctx.operator_principal_type,
            role_definition_id=role_definition(ctx, BLOB_DATA_READER),
            role_assignment_name=assignment_name(self.container.id, ctx.operator_object_id, BLOB_DATA_READER), opts=self.child)
        self.writers: dict[str, authorization.RoleAssignment] = {}
        self.register_outputs({"url": self.url})

    def grant_writer(self, vm: LinuxVm) -> authorization.RoleAssignment:
        ra = authorization.RoleAssignment(
            f"{self.name}-writer-{vm.host.name}", scope=self.container.id, principal_id=vm.principal_id, principal_type="ServicePrincipal",
            role_definition_id=role_definition(self.ctx, BLOB_DATA_CONTRIBUTOR),
            role_assignment_name=assignment_name(self.container.id, vm.principal_id, BLOB_DATA_CONTRIBUTOR), opts=self.child)
        self.writers[vm.host.name] = ra
        return ra


def connection(vm: LinuxVm, ctx: Ctx, private_key: pulumi.Input[str]) -> command.remote.ConnectionArgs:
    """SSH to the VM, its host key pinned. ``host_key`` is pulumi-command's ``Connection.hostKey``
    (added by pulumi/pulumi-command#794, 2025; "The expected host key to verify the server's
    identity", an OpenSSH public key line); before it the provider used InsecureIgnoreHostKey
    (remote/connection.go). VMs take minutes to boot: about 10 minutes of dialling is allowed."""
    return command.remote.ConnectionArgs(host=vm.ip_address, user=ctx.az.admin_user, private_key=private_key,
                                         private_key_password=ctx.private_key_password, host_key=vm.host_key.public_key_openssh,
                                         dial_error_limit=60, per_dial_timeout=10)


def bounded(seconds: int, script: str) -> str:
    """One shell line, as a whole under ``timeout``."""
    return f"timeout {seconds} sh -c '{script}'"


CLOUD_INIT_WAIT = bounded(T_CLOUD_INIT, "cloud-init status --wait --long; rc=$?; [ $rc -ne 1 ]")  # 2: finished with warnings
INSTALL = bounded(T_INSTALL, f"set -e; rm -rf {PROJECT_DIR}.new; mkdir -p {PROJECT_DIR}.new; tar -xzf {BUNDLE} -C {PROJECT_DIR}.new; "
                  f"rm -rf {PROJECT_DIR}; mv {PROJECT_DIR}.new {PROJECT_DIR}; "
                  f"test -x {REMOTE_ROOT}/.venv/bin/python || python3 -m venv {REMOTE_ROOT}/.venv; "
                  f"{REMOTE_ROOT}/.venv/bin/pip install -q --disable-pip-version-check \"{PROJECT_DIR}[azure]\"; {MQTTLAB} --help >/dev/null")


class LabHost(pulumi.ComponentResource):
    """A VM of the plan with the project installed: the base of both roles. Nothing here has a
    ``delete`` command: ``pulumi destroy`` deletes the VM and never dials it (a deallocated or
    evicted VM would make every dialling delete wait and fail)."""

    def __init__(self, type_token: str, name: str, ctx: Ctx, vm_args: dict[str, object], private_key: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token, name, None, opts)
        self.vm = LinuxVm(f"{name}", ctx, opts=pulumi.ResourceOptions(parent=self), **vm_args)  # type: ignore[arg-type]
        self.conn = connection(self.vm, ctx, private_key)
        self.install_triggers: list[pulumi.Input[str]] = [ctx.bundle.sha256, self.vm.vm_id]
        wait = command.remote.Command(f"{name}-cloud-init", connection=self.conn, create=CLOUD_INIT_WAIT, triggers=[self.vm.vm_id],
                                      opts=pulumi.ResourceOptions(parent=self, depends_on=[self.vm.vm]))
        copy = command.remote.CopyToRemote(f"{name}-bundle", connection=self.conn, source=pulumi.FileAsset(str(ctx.bundle.path)),
                                           remote_path=BUNDLE, triggers=self.install_triggers,
                                           opts=pulumi.ResourceOptions(parent=self, depends_on=[wait]))
        self.installed = command.remote.Command(f"{name}-install", connection=self.conn, create=INSTALL, triggers=self.install_triggers,
                                                opts=pulumi.ResourceOptions(parent=self, depends_on=[copy]))
        if ctx.security is not None:  # secured brokers: every later step waits for this host's secrets
            self.installed = ctx.security.install(name, self.conn, ctx.stack, [self.installed], self.vm.vm_id,
                                                  T_SECURITY)
        self.host = self.vm.host


class BrokerHost(LabHost):
    def __init__(self, name: str, ctx: Ctx, subnet: network.Subnet, ssh_key: pulumi.Input[str], private_key: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        host = ctx.plan.host("brokers")
        vm_args = {"host": host, "subnet": subnet, "size": ctx.az.broker_vm_size, "ssh_key": ssh_key,
                   "secondary": [b.address for b in ctx.plan.brokers], "role": "brokers"}
        super().__init__("mqttlab:azure:BrokerHost", name, ctx, vm_args, private_key, opts)
        self.up = command.remote.Command(
            f"{name}-brokers-up", connection=self.conn, triggers=self.install_triggers,
            create=steps.line("brokers-up", ctx.stack, T_BROKERS),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.installed]),
        )
        self.register_outputs({"publicIp": self.vm.ip_address})


class BalancerHost(LabHost):
    """A balancer/client host: applies IPVS only where the plan puts a balancer."""

    def __init__(self, name: str, ctx: Ctx, host: Host, subnet: network.Subnet, ssh_key: pulumi.Input[str], private_key: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        vm_args = {"host": host, "subnet": subnet, "size": ctx.az.balancer_vm_size, "ssh_key": ssh_key, "ip_forwarding": True,
                   "role": "balancer", "docker": ctx.az.load_generator == "emqtt-bench"}
        super().__init__("mqttlab:azure:BalancerHost", name, ctx, vm_args, private_key, opts)
        self.applied: command.remote.Command | None = None
        if ctx.plan.balancer_on(host.name) is not None:
            self.applied = command.remote.Command(
                f"{name}-balancer-apply", connection=self.conn, triggers=self.install_triggers,
                create=steps.line("balancer-apply", ctx.stack, T_BALANCER, host=host.name),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.installed]),
            )
        self.ready: pulumi.Resource = self.applied or self.installed
        self.register_outputs({"publicIp": self.vm.ip_address})


class BenchmarkRun(pulumi.ComponentResource):
    """One run: every balancer host checks it reaches every broker; monitors; subscribers on
    every client host; one agreed start time (``bench-start``) for the publishers on every
    client host and for the fault steps (only on the VMs ``mqttlab:faults`` touches), then
    finish, collection (which stops the faults) and upload on every host, then the verdict. The bench steps record their outcome and exit 0, so collection and upload
    happen for partial and failed runs too; the verdict (after every upload) fails ``pulumi up``
    if any step failed. Every step carries ``runId`` in its triggers, so a new ``runId`` reruns
    only this, and the bundle hash, so a code change reruns it on the new code."""

    def __init__(self, name: str, ctx: Ctx, brokers: BrokerHost, balancers: Sequence[BalancerHost], store: ResultsStore,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:BenchmarkRun", name, None, opts)
        run = ctx.az.run_id
        trig: list[pulumi.Input[str]] = [run, ctx.bundle.sha256]
        limit = ctx.az.bench_timeout_s
        lg = ctx.az.load_generator

        def line(step: str, host: str | None = None, timeout: int = limit, **options: Any) -> str:
            return steps.line(step, ctx.stack, timeout, host=host, run_id=run if steps.BY_NAME[step].run else None, **options)
        ready = [brokers.up, *[b.ready for b in balancers]]

        def cmd(rname: str, host: LabHost, create: pulumi.Input[str], deps: Sequence[pulumi.Resource]) -> command.remote.Command:
            return command.remote.Command(f"{name}-{rname}", connection=host.conn, create=create, triggers=[*trig, host.vm.vm_id],
                                          opts=pulumi.ResourceOptions(parent=self, depends_on=list(deps)))

        probes = [cmd(f"probe-{b.host.name}", b, line("probe-brokers", b.host.name, T_PROBE), ready) for b in balancers if b.applied is not None]
        mon = [cmd("monitor-brokers", brokers, line("monitors-start", role="brokers"), probes)]
        for b in balancers:
            if b.applied is not None:
                mon.append(cmd(f"monitor-{b.host.name}", b, line("monitors-start", b.host.name, role="balancer"), probes))
        first = balancers[0]
        subs = [cmd(f"subs-{b.host.name}", b, line("bench-subs", b.host.name, load_generator=lg), mon) for b in balancers]
        # one start for every host's publishers and faults, chosen once every subscriber is ready
        clock = cmd("start", first, line("bench-start", timeout=T_PROBE, lead=steps.LEAD_S), subs)
        start_at = clock.stdout.apply(start_epoch)
        pubs = [cmd(f"pubs-{b.host.name}", b, pulumi.Output.concat(line("bench-pubs", b.host.name, load_generator=lg, last="start_at"), start_at),
                    [*subs, clock]) for b in balancers]
        # mqttlab:faults: a step on each VM that carries some out, beside the publishers; collect stops it
        hosts: dict[str, LabHost] = {h.host.name: h for h in [brokers, *balancers]}
        faults = [cmd(f"faults-{h}", hosts[h], pulumi.Output.concat(line("faults-start", h, last="start_at"), start_at), [clock])
                  for h in hosts_with_faults(ctx.plan_faults)]
        finish = [cmd(f"finish-{b.host.name}", b, line("bench-finish", b.host.name, load_generator=lg), pubs) for b in balancers]
        self.collect: list[command.remote.Command] = []
        for h in [brokers, *balancers]:
            writer = store.grant_writer(h.vm)
            upload = pulumi.Output.concat(line("collect", h.host.name, T_COLLECT, load_generator=lg, last="url"), store.url)
            self.collect.append(cmd(f"collect-{h.host.name}", h, upload, [*finish, *faults, writer]))
        verdict = cmd("verdict", first, pulumi.Output.concat(line("verdict", first.host.name, T_VERDICT, load_generator=lg, last="url"), store.url),
                      self.collect)
        self.summary = verdict.stdout
        self.register_outputs({"runId": run})


def ssh_commands(vms: Sequence[LinuxVm], user: str) -> dict[str, pulumi.Output[str]]:
    return {vm.host.name: pulumi.Output.concat(f"ssh {user}@", vm.ip_address) for vm in vms}
