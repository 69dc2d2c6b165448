"""The Azure program under Pulumi mocks (no Azure account, no Pulumi CLI here): the real
``__main__.py`` with each stack file, asserting on the inputs the mocks record."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tarfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

import infra.login
import infra.settings
from infra.contracts import MOCK_START, NAMESPACES, ContractMocks
from infra.mocked import Monitor, Program, Res, run_program
from tests.conftest import ROOT

AZURE = {"adminCidr": "203.0.113.7/32", "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly user@host"}
SECRET = {"mqttlab:sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nmock\n-----END OPENSSH PRIVATE KEY-----\n"}


def record_registrations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The type of every resource the program registers, kept even when the program then raises."""
    seen: list[str] = []
    register = Monitor.RegisterResource

    def record(self: Monitor, req: Any) -> Any:
        seen.append(req.type)
        return register(self, req)

    monkeypatch.setattr(Monitor, "RegisterResource", record)
    return seen


def stack_config(stack: str, azure: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, str]:
    doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    doc = {**doc, "mqttlab:azure": azure if azure is not None else AZURE, **SECRET, **(extra or {})}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items() if v is not None}


def run(stack: str, monkeypatch: pytest.MonkeyPatch, config: dict[str, str] | None = None, allow_violations: bool = False,
        root: Path = ROOT, caller: str = "User", registered: frozenset[str] = NAMESPACES) -> Program:
    """The real __main__.py under mocks (:func:`infra.mocked.run_program`), resolving every input
    and output, run by a login of the kind ``caller`` ("User" or "ServicePrincipal") on a
    subscription with the ``registered`` resource providers (answered by a stand-in for ARM)."""
    monkeypatch.chdir(root)  # the tests' own files in ``root`` stay where the program wrote them
    mocks = ContractMocks(caller_type=caller, registered=registered)
    return run_program(stack, config if config is not None else stack_config(stack), mocks, allow_violations, root)


