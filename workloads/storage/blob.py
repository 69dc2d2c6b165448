"""The results container in Azure Blob storage, through Azure's own SDK.

Nobody holds a key or a SAS: the storage account has shared-key access off. A VM authenticates
as its system-assigned managed identity (``ManagedIdentityCredential``: the instance metadata
service, its retries and token refresh), holding Storage Blob Data Contributor on the container;
the user reads with their ``az login`` (``AzureCliCredential``), holding Storage Blob Data Reader
on the container. ``azure-storage-blob`` does the requests, with Azure's retry and throttling
policy. Tokens live in the SDK's memory only: never printed, never on a command line.

One thing the SDK does not retry is a 403 ``AuthorizationPermissionMismatch`` right after
``pulumi up``: the role assignment is still propagating (Azure documents up to 10 minutes), so
writes retry that for a bounded time here.

The SDK is imported inside the functions: the rest of ``workloads`` (the local lab) runs without it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from workloads.base.errors import LabError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import ContainerClient

T = TypeVar("T")
# What Azure Storage answers a principal whose data role is missing or not yet effective
NOT_YET_AUTHORIZED = ("AuthorizationPermissionMismatch", "AuthorizationFailure")
STORAGE_SCOPE = "https://storage.azure.com/.default"  # what Azure Storage's OAuth tokens are for
PROPAGATION_S = 600  # Microsoft Learn, "Troubleshoot Azure RBAC": role assignments take up to 10 minutes


def vm_credential() -> TokenCredential:
    """The VM's system-assigned identity, from the instance metadata service."""
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential()


def user_credential() -> TokenCredential:
    """The user's ``az login``."""
    from azure.identity import AzureCliCredential

    return AzureCliCredential(process_timeout=60)


def container(url: str, credential: TokenCredential, ca_file: str | None = None) -> ContainerClient:
    """The container at ``url`` (https://<account>.blob.core.windows.net/<container>), once the
    credential has given a token: the storage pipeline retries a failing credential like a
    failing request (minutes of backoff for a missing ``az login``), so it is asked once here
    first and its refusal is one line at once. The SDK's policy then keeps and refreshes the
    token. ``ca_file``: a CA bundle to trust instead of the system's (an emulator, a
    TLS-inspecting proxy)."""
    try:
        from azure.storage.blob import ContainerClient
    except ImportError:
        raise LabError("the results store needs azure-storage-blob and azure-identity: pip install -e '.[azure]'") from None
    # azure-identity also logs each refusal as a warning; the LabError below says it once
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    _azure("no storage token", lambda: credential.get_token(STORAGE_SCOPE))
    return ContainerClient.from_container_url(url, credential=credential, connection_verify=ca_file or True)


def _said(what: str, exc: Exception) -> LabError:
    """One line for the user: what failed, and what Azure or the credential said."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # the SDK's StorageErrorCode, as Azure spells it
    status = getattr(exc, "status_code", None)
    first = (str(getattr(exc, "message", "") or exc).strip().splitlines() or [type(exc).__name__])[0]
    return LabError(f"{what}: {' '.join(str(x) for x in (status, code) if x) or type(exc).__name__}: {first}"[:400])


def _azure(what: str, call: Callable[[], T], wait_forbidden_s: float = 0, pause_s: float = 10) -> T:
    """``call``, with Azure's failures turned into one line; a 403 for a role not yet
    effective is retried for up to ``wait_forbidden_s``."""
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

    deadline = time.monotonic() + wait_forbidden_s
    while True:
        try:
            return call()
        except HttpResponseError as exc:
            if exc.status_code == 403 and getattr(exc, "error_code", None) in NOT_YET_AUTHORIZED and time.monotonic() + pause_s <= deadline:
                time.sleep(pause_s)
                continue
            raise _said(what, exc) from None
        except (ClientAuthenticationError, AzureError) as exc:  # the credential, or the connection
            raise _said(what, exc) from None


def blob_name(rel: str, host: str | None) -> str:
    """Where a run-directory file goes in the shared prefix. ``logs/`` holds per-process files
    with the same names on every host (bench-sub.log, ...), so each host's logs get their own
    folder; every other path already names its host."""
    if host and rel.startswith("logs/"):
        return f"logs/{host}/{rel[len('logs/'):]}"
    return rel


def put(c: ContainerClient, name: str, data: bytes, wait_forbidden_s: float = 0, pause_s: float = 10) -> None:
    _azure(f"upload of {name}", lambda: c.upload_blob(name, data, overwrite=True), wait_forbidden_s, pause_s)


def upload_dir(c: ContainerClient, rd: Path, prefix: str, skip_manifest: bool, host: str | None = None,
               wait_forbidden_s: float = 0, pause_s: float = 10) -> int:
    """Every file of the run directory but pid files and sockets (and the manifest, which only
    the first client host writes), under ``prefix``. The number uploaded."""
    n = 0
    for path in sorted(p for p in rd.rglob("*") if p.is_file()):
        rel = path.relative_to(rd).as_posix()
        if rel.startswith("pids/") or (skip_manifest and rel == "manifest.json") or path.suffix == ".sock":
            continue
        put(c, prefix + blob_name(rel, host), path.read_bytes(), wait_forbidden_s, pause_s)
        n += 1
    return n


def names(c: ContainerClient, prefix: str) -> list[str]:
    return _azure(f"listing {prefix}", lambda: list(c.list_blob_names(name_starts_with=prefix)))


def get(c: ContainerClient, name: str) -> bytes:
    return _azure(f"download of {name}", lambda: bytes(c.download_blob(name).readall()))


def fetch(c: ContainerClient, prefix: str, out: Path) -> Path:
    """A run's files into ``out/<prefix with / as ->``, as they were on the hosts."""
    found = names(c, prefix)
    if not found:
        raise LabError(f"no results under {c.url}/{prefix}")
    dest = out / prefix.strip("/").replace("/", "-")
    for name in found:
        target = dest / name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(get(c, name))
    return dest


def failed_steps(c: ContainerClient, prefix: str) -> list[dict[str, Any]]:
    """Every step outcome the hosts uploaded that is not "ok"."""
    bad = []
    for name in names(c, prefix + "status/"):
        doc = json.loads(get(c, name))
        if doc.get("status") != "ok":
            bad.append(doc)
    return bad
