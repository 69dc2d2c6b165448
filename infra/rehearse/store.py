"""The results store as the rehearsal stands it in, read from the program: its storage account
and container (Azurite, under the account's production host name), the role assignments on the
container (the RoleGate's roles) and each VM's system-assigned identity (its IMDS's token).

What a host sees of it, each a stand-in at the narrowest point (said in the log):
- ``<account>.blob.core.windows.net`` resolves, in /etc/hosts, to the store's address on the
  admin switch (Azure's public endpoint);
- its certificate is the rehearsal's own: ``REQUESTS_CA_BUNDLE`` (the system's CAs and that one),
  set in /etc/environment (sshd's pam_env) and kept by sudo, is what the SDK trusts;
- 169.254.169.254 answers for the VM's identity only, on the host's loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.components import BLOB_DATA_CONTRIBUTOR, BLOB_DATA_READER
from infra.rehearse.dataplane import IMDS_ADDRESS
from infra.rehearse.program import Rehearsed

ADDRESS = "198.19.255.3"  # the account's endpoint, on the admin switch beside the controller
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")
STAND_INS = (
    f"results store: Azurite serves the program's account and container at {ADDRESS}, its host name in each host's /etc/hosts",
    "RBAC: a gate in front of Azurite allows what the program's role assignments on the container allow, nothing else",
    "TLS: the store's certificate is the rehearsal's; the hosts trust it through REQUESTS_CA_BUNDLE (/etc/environment, kept by sudo)",
    f"managed identity: each host's {IMDS_ADDRESS} (on its loopback) gives the token of its VM's system-assigned identity",
    "operator login: an 'az' that answers only 'az account get-access-token' with the operator's token stands in for az login",
)
ROLES = {BLOB_DATA_CONTRIBUTOR: "contributor", BLOB_DATA_READER: "reader"}


@dataclass(frozen=True)
class StoreSpec:
    account: str
    container: str
    url: str  # resultsUrl
    prefix: str  # resultsPrefix
    roles: dict[str, str]  # principal id -> reader | contributor, on the container
    principals: dict[str, str]  # VM -> its identity's principal id
    operator: str  # the operator's object id

    @property
    def host(self) -> str:
        return f"{self.account}.blob.core.windows.net"


def spec(r: Rehearsed) -> StoreSpec:
    p = r.program
    account = p.of("azure-native:storage:StorageAccount")[0].outputs["name"]
    blob_container = p.of("azure-native:storage:BlobContainer")[0]
    container = blob_container.inputs["containerName"]
    roles: dict[str, str] = {}
    for ra in p.of("azure-native:authorization:RoleAssignment"):
        role = ROLES.get(str(ra.inputs["roleDefinitionId"]).rsplit("/", 1)[-1])
        # on the container: its id ends with its name (ARM's .../blobServices/default/containers/NAME, the mocks' .../NAME)
        if role is not None and str(ra.inputs.get("scope", "")).rsplit("/", 1)[-1] == container:
            roles[ra.inputs["principalId"]] = role
    principals = {vm.name.removesuffix("-vm"): vm.outputs["identity"]["principalId"] for vm in p.of("azure-native:compute:VirtualMachine")}
    operator = next(ra.inputs["principalId"] for ra in p.of("azure-native:authorization:RoleAssignment") if ra.name.endswith("-reader-operator"))
    return StoreSpec(account, container, str(p.outputs["resultsUrl"]), str(p.outputs["resultsPrefix"]), roles, principals, operator)


def ca_bundle(cert: Path) -> str:
    """The system's CAs and the store's certificate: what a host's SDK is told to trust."""
    system = SYSTEM_CAS.read_text() if SYSTEM_CAS.is_file() else ""
    return system + cert.read_text()


def fake_az(where: Path, operator_token: str) -> Path:
    """A folder with an ``az`` that answers ``az account get-access-token`` (what azure-identity's
    AzureCliCredential runs) with the operator's token, and refuses everything else."""
    where.mkdir(parents=True, exist_ok=True)
    az = where / "az"
    az.write_text(f"""#!/bin/sh
# mqttlab rehearsal: the operator's az login stood in
if [ "$1 $2" != "account get-access-token" ]; then echo "ERROR: the rehearsal's az answers only account get-access-token" >&2; exit 2; fi
echo '{{"accessToken": "{operator_token}", "expiresOn": "2099-01-01 00:00:00.000000", "expires_on": 4070908800, "tokenType": "Bearer"}}'
""")
    az.chmod(0o755)
    return where