@pytest.fixture(params=["distributed", "centralized"])
def program(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Program:
    return run(request.param, monkeypatch)


def test_resource_counts_and_components(program: Program) -> None:
    c = Counter(r.type for r in program.resources)
    assert c["azure-native:resources:ResourceGroup"] == 1 and c["azure-native:network:VirtualNetwork"] == 1
    assert c["azure-native:network:Subnet"] == 3 and c["azure-native:network:NetworkSecurityGroup"] == 2
    assert c["azure-native:compute:VirtualMachine"] == 3 and c["azure-native:network:NetworkInterface"] == 3
    assert c["azure-native:network:PublicIPAddress"] == 3
    assert c["azure-native:storage:StorageAccount"] == 1 and c["azure-native:storage:BlobContainer"] == 1
    assert c["mqttlab:azure:Network"] == 1 and c["mqttlab:azure:LinuxVm"] == 3 and c["mqttlab:azure:BrokerHost"] == 1
    assert c["mqttlab:azure:BalancerHost"] == 2 and c["mqttlab:azure:BenchmarkRun"] == 1 and c["mqttlab:azure:ResultsStore"] == 1
    assert c["azure-native:devtestlab:GlobalSchedule"] == 0  # not configured
    for r in program.resources:  # every resource lives under a component of ours
        assert r.parent.endswith(tuple(f"::{x.name}" for x in program.resources if x.type.startswith("mqttlab:"))) or r.type.startswith("mqttlab:") \
            or r.type == "tls:index/privateKey:PrivateKey"
    subnets = sorted(r.inputs["addressPrefix"] for r in program.of("azure-native:network:Subnet"))
    assert subnets == ["10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"]
    assert program.one("mqttlab-vnet").inputs["addressSpace"] == {"addressPrefixes": ["10.0.0.0/13"]}


def test_nsg_rules_ssh_only_from_admin_and_mqtt_only_from_the_vnet(program: Program) -> None:
    for nsg in program.of("azure-native:network:NetworkSecurityGroup"):
        rules = nsg.inputs["securityRules"]
        ssh = [r for r in rules if r["destinationPortRange"] == "22"]
        assert [r["sourceAddressPrefix"] for r in ssh] == ["203.0.113.7/32"] and all(r["access"] == "Allow" for r in ssh)
        for r in rules:
            if r["access"] == "Allow":
                assert r["sourceAddressPrefix"] not in ("*", "0.0.0.0/0", "Internet")
        mqtt = [r for r in rules if r["destinationPortRange"] == "1883"]
        assert [r["sourceAddressPrefix"] for r in mqtt] == ["VirtualNetwork"]
        deny = [r for r in rules if r["access"] == "Deny"]
        assert deny and deny[0]["sourceAddressPrefix"] == "*" and deny[0]["priority"] > max(r["priority"] for r in rules if r["access"] == "Allow")
    for s in program.of("azure-native:network:Subnet"):
        assert "networkSecurityGroup" in s.inputs


def test_nics_forwarding_and_broker_secondary_addresses(program: Program) -> None:
    nics = {r.name: r.inputs for r in program.of("azure-native:network:NetworkInterface")}
    assert {n: bool(i.get("enableIPForwarding")) for n, i in nics.items()} == {"brokers-nic": False, "ipvs1-nic": True, "ipvs2-nic": True}
    cfgs = nics["brokers-nic"]["ipConfigurations"]
    assert cfgs[0]["primary"] and cfgs[0]["privateIPAddress"] == "10.2.0.10" and "publicIPAddress" in cfgs[0]
    assert [c["privateIPAddress"] for c in cfgs[1:]] == ["10.2.0.20", "10.2.0.21", "10.2.0.22"]
    assert [c["privateIPAddress"] for c in nics["ipvs1-nic"]["ipConfigurations"]] == ["10.3.0.10"]
    for pip in program.of("azure-native:network:PublicIPAddress"):
        assert pip.inputs["sku"] == {"name": "Standard"} and pip.inputs["publicIPAllocationMethod"] == "Static"


def test_vms_image_size_keys_delete_options(program: Program) -> None:
    for vm in program.of("azure-native:compute:VirtualMachine"):
        i = vm.inputs
        assert i["storageProfile"]["imageReference"] == {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}
        assert i["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
        assert i["networkProfile"]["networkInterfaces"][0]["deleteOption"] == "Detach"  # the NIC is a resource of its own
        assert i["hardwareProfile"]["vmSize"] == "Standard_D2s_v5"
        lin = i["osProfile"]["linuxConfiguration"]
        assert lin["disablePasswordAuthentication"] is True and lin["ssh"]["publicKeys"][0]["keyData"] == AZURE["sshPublicKey"]
        assert "priority" not in i
        assert i["tags"]["project"] == "mqttlab" and i["tags"]["run"] == "1"


def decoded_cloud_init(program: Program, vm: str) -> str:
    return base64.b64decode(program.one(f"{vm}-vm").inputs["osProfile"]["customData"]).decode()


def test_cloud_init_per_role_passes_the_real_schema_check(program: Program, tmp_path: Path) -> None:
    for vm, needs in (("brokers", ["docker.io", "docker-compose-v2", "python3-venv"]), ("ipvs1", ["ipvsadm", "conntrack", "iptables", "python3-venv"])):
        text = decoded_cloud_init(program, vm)
        f = tmp_path / f"{vm}.yaml"
        f.write_text(text)
        cp = subprocess.run(["cloud-init", "schema", "--config-file", str(f)], capture_output=True, text=True)
        assert cp.returncode == 0 and "Valid cloud-config" in cp.stdout, cp.stdout + cp.stderr
        doc = yaml.safe_load(text)
        assert set(needs) <= set(doc["packages"])
        if vm == "ipvs1":
            assert any(w["path"] == "/etc/modules-load.d/mqttlab-ipvs.conf" and "ip_vs_lc" in w["content"] for w in doc["write_files"])
            assert ["sysctl", "--system"] in doc["runcmd"]
        else:
            assert "ipvsadm" not in doc["packages"]


def commands(p: Program) -> dict[str, Res]:
    return {r.name: r for r in p.of("command:remote:Command")}


def test_every_remote_command_line_parses_with_the_vms_own_parser(program: Program) -> None:
    """Each remote step's command line, as the program built it from the step table, read by the
    parser ``mqttlab host`` has on the VM: a step that exists, only options it takes, and the
    function the table names (so no command line is written in two places that can drift)."""
    import shlex

    from workloads.cli import build_parser
    from workloads.hosts.azure.cli import STEP_FUNCTIONS
    from workloads.hosts.azure.steps import MQTTLAB

    parser = build_parser("host")
    seen = set()
    for name, res in commands(program).items():
        create = res.inputs.get("create") or ""
        if " host " not in create or MQTTLAB not in create:
            continue
        argv = shlex.split(create)
        argv = argv[argv.index(MQTTLAB) + 1:]
        args = parser.parse_args(argv)  # argparse exits (SystemExit) on an option the step does not take
        assert args.func is STEP_FUNCTIONS[argv[1]], name
        seen.add(argv[1])
    assert {"brokers-up", "balancer-apply", "probe-brokers", "monitors-start", "bench-subs", "bench-start", "bench-pubs",
            "bench-finish", "collect", "verdict"} <= seen


def test_the_step_table_refuses_an_option_its_step_does_not_take() -> None:
    from workloads.hosts.azure import steps

    assert steps.line("bench-pubs", "distributed", 60, host="ipvs1", run_id="7", load_generator="mqttlab", last="start_at").endswith(
        "--run-id 7 --runs /var/lib/mqttlab/runs --start-at ")
    with pytest.raises(ValueError, match="no option --url"):
        steps.line("bench-pubs", "distributed", 60, host="ipvs1", run_id="7", last="url")
    with pytest.raises(ValueError, match="needs --host"):
        steps.line("bench-subs", "distributed", 60, run_id="7")
    with pytest.raises(ValueError, match="takes no --run-id"):
        steps.line("brokers-up", "distributed", 60, run_id="7")
    with pytest.raises(ValueError, match="load-generator"):
        steps.line("bench-subs", "distributed", 60, host="ipvs1", run_id="7", load_generator="jmeter")


def test_remote_command_graph(program: Program) -> None:
    cmds = commands(program)
    centralized = program.outputs["topology"] == "centralized"
    assert "ipvs1-balancer-apply" in cmds
    assert ("ipvs2-balancer-apply" in cmds) is not centralized  # no IPVS on the second host when centralized
    assert "host balancer-apply --host ipvs1 -s" in cmds["ipvs1-balancer-apply"].inputs["create"]
    assert "host brokers-up" in cmds["brokers-brokers-up"].inputs["create"]
    for name, c in cmds.items():  # every step is an mqttlab call, not a shell program
        assert "mqttlab" in c.inputs["create"] or name.endswith("-cloud-init"), name
    deps = {n: program.names(c.deps) for n, c in cmds.items()}
    assert "brokers-install" in deps["brokers-brokers-up"]
    assert {"ipvs1-install"} <= deps["ipvs1-balancer-apply"]
    for h in ("ipvs1", "ipvs2"):
        assert {"bench-monitor-brokers", "bench-monitor-ipvs1"} <= deps[f"bench-subs-{h}"]
        assert {"bench-subs-ipvs1", "bench-subs-ipvs2"} <= deps[f"bench-pubs-{h}"]  # subscribers everywhere first
        assert {"bench-pubs-ipvs1", "bench-pubs-ipvs2"} <= deps[f"bench-finish-{h}"]
    assert {"bench-probe-ipvs1"} <= deps["bench-monitor-brokers"]  # every broker answered a balancer host first
    assert {"brokers-brokers-up", "ipvs1-balancer-apply"} <= deps["bench-probe-ipvs1"]
    for h in ("brokers", "ipvs1", "ipvs2"):
        assert {"bench-finish-ipvs1", "bench-finish-ipvs2"} <= deps[f"bench-collect-{h}"]
        assert "timeout" in cmds[f"bench-collect-{h}"].inputs["create"]
    for n in ("bench-subs-ipvs1", "bench-pubs-ipvs1"):
        assert cmds[n].inputs["create"].startswith("sudo timeout ")  # pulumi up never hangs
    assert not [n for n in cmds if n.startswith("bench-faults")]  # no mqttlab:faults, no fault step
    start = f"--start-at {MOCK_START:.3f}"  # every host's publishers start at the one agreed time
    assert {"bench-subs-ipvs1", "bench-subs-ipvs2"} <= deps["bench-start"] and "host bench-start" in cmds["bench-start"].inputs["create"]
    for h in ("ipvs1", "ipvs2"):
        assert "bench-start" in deps[f"bench-pubs-{h}"] and cmds[f"bench-pubs-{h}"].inputs["create"].endswith(start)
    copies = program.of("command:remote:CopyToRemote")
    assert len(copies) == 3
    conn = cmds["ipvs1-install"].inputs["connection"]
    assert conn["user"] == "mqttlab" and conn["dialErrorLimit"] >= 60 and conn["host"].startswith("20.50.0.")


def test_centralized_snat_lives_in_the_rendered_files_the_command_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    from workloads.describe.config import load_stack
    from workloads.describe.plan import build_plan
    from workloads.render.files import render_files

    cfg = load_stack("centralized", ROOT)
    files = render_files(build_plan(cfg), cfg)
    assert "-A POSTROUTING -s 10.4.0.0/24 -o eth0 -j MASQUERADE" in files["ipvs1/rules.v4"]
    assert "ipvs2/rules.v4" not in files


def test_changing_run_id_changes_only_benchmark_and_collection_triggers(monkeypatch: pytest.MonkeyPatch) -> None:
    a = run("distributed", monkeypatch, stack_config("distributed", extra={"mqttlab:runId": "r1"}))
    b = run("distributed", monkeypatch, stack_config("distributed", extra={"mqttlab:runId": "r2"}))
    ca, cb = commands(a), commands(b)
    assert set(ca) == set(cb)
    changed = {n for n in ca if ca[n].inputs.get("triggers") != cb[n].inputs.get("triggers")}
    assert changed == {n for n in ca if n.startswith("bench-")} and changed
    # provisioning is untouched: same inputs for every VM but the run tag
    for vm in a.of("azure-native:compute:VirtualMachine"):
        other = b.one(vm.name).inputs
        assert {k: v for k, v in vm.inputs.items() if k != "tags"} == {k: v for k, v in other.items() if k != "tags"}
    assert a.outputs["resultsPrefix"] == "distributed/r1/" and b.outputs["resultsPrefix"] == "distributed/r2/"


def test_faults_become_steps_on_the_vms_that_carry_them_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    faults = ["broker2:kill@5s", "bridge:broker1-broker3:cut@10s+5s", "director:ipvs1:kill@20s+10s"]
    p = run("centralized", monkeypatch, stack_config("centralized", extra={"mqttlab:faults": faults}))
    cmds = commands(p)
    deps = {n: p.names(c.deps) for n, c in cmds.items()}
    assert sorted(n for n in cmds if n.startswith("bench-faults")) == ["bench-faults-brokers", "bench-faults-ipvs1"]
    for host in ("brokers", "ipvs1"):
        create = cmds[f"bench-faults-{host}"].inputs["create"]
        assert create.startswith("sudo timeout ") and f"host faults-start --host {host} " in create and create.endswith(f"--start-at {MOCK_START:.3f}")
        assert "bench-start" in deps[f"bench-faults-{host}"]  # armed once the start is agreed
        assert cmds[f"bench-faults-{host}"].inputs["connection"]["host"] == cmds[f"{host}-install"].inputs["connection"]["host"]  # on that VM
        for h in ("brokers", "ipvs1", "ipvs2"):  # collect stops the fault process and clears what it left
            assert f"bench-faults-{host}" in deps[f"bench-collect-{h}"]
    # the VMs' stack file carries the faults (the fault steps read them there)
    bundle = next(r for r in p.of("command:remote:CopyToRemote")).raw["source"].path
    with tarfile.open(bundle) as tar:
        doc = yaml.safe_load(tar.extractfile("Pulumi.centralized.yaml").read())  # type: ignore[union-attr]
    assert doc["config"]["mqttlab:faults"] == faults
    cp = subprocess.run([sys.executable, "-m", "workloads.cli", "host", "faults-start", "--help"], capture_output=True, text=True, cwd=tmp_path)
    for flag in ("--host", "--start-at", "--run-id", "--runs", "--project-dir", "-s"):  # the command the step runs exists as written
        assert flag in cp.stdout


def test_outputs_are_the_documented_ones(program: Program) -> None:
    o = program.outputs
    assert set(o) >= {"topology", "runId", "resultsUrl", "resultsPrefix", "storageAccount", "fetchCommand", "entryPoints", "balancers",
                      "brokerAddresses", "sshCommands", "benchSummary"}
    assert "resultsSas" not in o
    assert o["resultsUrl"] == f"https://{o['storageAccount']}.blob.core.windows.net/results"
    assert o["fetchCommand"] == (f"mkdir -p runs/azure && az storage blob download-batch --auth-mode login --account-name {o['storageAccount']} --source results "
                                 f"--pattern '{o['resultsPrefix']}*' --destination runs/azure")
    assert o["brokerAddresses"] == {"broker1": "10.2.0.20:1883", "broker2": "10.2.0.21:1883", "broker3": "10.2.0.22:1883"}
    assert set(o["sshCommands"]) == {"brokers", "ipvs1", "ipvs2"} and o["sshCommands"]["ipvs1"].startswith("ssh mqttlab@20.50.0.")
    if o["topology"] == "centralized":
        assert o["entryPoints"] == {"ipvs1": "10.3.0.10:1883", "ipvs2": "10.3.0.10:1883"} and o["balancers"] == ["ipvs1"]
    else:
        assert o["entryPoints"] == {"ipvs1": "10.3.0.10:1883", "ipvs2": "10.4.0.10:1883"} and o["balancers"] == ["ipvs1", "ipvs2"]
    page = (ROOT / "docs" / "azure.md").read_text()
    for name in o:
        assert f"`{name}`" in page, f"output {name} is not documented in docs/azure.md"


def test_spot_shutdown_and_generated_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infra.settings, "utc_now", lambda: datetime(2026, 1, 5, 8, 0, tzinfo=UTC))  # far from 19:00: not refused as too soon
    azure = {"adminCidr": "198.51.100.0/28", "generateSshKey": True, "spot": True, "autoShutdown": "1900", "brokerVmSize": "Standard_D4s_v5"}
    cfg = stack_config("distributed", azure=azure)
    del cfg["mqttlab:sshPrivateKey"]
    p = run("distributed", monkeypatch, cfg)
    for vm in p.of("azure-native:compute:VirtualMachine"):
        assert vm.inputs["priority"] == "Spot" and vm.inputs["evictionPolicy"] == "Deallocate"
    shut = p.of("azure-native:devtestlab:GlobalSchedule")
    assert len(shut) == 3 and all(s.inputs["dailyRecurrence"] == {"time": "1900"} and s.inputs["taskType"] == "ComputeVmShutdownTask" for s in shut)
    keys = {k.name for k in p.of("tls:index/privateKey:PrivateKey")}
    assert keys == {"ssh-key", "brokers-hostkey", "ipvs1-hostkey", "ipvs2-hostkey"} and "sshPrivateKey" in p.outputs
    assert p.one("brokers-vm").inputs["hardwareProfile"]["vmSize"] == "Standard_D4s_v5"


def test_scale_out_follows_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"mqttlab:brokers": {"count": 5, "cpus": 0.25, "memoryMb": 128}, "mqttlab:balancer": {"scheduler": "lc", "weights": [1] * 5},
             "mqttlab:network": {"clientSubnets": ["10.3.0.0/24", "10.4.0.0/24", "10.5.0.0/24"]}}
    p = run("centralized", monkeypatch, stack_config("centralized", extra=extra))
    c = Counter(r.type for r in p.resources)
    assert c["azure-native:compute:VirtualMachine"] == 4 and c["azure-native:network:Subnet"] == 4 and c["mqttlab:azure:BalancerHost"] == 3
    nic = p.one("brokers-nic").inputs["ipConfigurations"]
    assert [x["privateIPAddress"] for x in nic[1:]] == ["10.2.0.20", "10.2.0.21", "10.2.0.22", "10.2.0.23", "10.2.0.24"]
    cmds = commands(p)
    assert [n for n in cmds if n.endswith("balancer-apply")] == ["ipvs1-balancer-apply"]
    assert {"bench-subs-ipvs3", "bench-pubs-ipvs3", "bench-collect-ipvs3"} <= set(cmds)


