"""Azure campaigns through Pulumi's Automation API, against a stand-in ``pulumi`` CLI on PATH
(tests/fake_pulumi.py), a stand-in ``az`` (tests/fake_az.py) and Azurite with Azure's RBAC in
front (tests/azurite.py): what the campaign asks Pulumi, in which order, that each point's files
are read with the user's own login, and that each point ends as a normal run directory."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azurite import USER_OID, USER_TOKEN, VM_TOKEN, Blob, blob_service
from tests.conftest import ROOT
from workloads.campaign.azure import azure_runner
from workloads.campaign.run import CampaignDir, execute_points
from workloads.campaign.spec import CampaignError, load_campaign


@pytest.fixture
def blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Blob]:
    """Azurite; the VMs' identity from its metadata stand-in, its certificate trusted through
    requests' CA bundle variable (the campaign builds its clients with the system's trust)."""
    with blob_service(tmp_path / "blob") as b:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", b.imds.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(b.ca_file))
        yield b


@pytest.fixture
def fake_pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blob: Blob) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, module in (("pulumi", "fake_pulumi"), ("az", "fake_az")):
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tests.{module} import main\nsys.exit(main(sys.argv[1:]))\n")
        exe.chmod(0o755)
    log = tmp_path / "pulumi-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(log))
    monkeypatch.setenv("FAKE_AZ_LOG", str(tmp_path / "az-calls.jsonl"))
    monkeypatch.setenv("FAKE_PULUMI_STATE", str(tmp_path / "pulumi-state.json"))
    monkeypatch.setenv("FAKE_PULUMI_BLOB_URL", blob.container_url)
    monkeypatch.delenv("PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK", raising=False)
    return log


def project(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    for f in ("Pulumi.yaml", "Pulumi.distributed.yaml"):
        shutil.copy(ROOT / f, d / f)
    return d


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_each_point_is_a_pulumi_up_with_its_settings_and_a_new_run_id(tmp_path: Path, fake_pulumi: Path) -> None:
    proj = project(tmp_path)
    before = (proj / "Pulumi.distributed.yaml").read_bytes()
    f = tmp_path / "az.yaml"
    f.write_text(f"name: az\nstack: distributed\nplace: azure\nprojectDir: {proj}\nrepetitions: 2\nseed: 3\n"
                 "set: {subscribers: 4, messages: 40, messagesPerPublisher: true}\n"
                 "factors:\n  intervalMs: [20, 5]\n  publishers: [4]\n")
    c = load_campaign(f, ROOT)
    cdir = CampaignDir(tmp_path / "camp")
    order = cdir.open(c, c.order())
    out = execute_points(cdir, c, order, azure_runner(c), progress=False)
    assert not out.failed and len(out.ran) == 4
    log = calls(fake_pulumi)
    ups = [a for a in log if "up" in a]
    assert len(ups) == 4
    assert all(a[:1] == ["--non-interactive"] and {"--yes", "--skip-preview"} <= set(a) and a[a.index("--stack") + 1] == "distributed"
               for a in ups)
    assert ["version"] in log  # the Automation API checks the CLI's version first
    sets = [a for a in log if a[1:3] == ["config", "set-all"]]
    assert len(sets) == 4 and all("--path" in a for a in sets)
    run_ids = []
    for a, p in zip(sets, order, strict=True):
        pairs = dict(x.split("=", 1) for x in a if "=" in x and x.startswith("mqttlab:"))
        assert pairs["mqttlab:scenario.intervalMs"] == str(p.levels["intervalMs"])
        assert pairs["mqttlab:scenario.publishers"] == "4" and pairs["mqttlab:scenario.messagesPerPublisher"] == "true"
        run_ids.append(pairs["mqttlab:runId"])
    assert len(set(run_ids)) == 4  # a new runId for every point
    # the order of operations for one point: select, set, up, outputs
    first = [" ".join(a[1:3]) for a in log if a != ["version"]][:4]
    assert first == ["stack select", "config set-all", "up --yes", "stack output"]
    # each point is a normal run directory, fetched from the container
    for r in cdir.results():
        run = Path(r["run_dir"])
        assert run.parent == cdir.point_dir(r["point_id"]) / "runs" and json.loads((run / "manifest.json").read_text())["status"] == "complete"
        assert r["expected"] == 40 * 4 * 4
    fast = [r for r in cdir.results() if r["levels"]["intervalMs"] == 5]
    assert all(r["loss_pct"] > 0 for r in fast) and all(r["loss_pct"] == 0 for r in cdir.results() if r not in fast)
    assert (proj / "Pulumi.distributed.yaml").read_bytes() == before  # the stack's settings are as the user wrote them
    outputs = json.loads((cdir.point_dir(order[0].point_id) / "outputs.json").read_text())
    assert outputs["resultsPrefix"] == f"distributed/{run_ids[0]}/" and "sshPrivateKey" not in outputs  # a secret output stays in Pulumi
    # every point read its files with a storage token of the user's az login, asked for at fetch time
    az = calls(fake_pulumi.parent / "az-calls.jsonl")
    assert len(az) >= 4 and all(a == ["account", "get-access-token", "--output", "json", "--resource", "https://storage.azure.com"] for a in az)
    kept = " ".join(p.read_text(errors="replace") for p in (tmp_path / "camp").rglob("*") if p.is_file())
    assert USER_TOKEN not in kept and VM_TOKEN not in kept and "PRIVATE KEY" not in kept  # no credential in the campaign's files


def test_without_an_az_login_the_point_fails_naming_it_and_nothing_is_fetched(tmp_path: Path, fake_pulumi: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AZ_LOGGED_OUT", "1")
    proj = project(tmp_path)
    f = tmp_path / "az.yaml"
    f.write_text(f"name: az\nstack: distributed\nplace: azure\nprojectDir: {proj}\nset: {{messages: 240}}\nfactors: {{qos: [1]}}\n")
    c = load_campaign(f, ROOT)
    cdir = CampaignDir(tmp_path / "camp")
    out = execute_points(cdir, c, cdir.open(c, c.order()), azure_runner(c), progress=False)
    (why,) = out.failed.values()
    assert why.startswith("fetching distributed/") and "az login" in why and "\n" not in why and not out.ran
    assert not list((tmp_path / "camp").rglob("manifest.json"))


def test_a_login_the_store_refuses_fails_the_point_with_the_status(tmp_path: Path, fake_pulumi: Path, blob: Blob) -> None:
    """The user's login reads; a login without the reader role on the container is refused."""
    blob.gate.roles.pop(USER_OID)
    proj = project(tmp_path)
    f = tmp_path / "az.yaml"
    f.write_text(f"name: az\nstack: distributed\nplace: azure\nprojectDir: {proj}\nset: {{messages: 240}}\nfactors: {{qos: [1]}}\n")
    c = load_campaign(f, ROOT)
    cdir = CampaignDir(tmp_path / "camp")
    out = execute_points(cdir, c, cdir.open(c, c.order()), azure_runner(c), progress=False)
    (why,) = out.failed.values()
    assert why.startswith("fetching distributed/") and "403 AuthorizationPermissionMismatch" in why


