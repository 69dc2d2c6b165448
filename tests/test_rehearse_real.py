"""The rehearsal for real: hosts with their own sshd, cloud-init, apt, pip and Docker; the program's
own steps over OpenSSH with the host keys pinned. On a kernel without ipvlan and IPVS (this
machine's), the chain goes as far as those allow, and each step that cannot work says why."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from infra.rehearse.__main__ import missing_kernel_features
from infra.rehearse.engine import FAILED, RAN
from infra.rehearse.hosts import PREFIX, Hosts
from infra.rehearse.program import rehearsed
from infra.rehearse.ssh import SSH_FAILED, SshRunner
from tests.conftest import ROOT

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
              pytest.mark.skipif(not Path("/usr/sbin/sshd").exists() or shutil.which("cloud-init") is None or shutil.which("sudo") is None,
                                 reason="needs openssh-server, cloud-init and sudo (scripts/setup.sh --dev)")]


def _namespaces() -> list[str]:
    return [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split() if n.startswith(PREFIX)]


@pytest.fixture
def shm() -> Any:
    d = Path(tempfile.mkdtemp(prefix="mqttlab-rehearsal-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_programs_steps_run_over_ssh_as_far_as_this_kernel_allows(tmp_path: Path, shm: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "infra.rehearse", "-s", "smoke", "--continue-on-error", "--vm", "never", "--dir", str(tmp_path), "--work", str(shm)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert _namespaces() == [], "teardown left namespaces"
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    by = {e["step"]: e for e in log}
    assert "stand-in: systemctl" in out.stdout and "stand-in: docker-compose-v2" in out.stdout, out.stdout[-3000:]
    assert "results store: https://resultssa" in out.stdout, out.stdout[-3000:]
    missing = " ".join(missing_kernel_features())
    for step in ("brokers-cloud-init", "brokers-bundle", "brokers-install"):
        boot = tmp_path / "hosts" / "brokers" / "cloud-init-output.log"
        assert by[step]["status"] == RAN and by[step]["rc"] == 0, (step, by.get(step), out.stdout[-2000:],
                                                                   boot.read_text()[-3000:] if boot.exists() else "no cloud-init log")
    up = by["brokers-brokers-up"]
    if "ipvlan" in missing:  # Docker, the image and Compose all worked: only the kernel refuses the network
        assert up["status"] == FAILED and "ipvlan port: operation not supported" in " ".join(up["tail"]), up
        assert out.returncode == 1
    else:
        assert up["status"] == RAN, up
    for vm in ("ipvs1", "ipvs2"):
        init = by[f"{vm}-cloud-init"]
        if "ip_vs" in missing:  # cloud-init's runcmd loads IPVS: it fails, named, and stops that host's chain
            assert init["status"] == FAILED and "runcmd" in " ".join(init["tail"]), init
            assert f"{vm}-bundle" not in by
        else:
            assert init["status"] == RAN and by[f"{vm}-install"]["status"] == RAN
    assert "bench-verdict" not in by or by["bench-verdict"]["status"] == RAN


# after the test above: these hosts live until the module ends, and a rehearsal refuses to start beside them
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One rehearsal's hosts, store included, for the tests that only dial them."""
    from infra.rehearse.__main__ import plan_of

    shm_dir = Path(tempfile.mkdtemp(prefix="mqttlab-rehearsal-", dir="/dev/shm"))
    r = rehearsed("smoke", {})
    try:
        with Hosts(r, plan_of("smoke"), shm_dir, log=lambda _t: None) as hosts:
            yield r, hosts, SshRunner(tmp_path_factory.mktemp("ssh"), r.operator_key)
    finally:
        shutil.rmtree(shm_dir, ignore_errors=True)
    assert _namespaces() == []


def test_a_host_answering_with_another_key_is_refused(built: Any) -> None:
    r, _hosts, runner = built
    step = next(s for s in r.steps if s.name == "brokers-cloud-init")
    ok = runner.run(step, {**step.inputs, "create": "id -un; hostname"})
    assert ok.rc == 0 and ok.stdout.split() == ["mqttlab", "brokers"], ok
    other = next(s for s in r.steps if s.vm != "brokers")  # another VM's key
    forged = type(step)(**{**step.__dict__, "host_key": other.host_key})
    refused = runner.run(forged, {**step.inputs, "create": "true"})
    assert refused.rc == SSH_FAILED and "verification failed" in refused.stderr, refused


def _blob_as_vm(runner: SshRunner, step: Any, code: str) -> Any:
    """Python run on the host as the steps run (over SSH, under sudo), with this interpreter's SDK."""
    return runner.run(step, {**step.inputs, "create": f"sudo {sys.executable} -c {shlex.quote(code)}"})


def test_a_host_writes_to_the_programs_container_with_its_managed_identity_and_only_the_roles_allow(built: Any) -> None:
    """What collect does on a VM: ManagedIdentityCredential (the host's IMDS at 169.254.169.254),
    the account's own host name, TLS trusted as the host is told to; the gate lets each VM's
    identity write (the program assigns Contributor) and the operator only read."""
    r, hosts, runner = built
    url = hosts.store.url
    step = next(s for s in r.steps if s.name == "ipvs1-cloud-init")
    put = _blob_as_vm(runner, step, "from azure.identity import ManagedIdentityCredential; from azure.storage.blob import ContainerClient; "
                      f"c = ContainerClient.from_container_url({url!r}, credential=ManagedIdentityCredential()); "
                      "c.upload_blob('check/ipvs1.txt', b'written by ipvs1', overwrite=True); print(c.download_blob('check/ipvs1.txt').readall().decode())")
    assert put.rc == 0 and put.stdout.strip() == "written by ipvs1", put
    from infra.rehearse.dataplane import token

    operator = token(hosts.store.operator, "user")
    as_operator = ("from azure.core.credentials import AccessToken; from azure.storage.blob import ContainerClient; "
                   "from azure.core.exceptions import HttpResponseError\n"
                   f"class T:\n    def get_token(self, *a, **k): return AccessToken({operator!r}, 4070908800)\n"
                   f"c = ContainerClient.from_container_url({url!r}, credential=T())\n"
                   "print(c.download_blob('check/ipvs1.txt').readall().decode())\n"
                   "try:\n    c.upload_blob('check/operator.txt', b'x')\nexcept HttpResponseError as e:\n    print(e.error_code)\n")
    read = _blob_as_vm(runner, step, as_operator)
    assert read.rc == 0 and read.stdout.split() == ["written", "by", "ipvs1", "AuthorizationPermissionMismatch"], read