@pytest.mark.parametrize(("azure", "extra", "key"), [
    ({"sshPublicKey": AZURE["sshPublicKey"]}, {}, "mqttlab:azure.adminCidr"),
    ({**AZURE, "adminCidr": "0.0.0.0/0"}, {}, "mqttlab:azure.adminCidr"),
    ({**AZURE, "adminCidr": "*"}, {}, "mqttlab:azure.adminCidr"),
    ({"adminCidr": "203.0.113.7/32"}, {}, "mqttlab:azure.sshPublicKey"),
    ({**AZURE, "brokerVmSize": "big"}, {}, "mqttlab:azure.brokerVmSize"),
    ({**AZURE, "autoShutdown": "25:00"}, {}, "mqttlab:azure.autoShutdown"),
    ({**AZURE, "loadGenerator": "jmeter"}, {}, "mqttlab:azure.loadGenerator"),
    (AZURE, {"mqttlab:balancer": {"scheduler": "fastest"}}, "mqttlab:balancer.scheduler"),
    (AZURE, {"mqttlab:brokers": {"count": 0}}, "mqttlab:brokers.count"),
    (AZURE, {"mqttlab:runId": "Run 1!"}, "mqttlab:runId"),
    (AZURE, {"mqttlab:faults": ["broker9:kill@5s"]}, "mqttlab:faults[0]"),
])
def test_bad_configuration_fails_before_any_resource(monkeypatch: pytest.MonkeyPatch, azure: dict[str, Any], extra: dict[str, Any], key: str) -> None:
    seen = record_registrations(monkeypatch)
    with pytest.raises(pulumi.RunError) as info:
        run("distributed", monkeypatch, stack_config("distributed", azure=azure, extra=extra))
    assert [t for t in seen if t != "pulumi:pulumi:Stack"] == []
    assert key in str(info.value) and "configuration error" in str(info.value)


def test_missing_private_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = stack_config("distributed")
    del cfg["mqttlab:sshPrivateKey"]
    with pytest.raises(pulumi.RunError, match="mqttlab:sshPrivateKey"):
        run("distributed", monkeypatch, cfg)