def test_a_stack_pulumi_does_not_know_fails_the_point_with_pulumis_message(tmp_path: Path, fake_pulumi: Path) -> None:
    proj = project(tmp_path)
    shutil.copy(proj / "Pulumi.distributed.yaml", proj / "Pulumi.staging.yaml")
    f = tmp_path / "az.yaml"
    f.write_text(f"name: az\nstack: staging\nplace: azure\nprojectDir: {proj}\nset: {{messages: 240}}\nfactors: {{qos: [1]}}\n")
    c = load_campaign(f, ROOT)
    cdir = CampaignDir(tmp_path / "camp")
    out = execute_points(cdir, c, cdir.open(c, c.order()), azure_runner(c), progress=False)
    assert list(out.failed.values())[0].endswith("no stack named 'staging' found")
    assert not [a for a in calls(fake_pulumi) if "up" in a]


def test_no_azure_cli_is_refused_before_any_point(tmp_path: Path, fake_pulumi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin" / "az").unlink()
    proj = project(tmp_path)
    f = tmp_path / "az.yaml"
    f.write_text(f"name: az\nstack: distributed\nplace: azure\nprojectDir: {proj}\nset: {{messages: 240}}\nfactors: {{qos: [1]}}\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(CampaignError, match="az is not on PATH"):
        azure_runner(load_campaign(f, ROOT))


def test_no_pulumi_cli_is_refused_before_any_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = project(tmp_path)
    f = tmp_path / "az.yaml"
    f.write_text(f"name: az\nstack: distributed\nplace: azure\nprojectDir: {proj}\nset: {{messages: 240}}\nfactors: {{qos: [1]}}\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CampaignError, match="place: azure needs the Pulumi CLI on PATH"):
        azure_runner(load_campaign(f, ROOT))
