"""Campaign points on Azure, through Pulumi's Automation API.

A point is ``pulumi up`` on the campaign's stack with the point's settings and a new ``runId``
(the benchmark steps' trigger, so only the benchmark reruns while the VMs stay), then the run's
files are fetched from the results container into the point's directory, where it is a normal
run directory like a lab point's. The Automation API drives the ``pulumi`` CLI (``pulumi
version``, ``stack select``, ``config set-all --path``, ``up --yes --skip-preview``, ``stack
output --json``), so the same code is tested here with a stand-in ``pulumi`` on PATH.

The stack exports no credential for the results (the VMs upload with their managed identity):
each point's files are read with the user's own Azure CLI login, as ``fetchCommand`` does, through
azure-identity's ``AzureCliCredential`` (:mod:`workloads.storage.blob`; the program gives the user who
ran ``pulumi up`` Storage Blob Data Reader on the container). The token lives in this process
only: never on a command line, in a file or in the point's records.

Setting config rewrites ``Pulumi.<stack>.yaml``; the file is put back as it was when the campaign
ends, however it ends, so a campaign leaves the stack's settings as the user wrote them.

``pulumi`` is imported inside the functions: workloads/ stays importable without Pulumi.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workloads.base.errors import LabError
from workloads.campaign.run import PointFailed, PointRunner
from workloads.campaign.spec import Campaign, CampaignError, Point
from workloads.describe.config import ExperimentConfig
from workloads.rundir.records import summarize

REQUIRED_OUTPUTS = ("resultsUrl", "resultsPrefix", "runId")


def run_id_of(campaign: Campaign, point: Point) -> str:
    """A fresh ``runId`` per point within the 41 characters and alphabet the stack allows."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"{campaign.name}-{point.point_id}".lower()).strip("-")
    digest = hashlib.sha1(f"{campaign.name}/{point.point_id}".encode()).hexdigest()[:8]
    return (base[:32].rstrip("-") + "-" + digest)[:41]


def config_values(point: Point) -> dict[str, str]:
    """The point's overrides as ``mqttlab:`` config paths with CLI-style values."""
    out = {}
    for key, value in point.overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out[f"mqttlab:{key}"] = text
    return out


@contextmanager
def stack_file_kept(project_dir: Path, stack: str) -> Iterator[None]:
    path = project_dir / f"Pulumi.{stack}.yaml"
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    finally:
        if before is not None:
            path.write_bytes(before)


def azure_runner(campaign: Campaign) -> PointRunner:
    """Checks what an Azure point needs before the first one starts."""
    if shutil.which("pulumi") is None:
        raise CampaignError("place: azure needs the Pulumi CLI on PATH (https://www.pulumi.com/docs/install/)")
    try:
        from pulumi import automation as auto
    except ImportError:
        raise CampaignError("place: azure needs the Pulumi SDK: .venv/bin/pip install -e '.[infra]'") from None
    if shutil.which("az") is None:
        raise CampaignError("place: azure fetches each run with your Azure CLI login: az is not on PATH "
                            "(https://learn.microsoft.com/cli/azure/install-azure-cli, then az login)")

    def run(point: Point, cfg: ExperimentConfig, point_dir: Path) -> dict[str, Any]:
        from workloads.storage import blob as storage

        run_id = run_id_of(campaign, point)
        log = (point_dir / "pulumi.log").open("a")
        with stack_file_kept(campaign.project_dir, campaign.stack), log:
            try:
                stack = auto.select_stack(stack_name=campaign.stack, work_dir=str(campaign.project_dir))
                values = config_values(point) | {"mqttlab:runId": run_id}
                stack.set_all_config({k: auto.ConfigValue(value=v) for k, v in values.items()}, path=True)
                result = stack.up(on_output=lambda line: print(line, file=log, flush=True))
            except auto.errors.CommandError as exc:
                raise PointFailed(f"pulumi failed for run {run_id}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
        # secret outputs (a generated login key) stay in Pulumi's state, not in the campaign's files
        outputs = {k: v.value for k, v in result.outputs.items() if not v.secret}
        missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
        if missing:
            raise PointFailed(f"stack {campaign.stack} has no output {', '.join(missing)}: is it the mqttlab program?")
        if outputs["runId"] != run_id:
            raise PointFailed(f"stack output runId is {outputs['runId']!r}, expected {run_id!r}: the benchmark did not rerun")
        (point_dir / "outputs.json").write_text(json.dumps(outputs, indent=2, default=str))
        try:  # with the user's az login, asked at fetch time (azure-identity's AzureCliCredential)
            run_dir = storage.fetch(storage.container(outputs["resultsUrl"], storage.user_credential()), outputs["resultsPrefix"], point_dir / "runs")
        except (OSError, LabError) as exc:
            raise PointFailed(f"fetching {outputs['resultsPrefix']} failed: {exc}") from None
        s = summarize(run_dir)
        if s["partial"]:
            raise PointFailed(f"run {run_dir.name} is {s['status']}")
        return s | {"run_dir": str(run_dir), "balancer": {"kind": "ipvs", "note": ""}}

    return run
