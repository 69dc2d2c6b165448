"""Results upload and fetch through azure-identity and azure-storage-blob, against Azurite
(Microsoft's Blob service emulator) over HTTPS with OAuth bearer tokens only: the VMs as their
managed identity (from a stand-in for the instance metadata service), the user with an ``az
login`` (a stand-in ``az`` on PATH, which ``AzureCliCredential`` runs), Azure RBAC's 403 in
front (tests/azurite.py). No shared key and no SAS anywhere."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken

from tests.azurite import USER_OID, USER_TOKEN, VM_OID, Blob, blob_service, token
from tests.conftest import ROOT
from workloads.analysis.synthetic import reference_truth, write_run
from workloads.base.errors import LabError
from workloads.hosts.azure.collect import cmd_verdict
from workloads.hosts.azure.common import record_step
from workloads.rundir.records import summarize
from workloads.storage import blob as storage


@pytest.fixture
def blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Blob]:
    """Azurite with the results container; this process's managed identity is the stand-in's."""
    with blob_service(tmp_path / "blob") as b:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", b.imds.url)  # azure-identity's IMDS host (imds.py)
        yield b


@pytest.fixture
def az_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in ``az`` on PATH, logged in as the operator; returns its call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tests.fake_az import main\nsys.exit(main(sys.argv[1:]))\n")
    (bin_dir / "az").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AZ_LOG", str(tmp_path / "az.jsonl"))
    return tmp_path / "az.jsonl"


class Login:
    """A credential of a given principal (for the cases no stand-in logs in as)."""

    def __init__(self, oid: str, kind: str = "user", lifetime_s: int = 3600) -> None:
        self.value = token(oid, kind, lifetime_s=lifetime_s, issued=int(time.time()) - 60)

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(self.value, int(time.time()) + 3600)


def vm(b: Blob) -> storage.ContainerClient:
    return storage.container(b.container_url, storage.vm_credential(), str(b.ca_file))


def digest(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_hosts_upload_into_one_prefix_and_the_user_fetches_the_run_back_byte_for_byte(blob: Blob, az_login: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "hostview", reference_truth())
    (run / "pids").mkdir()
    (run / "pids" / "bench-sub.pid").write_text("1")
    n = storage.upload_dir(vm(blob), run, "distributed/7/", skip_manifest=False)
    assert n == sum(1 for p in run.rglob("*") if p.is_file()) - 1  # everything but the pid file
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format_version": 1, "status": "running"}')
    storage.upload_dir(vm(blob), other, "distributed/7/", skip_manifest=True)  # a second host never overwrites it
    dest = storage.fetch(storage.container(blob.container_url, storage.user_credential(), str(blob.ca_file)), "distributed/7/", tmp_path / "runs")
    assert dest == tmp_path / "runs" / "distributed-7"
    (run / "pids" / "bench-sub.pid").unlink()
    (run / "pids").rmdir()
    assert digest(dest) == digest(run)
    s = summarize(dest)
    assert (s["expected"], s["delivered"], s["lost"], s["status"]) == (800, 781, 19, "complete")
    assert json.loads(az_login.read_text().splitlines()[0])[:2] == ["account", "get-access-token"]  # the user's token came from az
    assert blob.imds.requests >= 1 and {a for _, _, a in blob.gate.requests} == {"Bearer"}  # the VM token from IMDS; bearer only


def test_a_vm_waits_out_its_role_assignment_propagating_and_never_shows_the_token(blob: Blob, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A 403 AuthorizationPermissionMismatch right after pulumi up is the role assignment still
    propagating: retried for a bounded time, then reported in one line."""
    run = write_run(tmp_path / "vm", reference_truth())
    blob.gate.propagating[VM_OID] = 3
    n = storage.upload_dir(vm(blob), run, "smoke/1/", skip_manifest=False, host="ipvs1", wait_forbidden_s=30, pause_s=0.05)
    assert n > 3 and blob.gate.refused == [(VM_OID, "PUT")] * 3
    assert all(name.startswith("smoke/1/") for name in storage.names(vm(blob), ""))
    blob.gate.propagating[VM_OID] = 1000
    t0 = time.monotonic()
    with pytest.raises(LabError, match=r"^upload of smoke/2/.*: 403 AuthorizationPermissionMismatch: This request is not authorized"):
        storage.upload_dir(vm(blob), run, "smoke/2/", skip_manifest=False, wait_forbidden_s=0.3, pause_s=0.05)
    assert time.monotonic() - t0 < 5
    out = capsys.readouterr()
    assert token(VM_OID)[:40] not in out.out + out.err


def test_the_users_reader_role_reads_and_cannot_write(blob: Blob, tmp_path: Path) -> None:
    storage.put(vm(blob), "distributed/3/manifest.json", b"{}")
    user = storage.container(blob.container_url, Login(USER_OID), str(blob.ca_file))
    assert storage.get(user, "distributed/3/manifest.json") == b"{}"
    with pytest.raises(LabError, match="403 AuthorizationPermissionMismatch"):
        storage.put(user, "distributed/3/manifest.json", b"tampered")
    stranger = storage.container(blob.container_url, Login("88888888-8888-8888-8888-888888888888"), str(blob.ca_file))
    with pytest.raises(LabError, match="403 AuthorizationPermissionMismatch"):  # no role on the container
        storage.fetch(stranger, "distributed/3/", tmp_path / "x")
    expired = storage.container(blob.container_url, Login(USER_OID, lifetime_s=1), str(blob.ca_file))
    with pytest.raises(LabError, match="403 AuthenticationFailed"):  # Azurite's own check: the token's lifetime
        storage.get(expired, "distributed/3/manifest.json")


