"""Blob storage for the tests: Azurite over HTTPS with OAuth, Azure RBAC and a VM's instance
metadata service in front of it, in-process (the parts are :mod:`infra.rehearse.dataplane`'s,
which the rehearsal runs as processes in its namespaces)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.rehearse.dataplane import TENANT, Imds, RoleGate, azurite, certificate, create_container, serve, token

__all__ = ["ACCOUNT", "TENANT", "USER_OID", "USER_TOKEN", "VM_OID", "VM_TOKEN", "Blob", "blob_service", "token"]

ACCOUNT = "devstoreaccount1"  # Azurite's account; its URLs are path-style: https://host:port/<account>/<container>
VM_OID = "55555555-5555-5555-5555-555555555555"  # a VM's system-assigned identity
USER_OID = "22222222-2222-2222-2222-222222222222"  # the operator who ran pulumi up
VM_TOKEN = token(VM_OID)
USER_TOKEN = token(USER_OID, "user")


@dataclass
class Blob:
    """A running Blob service: the container URL the SDK is given, the CA file it must trust,
    the gate (RBAC) and the VM's metadata service."""

    container_url: str
    ca_file: Path
    gate: RoleGate
    imds: Imds


@contextmanager
def blob_service(where: Path, container: str = "results") -> Iterator[Blob]:
    """Azurite on a free port, the container created with a contributor's token, the RoleGate
    in front of it (the VM may write, the operator may read) and the VM's IMDS. Stops
    everything afterwards."""
    cert, key = certificate(where)
    with azurite(cert, key) as port:
        ca = ssl.create_default_context(cafile=str(cert))
        create_container(port, ca, f"/{ACCOUNT}/{container}")
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(cert, key)
        gate = RoleGate(port, ca, roles={VM_OID: "contributor", USER_OID: "reader"})
        imds = Imds(VM_OID)
        with serve(gate.handler(), server_tls) as gate_port, serve(imds.handler()) as imds_port:
            imds.url = f"http://127.0.0.1:{imds_port}"
            yield Blob(f"https://127.0.0.1:{gate_port}/{ACCOUNT}/{container}", cert, gate, imds)
