"""Pulumi components for the Azure testbed. Each reads the plan; none recomputes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command
from pulumi_azure_native import compute, devtestlab, network, resources, storage

from infra.cloudinit import cloud_config, custom_data
from infra.settings import AzureSettings
from workloads.plan import Host, Plan

REMOTE_ROOT = "/opt/mqttlab"
RUNS = "/var/lib/mqttlab/runs"
MQTTLAB = f"{REMOTE_ROOT}/.venv/bin/mqttlab"
UBUNTU = {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}


@dataclass(frozen=True)
class Ctx:
    """What every component needs: names, tags, location and the validated settings."""

    project: str
    stack: str
    plan: Plan
    az: AzureSettings
    location: pulumi.Input[str]
    resource_group: pulumi.Input[str]
    security: Any = None  # infra.security.SecurityMaterial when the stack's security mode is not none

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
    the Azure fabric otherwise drops), SSH key login only, and everything deleted with it."""

    def __init__(self, name: str, ctx: Ctx, host: Host, subnet: network.Subnet, size: str, ssh_key: pulumi.Input[str],
                 secondary: Sequence[str] = (), ip_forwarding: bool = False, cloud_init: str = "",
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:LinuxVm", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = ctx.resource_group
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
        os_profile: Any = {
            "computer_name": host.name, "admin_username": user, "custom_data": custom_data(cloud_init),
            "linux_configuration": {"disable_password_authentication": True,
                                    "ssh": {"public_keys": [{"path": f"/home/{user}/.ssh/authorized_keys", "key_data": ssh_key}]}},
        }
        storage_profile: Any = {"image_reference": UBUNTU,
                                "os_disk": {"create_option": "FromImage", "delete_option": "Delete", "managed_disk": {"storage_account_type": "Premium_LRS"}}}
        network_profile: Any = {"network_interfaces": [{"id": self.nic.id, "primary": True, "delete_option": "Delete"}]}
        self.vm = compute.VirtualMachine(
            f"{name}-vm", resource_group_name=rg, hardware_profile={"vm_size": size},
            os_profile=os_profile, storage_profile=storage_profile, network_profile=network_profile,
            tags=ctx.tags, **spot, opts=child,
        )
        if ctx.az.auto_shutdown:
            devtestlab.GlobalSchedule(
                f"{name}-shutdown", resource_group_name=rg, name=self.vm.name.apply(lambda n: f"shutdown-computevm-{n}"),
                status="Enabled", task_type="ComputeVmShutdownTask", daily_recurrence={"time": ctx.az.auto_shutdown},
                time_zone_id=ctx.az.auto_shutdown_tz, target_resource_id=self.vm.id, tags=ctx.tags, opts=child,
            )
        self.host = host
        self.ip_address: pulumi.Output[str] = self.public_ip.ip_address.apply(lambda ip: ip or "")
        self.register_outputs({"publicIp": self.ip_address, "privateIp": host.address})


class ResultsStore(pulumi.ComponentResource):
    """A storage account with one private container; VMs upload through a short-lived SAS."""

    def __init__(self, name: str, ctx: Ctx, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:ResultsStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.account = storage.StorageAccount(
            f"{name}-sa", resource_group_name=ctx.resource_group, kind="StorageV2", sku={"name": "Standard_LRS"},
            allow_blob_public_access=False, minimum_tls_version="TLS1_2", enable_https_traffic_only=True, tags=ctx.tags, opts=child,
        )
        self.container = storage.BlobContainer(f"{name}-results", resource_group_name=ctx.resource_group, account_name=self.account.name,
                                               container_name="results", public_access=storage.PublicAccess.NONE, opts=child)
        self.url = pulumi.Output.concat("https://", self.account.name, ".blob.core.windows.net/", self.container.name)
        sas = storage.list_storage_account_service_sas_output(
            account_name=self.account.name, resource_group_name=ctx.resource_group, canonicalized_resource=pulumi.Output.concat(
                "/blob/", self.account.name, "/", self.container.name),
            resource="c", permissions="rwl", protocols=storage.HttpProtocol.HTTPS, shared_access_expiry_time="2099-01-01T00:00:00Z",
        )
        self.sas: pulumi.Output[str] = pulumi.Output.secret(sas.service_sas_token.apply(lambda t: t or ""))
        self.register_outputs({"url": self.url})


def connection(vm: LinuxVm, ctx: Ctx, private_key: pulumi.Input[str]) -> command.remote.ConnectionArgs:
    # VMs take minutes to boot and run cloud-init: keep dialling (about 10 minutes) rather than fail
    return command.remote.ConnectionArgs(host=vm.ip_address, user=ctx.az.admin_user, private_key=private_key, dial_error_limit=120,
                                         per_dial_timeout=10)


def bundle(stack: str) -> pulumi.AssetArchive:
    """What a VM needs to run ``mqttlab``: the workloads package, packaging and the stack file."""
    return pulumi.AssetArchive({
        "workloads": pulumi.FileArchive("workloads"),
        "pyproject.toml": pulumi.FileAsset("pyproject.toml"),
        "README.md": pulumi.FileAsset("README.md"),
        "Pulumi.yaml": pulumi.FileAsset("Pulumi.yaml"),
        f"Pulumi.{stack}.yaml": pulumi.FileAsset(f"Pulumi.{stack}.yaml"),
    })


INSTALL = (f"set -e; cloud-init status --wait >/dev/null || true; test -x {REMOTE_ROOT}/.venv/bin/python || python3 -m venv {REMOTE_ROOT}/.venv; "
           f"{REMOTE_ROOT}/.venv/bin/pip install -q {REMOTE_ROOT}/src && {MQTTLAB} --help >/dev/null")


class LabHost(pulumi.ComponentResource):
    """A VM of the plan with the project installed: the base of both roles."""

    def __init__(self, type_token: str, name: str, ctx: Ctx, vm_args: dict[str, object], private_key: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.vm = LinuxVm(f"{name}", ctx, opts=child, **vm_args)  # type: ignore[arg-type]
        self.conn = connection(self.vm, ctx, private_key)
        wait = command.remote.Command(f"{name}-cloud-init", connection=self.conn, create="cloud-init status --wait --long || true",
                                      opts=pulumi.ResourceOptions(parent=self, depends_on=[self.vm.vm]))
        copy = command.remote.CopyToRemote(f"{name}-bundle", connection=self.conn, source=bundle(ctx.stack), remote_path=f"{REMOTE_ROOT}/src",
                                           opts=pulumi.ResourceOptions(parent=self, depends_on=[wait]))
        self.installed = command.remote.Command(f"{name}-install", connection=self.conn, create=INSTALL, triggers=[copy.id],
                                                opts=pulumi.ResourceOptions(parent=self, depends_on=[copy]))
        if ctx.security is not None:  # secured brokers: every later step waits for this host's secrets
            self.installed = ctx.security.install(name, self.conn, ctx.stack, f"{REMOTE_ROOT}/src", MQTTLAB, [self.installed])
        self.host = self.vm.host


class BrokerHost(LabHost):
    def __init__(self, name: str, ctx: Ctx, subnet: network.Subnet, ssh_key: pulumi.Input[str], private_key: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        host = ctx.plan.host("brokers")
        vm_args = {"host": host, "subnet": subnet, "size": ctx.az.broker_vm_size, "ssh_key": ssh_key,
                   "secondary": [b.address for b in ctx.plan.brokers], "cloud_init": cloud_config("brokers", ctx.az.admin_user)}
        super().__init__("mqttlab:azure:BrokerHost", name, ctx, vm_args, private_key, opts)
        self.up = command.remote.Command(
            f"{name}-brokers-up", connection=self.conn, create=f"sudo {MQTTLAB} host brokers-up -s {ctx.stack} --project-dir {REMOTE_ROOT}/src",
            delete=f"sudo {MQTTLAB} host brokers-down --project-dir {REMOTE_ROOT}/src || true",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.installed]),
        )
        self.register_outputs({"publicIp": self.vm.ip_address})


class BalancerHost(LabHost):
    """A balancer/client host: applies IPVS only where the plan puts a balancer."""

    def __init__(self, name: str, ctx: Ctx, host: Host, subnet: network.Subnet, ssh_key: pulumi.Input[str], private_key: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        docker = ctx.az.load_generator == "emqtt-bench"
        vm_args = {"host": host, "subnet": subnet, "size": ctx.az.balancer_vm_size, "ssh_key": ssh_key, "ip_forwarding": True,
                   "cloud_init": cloud_config("balancer", ctx.az.admin_user, docker=docker)}
        super().__init__("mqttlab:azure:BalancerHost", name, ctx, vm_args, private_key, opts)
        self.applied: command.remote.Command | None = None
        if ctx.plan.balancer_on(host.name) is not None:
            self.applied = command.remote.Command(
                f"{name}-balancer-apply", connection=self.conn,
                create=f"sudo {MQTTLAB} host balancer-apply -s {ctx.stack} --host {host.name} --project-dir {REMOTE_ROOT}/src",
                delete=f"sudo {MQTTLAB} host balancer-clear || true",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.installed]),
            )
        self.ready: pulumi.Resource = self.applied or self.installed
        self.register_outputs({"publicIp": self.vm.ip_address})


class BenchmarkRun(pulumi.ComponentResource):
    """One run: monitors, subscribers on every client host, then publishers, then collection and
    upload. Every step carries ``runId`` in its triggers, so a new ``runId`` reruns only this."""

    def __init__(self, name: str, ctx: Ctx, brokers: BrokerHost, balancers: Sequence[BalancerHost], store: ResultsStore,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mqttlab:azure:BenchmarkRun", name, None, opts)
        run = ctx.az.run_id
        trig = [run]
        limit = ctx.az.bench_timeout_s
        base = f"sudo timeout {limit} {MQTTLAB} host"
        common = f"-s {ctx.stack} --project-dir {REMOTE_ROOT}/src --run-id {run} --runs {RUNS}"
        ready = [brokers.up, *[b.ready for b in balancers]]

        def cmd(rname: str, host: LabHost, create: str, deps: Sequence[pulumi.Resource], extra: Sequence[pulumi.Input[str]] = ()) -> command.remote.Command:
            return command.remote.Command(f"{name}-{rname}", connection=host.conn, create=create, triggers=[*trig, *extra],
                                          opts=pulumi.ResourceOptions(parent=self, depends_on=list(deps)))

        mon = [cmd("monitor-brokers", brokers, f"{base} monitors-start --role brokers {common}", ready)]
        for b in balancers:
            if b.applied is not None:
                mon.append(cmd(f"monitor-{b.host.name}", b, f"{base} monitors-start --role balancer --host {b.host.name} {common}", ready))
        lg = f"--load-generator {ctx.az.load_generator}"
        subs = [cmd(f"subs-{b.host.name}", b, f"{base} bench-subs --host {b.host.name} {lg} {common}", mon) for b in balancers]
        pubs = [cmd(f"pubs-{b.host.name}", b, f"{base} bench-pubs --host {b.host.name} {lg} {common}", subs) for b in balancers]
        finish = [cmd(f"finish-{b.host.name}", b, f"{base} bench-finish --host {b.host.name} {common}", pubs) for b in balancers]
        self.collect: list[command.remote.Command] = []
        for h in [brokers, *balancers]:
            upload = pulumi.Output.concat(
                f"sudo timeout 900 {MQTTLAB} host collect --host {h.host.name} {common} --url ", store.url, " --sas '", store.sas, "'")
            self.collect.append(command.remote.Command(f"{name}-collect-{h.host.name}", connection=h.conn, create=upload, triggers=trig,
                                                       opts=pulumi.ResourceOptions(parent=self, depends_on=finish)))
        self.summary = finish[0].stdout
        self.register_outputs({"runId": run})


def ssh_commands(vms: Sequence[LinuxVm], user: str) -> dict[str, pulumi.Output[str]]:
    return {vm.host.name: pulumi.Output.concat(f"ssh {user}@", vm.ip_address) for vm in vms}