def test_every_host_keeps_its_own_logs(blob: Blob, tmp_path: Path) -> None:
    for host in ("ipvs1", "ipvs2"):
        rd = tmp_path / host
        (rd / "logs").mkdir(parents=True)
        (rd / "logs" / "bench-sub.log").write_text(f"subscribers of {host}\n")
        (rd / "status").mkdir()
        (rd / "status" / f"{host}-bench-pubs.json").write_text("{}")
        storage.upload_dir(vm(blob), rd, "distributed/9/", skip_manifest=True, host=host)
    c = vm(blob)
    assert storage.get(c, "distributed/9/logs/ipvs1/bench-sub.log") == b"subscribers of ipvs1\n"
    assert storage.get(c, "distributed/9/logs/ipvs2/bench-sub.log") == b"subscribers of ipvs2\n"
    assert "distributed/9/logs/bench-sub.log" not in storage.names(c, "distributed/9/")


def test_verdict_fails_the_run_after_everything_is_uploaded(blob: Blob, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    rd = runs / "5"
    rd.mkdir(parents=True)
    (rd / "manifest.json").write_text(json.dumps({"format_version": 1, "status": "complete", "run_id": "5"}))
    record_step(rd, "ipvs1", "bench-pubs", "ok")
    other = tmp_path / "ipvs2"
    record_step(other, "ipvs2", "bench-pubs", "failed", "LabError: publishers on ipvs2 exited 3")
    storage.upload_dir(vm(blob), rd, "distributed/5/", skip_manifest=False, host="ipvs1")
    storage.upload_dir(vm(blob), other, "distributed/5/", skip_manifest=True, host="ipvs2")
    args = argparse.Namespace(stack="distributed", project_dir=str(ROOT), runs=str(runs), run_id="5", host="ipvs1", url=blob.container_url,
                              ca_file=str(blob.ca_file))
    assert cmd_verdict(args) == 1
    out = capsys.readouterr()
    assert "ipvs2 bench-pubs: LabError: publishers on ipvs2 exited 3" in out.err and json.loads(out.out)["status"] == "failed"
    manifest = json.loads(storage.get(vm(blob), "distributed/5/manifest.json"))
    assert manifest["status"] == "failed" and [b["host"] for b in manifest["failed_steps"]] == ["ipvs2"]
    (other / "status" / "ipvs2-bench-pubs.json").unlink()
    vm(blob).delete_blob("distributed/5/status/ipvs2-bench-pubs.json")
    assert cmd_verdict(args) == 0  # nothing failed: the run stands


def test_results_fetch_reads_with_the_users_az_login(blob: Blob, az_login: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.put(vm(blob), "smoke/4/manifest.json", b'{"status": "complete"}')
    cmd = [sys.executable, "-m", "workloads.cli", "results", "fetch", "--url", blob.container_url, "--prefix", "smoke/4/", "--out", str(tmp_path),
           "--ca-file", str(blob.ca_file)]
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert (tmp_path / "smoke-4" / "manifest.json").read_bytes() == b'{"status": "complete"}'
    assert USER_TOKEN not in cp.stdout + cp.stderr
    monkeypatch.setenv("FAKE_AZ_LOGGED_OUT", "1")
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode != 0 and "az login" in cp.stderr and "Traceback" not in cp.stderr, cp.stderr


def test_the_vms_install_the_sdk_their_upload_uses() -> None:
    import tomllib

    from infra.components import INSTALL

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {d.split(">")[0] for d in extras["azure"]} == {"azure-identity", "azure-storage-blob"}
    assert '/opt/mqttlab/src[azure]"' in INSTALL and "mqttlab[azure]" in extras["infra"]


@pytest.mark.lab
def test_a_lab_runs_results_go_up_as_the_vm_and_come_back_to_the_user_byte_for_byte(blob: Blob, az_login: Path, tmp_path: Path) -> None:
    """A real lab run's directory: uploaded by the VMs' code (managed identity), fetched by the
    user's command (az login), identical; only bearer tokens reached the store."""
    from tests.test_lab import lab_run

    cp = lab_run("-s", "distributed", "--publishers", "4", "--subscribers", "4", "--messages", "40", "--interval-ms", "50", "--quiet",
                 out=tmp_path / "lab")
    assert cp.returncode == 0, cp.stderr
    (run,) = (tmp_path / "lab").iterdir()
    n = storage.upload_dir(vm(blob), run, "distributed/lab/", skip_manifest=False)
    cmd = [sys.executable, "-m", "workloads.cli", "results", "fetch", "--url", blob.container_url, "--prefix", "distributed/lab/",
           "--out", str(tmp_path / "fetched"), "--ca-file", str(blob.ca_file)]
    got = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert got.returncode == 0, got.stderr
    kept = {k: v for k, v in digest(run).items() if not k.startswith("pids/") and not k.endswith(".sock")}
    assert n == len(kept) > 10 and digest(Path(got.stdout.strip())) == kept
    assert {a for _, _, a in blob.gate.requests} == {"Bearer"} and not any("sig=" in p for _, p, _ in blob.gate.requests)


@pytest.mark.parametrize(("argv", "says"), [
    (["--url", "http://127.0.0.1:9/c"], "--url"),
    (["--url", "https://127.0.0.1:9/c", "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
    (["--url", "https://127.0.0.1:9/c", "--ca-file", str(ROOT / "README.md")], "--ca-file"),
])
def test_results_fetch_refuses_a_bad_url_or_ca_file_in_one_line(tmp_path: Path, argv: list[str], says: str) -> None:
    cp = subprocess.run([sys.executable, "-m", "workloads.cli", "results", "fetch", "--prefix", "p/", "--out", str(tmp_path), *argv],
                        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode == 2 and len(cp.stderr.strip().splitlines()) == 1 and says in cp.stderr, cp.stderr
