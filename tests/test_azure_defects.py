"""The Azure program against what a first real ``pulumi up`` meets: one test per defect found
in review (numbered as in the review), each run through the contract-checked mocks."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from infra.contracts import MOCK_SECRET, SECRET_SIG
from tests.conftest import ROOT
from tests.test_azure import AZURE, Program, commands, run, stack_config

CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


def keygen(tmp: Path, kind: str, bits: int | None = None, passphrase: str = "") -> tuple[str, str]:
    """A real key pair from ssh-keygen: (private key text, public key line)."""
    f = tmp / f"id_{kind}_{bits}_{bool(passphrase)}"
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "test", "-f", str(f)]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True, capture_output=True)
    return f.read_text(), f.with_suffix(".pub").read_text().strip() if f.with_suffix(".pub").exists() else Path(str(f) + ".pub").read_text().strip()


def project_copy(tmp: Path) -> Path:
    """The files the program bundles, in a scratch project directory."""
    root = tmp / "project"
    root.mkdir()
    shutil.copytree(ROOT / "workloads", root / "workloads", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md", "Pulumi.yaml", "Pulumi.distributed.yaml", "Pulumi.centralized.yaml"):
        shutil.copy(ROOT / f, root / f)
    return root


def bundle_of(p: Program, host: str = "brokers") -> tuple[Path, dict[str, bytes]]:
    src = p.one(f"{host}-bundle").raw["source"]
    path = Path(src.path)
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    return path, files


# 1 ------------------------------------------------------------------------------------------
def test_1_bundle_is_one_path_based_file_asset(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", monkeypatch)
    assert not p.violations
    for c in p.of("command:remote:CopyToRemote"):
        assert isinstance(c.raw["source"], pulumi.FileAsset) and not isinstance(c.raw["source"], pulumi.AssetArchive)
    path, files = bundle_of(p)
    assert path.is_file() and "workloads/hosts/azure/cli.py" in files and "pyproject.toml" in files and "Pulumi.distributed.yaml" in files
    assert not any("__pycache__" in n for n in files)


# 2 ------------------------------------------------------------------------------------------
def test_2_storage_account_gets_a_name_azure_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", monkeypatch)
    name = p.outputs["storageAccount"]
    assert re.fullmatch(r"[a-z0-9]{3,24}", name), name
    assert p.one("resultssa").type == "azure-native:storage:StorageAccount"


# 3 ------------------------------------------------------------------------------------------
def test_3_passphrase_protected_key_is_usable_and_a_missing_passphrase_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    private, public = keygen(tmp_path, "ed25519", passphrase="s3cret-pass")
    azure = {**AZURE, "sshPublicKey": public}
    cfg = stack_config("distributed", azure=azure, extra={"mqttlab:sshPrivateKey": private, "mqttlab:sshPrivateKeyPassword": "s3cret-pass"})
    p = run("distributed", monkeypatch, cfg)
    conn = commands(p)["brokers-install"].inputs["connection"]
    assert conn["privateKeyPassword"] == "s3cret-pass" and "ENCRYPTED" not in conn["privateKey"] and conn["privateKey"] == private
    assert SECRET_SIG in json.dumps(commands(p)["brokers-install"].raw["connection"])  # stays a secret
    del cfg["mqttlab:sshPrivateKeyPassword"]
    with pytest.raises(pulumi.RunError, match="mqttlab:sshPrivateKey.*passphrase"):
        run("distributed", monkeypatch, cfg)


# 4 ------------------------------------------------------------------------------------------
def test_4_destroy_never_dials_a_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", monkeypatch)
    for c in [*p.of("command:remote:Command"), *p.of("command:remote:CopyToRemote")]:
        assert not c.inputs.get("delete"), f"{c.name} would SSH at destroy: {c.inputs.get('delete')}"


# 5 ------------------------------------------------------------------------------------------
def test_5_a_source_or_config_change_reinstalls_and_nothing_else_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    a = run("distributed", monkeypatch, root=root)
    again = run("distributed", monkeypatch, root=root)
    cli = root / "workloads" / "hosts" / "azure" / "cli.py"
    cli.write_text(cli.read_text() + "\n# edited\n")
    b = run("distributed", monkeypatch, root=root)
    ca, cagain, cb = commands(a), commands(again), commands(b)
    for step in ("brokers-install", "ipvs1-install", "brokers-brokers-up", "ipvs1-balancer-apply"):
        assert ca[step].inputs["triggers"] == cagain[step].inputs["triggers"]  # reproducible: no change, no reinstall
        assert ca[step].inputs["triggers"] != cb[step].inputs["triggers"], step
    _, files = bundle_of(b)
    assert files["workloads/hosts/azure/cli.py"].endswith(b"# edited\n")
    c = run("distributed", monkeypatch, stack_config("distributed", extra={"mqttlab:scenario": {"publishers": 10, "subscribers": 10}}), root=root)
    assert commands(c)["brokers-install"].inputs["triggers"] != cb["brokers-install"].inputs["triggers"]  # config is in the bundle too


# 6 ------------------------------------------------------------------------------------------
def test_6_vms_upload_with_their_identity_and_no_key_or_sas_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", monkeypatch)
    account = p.of("azure-native:storage:StorageAccount")[0].inputs
    assert account["allowSharedKeyAccess"] is False and account["allowBlobPublicAccess"] is False
    container_id = next(iter(p.of("azure-native:storage:BlobContainer")))
    roles = p.of("azure-native:authorization:RoleAssignment")
    writers = [r for r in roles if r.inputs["roleDefinitionId"].endswith(CONTRIBUTOR)]
    assert len(writers) == 3 and all(r.inputs["principalType"] == "ServicePrincipal" for r in writers)
    assert all(r.inputs["scope"].endswith(f"/{container_id.type}/{p.outputs['resultsUrl'].rsplit('/', 1)[1]}") for r in roles)
    for vm in p.of("azure-native:compute:VirtualMachine"):
        assert vm.inputs["identity"] == {"type": "SystemAssigned"}
    cmds = commands(p)
    for h in ("brokers", "ipvs1", "ipvs2"):
        create = cmds[f"bench-collect-{h}"].inputs["create"]
        assert "--sas" not in create and "sig=" not in create and create.endswith(f"--url {p.outputs['resultsUrl']}")
        assert {f"results-writer-{h}"} <= p.names(cmds[f"bench-collect-{h}"].deps)  # the role exists before the upload


# 7 ------------------------------------------------------------------------------------------
def test_7_finish_knows_the_load_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = stack_config("distributed", azure={**AZURE, "loadGenerator": "emqtt-bench"})
    cmds = commands(run("distributed", monkeypatch, cfg))
    for h in ("ipvs1", "ipvs2"):
        assert "--load-generator emqtt-bench" in cmds[f"bench-finish-{h}"].inputs["create"]


# 8 ------------------------------------------------------------------------------------------
def test_8_collection_follows_every_run_and_a_verdict_comes_last(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", monkeypatch)
    cmds = commands(p)
    assert {"bench-collect-brokers", "bench-collect-ipvs1", "bench-collect-ipvs2"} <= p.names(cmds["bench-verdict"].deps)
    assert "host verdict --host ipvs1" in cmds["bench-verdict"].inputs["create"]
    assert p.outputs["benchSummary"] == json.dumps({"host": "bench-verdict"})


# 9 ------------------------------------------------------------------------------------------
def test_9_every_remote_step_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    for stack in ("distributed", "centralized"):
        for name, c in commands(run(stack, monkeypatch)).items():
            assert re.match(r"^(sudo )?timeout \d+ ", c.inputs["create"]), f"{name}: {c.inputs['create']}"
            body = c.inputs["create"]
            if " sh -c '" in body:  # the whole script runs inside the one timeout
                assert body.endswith("'") and body.count("'") == 2, name


# 10 -----------------------------------------------------------------------------------------
def test_10_ipvlan_l3_secondary_ips_left_to_the_containers_and_brokers_probed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from workloads.describe.config import load_stack
    from workloads.describe.plan import build_plan
    from workloads.render.files import render_files

    cfg = load_stack("distributed", ROOT)
    compose = yaml.safe_load(render_files(build_plan(cfg), cfg)["brokers/docker-compose.yml"])
    net = compose["networks"]["brokernet"]
    assert net["driver"] == "ipvlan" and net["driver_opts"]["ipvlan_mode"] == "l3" and "gateway" not in net["ipam"]["config"][0]
    p = run("distributed", monkeypatch)
    text = base64.b64decode(p.one("brokers-vm").inputs["osProfile"]["customData"]).decode()
    f = tmp_path / "brokers.yaml"
    f.write_text(text)
    cp = subprocess.run(["cloud-init", "schema", "--config-file", str(f)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    written = {w["path"]: w["content"] for w in yaml.safe_load(text)["write_files"]}
    assert yaml.safe_load(written["/etc/cloud/cloud.cfg.d/91-mqttlab-secondary-ips.cfg"]) == {
        "datasource": {"Azure": {"apply_network_config_for_secondary_ips": False}}}
    cmds = commands(p)
    for h in ("ipvs1", "ipvs2"):
        assert "host probe-brokers" in cmds[f"bench-probe-{h}"].inputs["create"]
        assert f"bench-probe-{h}" in p.names(cmds["bench-monitor-brokers"].deps)


# 11 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "bits", "ok"), [("ecdsa", 256, False), ("rsa", 1024, False), ("rsa", 2048, True), ("ed25519", None, True)])
def test_11_only_keys_azure_accepts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, bits: int | None, ok: bool) -> None:
    _, public = keygen(tmp_path, kind, bits)
    cfg = stack_config("distributed", azure={**AZURE, "sshPublicKey": public})
    if ok:
        run("distributed", monkeypatch, cfg)
    else:
        with pytest.raises(pulumi.RunError, match=r"mqttlab:azure\.sshPublicKey.*(ssh-ed25519 or ssh-rsa|2048)"):
            run("distributed", monkeypatch, cfg)


def test_11_host_keys_are_generated_injected_and_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    p = run("distributed", monkeypatch)
    for h in ("brokers", "ipvs1", "ipvs2"):
        key = p.one(f"{h}-hostkey")
        assert key.type == "tls:index/privateKey:PrivateKey" and key.inputs["algorithm"] == "ED25519"
        vm = p.one(f"{h}-vm")
        assert SECRET_SIG in json.dumps(vm.raw["osProfile"]) and vm.inputs["osProfile"]["customData"]  # the host key is a secret
        doc = yaml.safe_load(base64.b64decode(vm.inputs["osProfile"]["customData"]).decode())
        pinned = commands(p)[f"{h}-install"].inputs["connection"]["hostKey"]
        assert doc["ssh_keys"]["ed25519_public"] == pinned and pinned.startswith("ssh-ed25519 ")
        assert doc["ssh_genkeytypes"] == ["ed25519"] and doc["ssh_deletekeys"] is True
    assert len({commands(p)[f"{h}-install"].inputs["connection"]["hostKey"] for h in ("brokers", "ipvs1", "ipvs2")}) == 3


# 12 -----------------------------------------------------------------------------------------
def test_12_secure_values_never_reach_a_vm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    f = root / "Pulumi.distributed.yaml"
    doc = yaml.safe_load(f.read_text())
    doc["config"]["mqttlab:sshPrivateKey"] = {"secure": "v1:SECUREKEYCIPHERTEXT"}
    doc["config"]["mqttlab:azure"] = {"adminCidr": "203.0.113.7/32", "token": {"secure": "v1:NESTEDSECURE"}}
    doc["encryptionsalt"] = "v1:SALT"
    f.write_text(yaml.safe_dump(doc))
    p = run("distributed", monkeypatch, root=root)
    _, files = bundle_of(p)
    blob = b"".join(files.values())
    for marker in (b"secure:", b"SECUREKEYCIPHERTEXT", b"NESTEDSECURE", b"encryptionsalt", b"PRIVATE KEY", b"adminCidr"):
        assert marker not in files["Pulumi.distributed.yaml"], marker
    assert b"SECUREKEYCIPHERTEXT" not in blob and b"NESTEDSECURE" not in blob
    shipped = yaml.safe_load(files["Pulumi.distributed.yaml"])["config"]
    assert shipped["mqttlab:scenario"]["publishers"] == 240 and shipped["mqttlab:topology"] == "distributed"


# 13 -----------------------------------------------------------------------------------------
def test_13_a_cloud_config_change_replaces_the_vm_and_reinstalls(monkeypatch: pytest.MonkeyPatch) -> None:
    a = run("distributed", monkeypatch)
    b = run("distributed", monkeypatch, stack_config("distributed", azure={**AZURE, "loadGenerator": "emqtt-bench"}))
    va, vb = a.one("ipvs1-vm"), b.one("ipvs1-vm")
    assert va.inputs["osProfile"]["customData"] != vb.inputs["osProfile"]["customData"]  # docker on the balancers
    assert a.one("brokers-vm").inputs["osProfile"]["customData"] == b.one("brokers-vm").inputs["osProfile"]["customData"]
    for vm in a.of("azure-native:compute:VirtualMachine"):
        assert "osProfile.customData" in vm.options["replaceOnChanges"] and vm.options["deleteBeforeReplace"] is True
    cmds = commands(a)
    vm_id = "vmId"  # every step on a VM is keyed to that VM's identity: a replacement reinstalls
    for step in ("ipvs1-cloud-init", "ipvs1-install", "ipvs1-balancer-apply", "bench-subs-ipvs1"):
        assert len(cmds[step].raw["triggers"]) >= 1 and any(isinstance(t, str) and re.fullmatch(r"[0-9a-f-]{36}", t)
                                                            for t in cmds[step].inputs["triggers"]), (step, vm_id)


# secrets --------------------------------------------------------------------------------------
PLAIN_SECRETS = re.compile(r"sig=|[?&]sv=20\d\d|AccountKey=|SharedAccessSignature|PRIVATE KEY-----|Bearer |s3cret-pass")


def recorded_text(p: Program) -> list[tuple[str, str]]:
    """Every command line, environment and stdin the remote commands carry, and every output
    that is not a secret, as plain text. A stdin that reaches the engine as a secret (the
    secured brokers' material, piped to ``security-install``) is encrypted in state and never
    on a command line: it is left out, the rest stays in whatever its wrapping."""
    out: list[tuple[str, str]] = []
    for c in p.of("command:remote:Command"):
        for k in ("create", "update", "delete", "environment", "stdin"):
            if k == "stdin" and SECRET_SIG in json.dumps(c.raw.get(k)):
                continue
            if c.inputs.get(k) is not None:
                out.append((f"{c.name}.{k}", json.dumps(c.inputs[k])))
    for k, v in p.outputs.items():
        if k not in p.secret_outputs:
            out.append((f"output {k}", json.dumps(v)))
    return out


@pytest.mark.parametrize(("stack", "mode"), [("distributed", "none"), ("centralized", "none"), ("smoke", "none"),
                                           ("distributed", "tls"), ("centralized", "mtls"), ("smoke", "mtls")])
def test_no_sas_key_or_private_key_in_plain_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stack: str, mode: str) -> None:
    private, public = keygen(tmp_path, "ed25519", passphrase="s3cret-pass")
    security = {"mqttlab:security": {"mode": mode}}
    cfg = stack_config(stack, azure={**AZURE, "sshPublicKey": public},
                       extra={"mqttlab:sshPrivateKey": private, "mqttlab:sshPrivateKeyPassword": "s3cret-pass", **security})
    p = run(stack, monkeypatch, cfg)
    texts = recorded_text(p)
    assert len(texts) > 20
    # host keys always; with security, the CA's, brokers' and clients' keys and the passwords too
    assert len(p.secrets) >= (3 if mode == "none" else 20)
    for where, text in texts:
        assert not PLAIN_SECRETS.search(text), f"{where}: {PLAIN_SECRETS.search(text)}"
        assert private.strip().splitlines()[1] not in text
        assert MOCK_SECRET not in text and not [s for s in p.secrets if s in text], where
    if mode != "none":  # the material went to every host, as a secret on stdin
        installs = [c for c in p.of("command:remote:Command") if c.name.endswith("-security")]
        assert len(installs) == 3 and all(SECRET_SIG in json.dumps(c.raw["stdin"]) for c in installs)
    for c in [*p.of("command:remote:Command"), *p.of("command:remote:CopyToRemote")]:  # credentials reach the engine as secrets
        conn: dict[str, Any] = c.raw["connection"]
        assert SECRET_SIG in json.dumps(conn) and "s3cret-pass" in json.dumps(c.inputs["connection"])
    generated = run(stack, monkeypatch, {k: v for k, v in stack_config(stack, azure={**AZURE, "generateSshKey": True}, extra=security).items()
                                         if k != "mqttlab:sshPrivateKey"})
    assert "sshPrivateKey" in generated.secret_outputs
    assert all(not PLAIN_SECRETS.search(t) for _, t in recorded_text(generated))


# smoke ------------------------------------------------------------------------------------------
def test_smoke_stack_is_small_cheap_and_passes_the_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    own = yaml.safe_load((ROOT / "Pulumi.smoke.yaml").read_text())["config"]["mqttlab:azure"]
    p = run("smoke", monkeypatch, stack_config("smoke", azure={**own, **AZURE}))
    assert not p.violations and p.outputs["topology"] == "distributed"
    sizes = {vm.name: vm.inputs["hardwareProfile"]["vmSize"] for vm in p.of("azure-native:compute:VirtualMachine")}
    assert sizes == {"brokers-vm": "Standard_B2s", "ipvs1-vm": "Standard_B1ms", "ipvs2-vm": "Standard_B1ms"}
    shut = p.of("azure-native:devtestlab:GlobalSchedule")
    assert len(shut) == 3 and all(re.fullmatch(r"\d{4}", s.inputs["dailyRecurrence"]["time"]) for s in shut)  # +2h: after this up
    _, files = bundle_of(p)
    scenario = yaml.safe_load(files["Pulumi.smoke.yaml"])["config"]["mqttlab:scenario"]
    assert scenario["publishers"] * scenario["messages"] <= 2000 and scenario["timeLimitS"] <= 180
    assert "sudo timeout 600 " in commands(p)["bench-pubs-ipvs1"].inputs["create"]
