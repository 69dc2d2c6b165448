"""Blob storage for the tests: Azurite (Microsoft's Blob service emulator, from npm) over HTTPS
with OAuth, plus the two parts of Azure it does not emulate, each a small loopback server:

- the instance metadata service (IMDS) that gives a VM its managed identity's token. azure-identity
  sends its IMDS request to ``$AZURE_POD_IDENTITY_AUTHORITY_HOST`` when that is set, else to
  169.254.169.254 (azure/identity/_credentials/imds.py ``_get_request``); the stand-in answers
  ``GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`` with the header
  ``Metadata: true`` as IMDS does, and refuses a request without them;
- Azure RBAC on the data plane: Azurite's ``--oauth basic`` checks a bearer token's issuer,
  audience and lifetime, then allows everything. ``RoleGate`` sits in front of it and answers 403
  ``AuthorizationPermissionMismatch`` (the code Azure Storage gives a token whose principal lacks
  the data role) to a principal without a role, to a reader that writes, and to a principal whose
  assignment is still "propagating" for a given number of requests; everything else goes on to
  Azurite unchanged.

Tokens are unsigned JWTs with the claims Azure's carry; Azurite's basic mode does not check the
signature ("Validate signature, skip in basic check", BlobTokenAuthenticator.js).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import ROOT

ACCOUNT = "devstoreaccount1"  # Azurite's account; its URLs are path-style: https://host:port/<account>/<container>
TENANT = "33333333-3333-3333-3333-333333333333"
VM_OID = "55555555-5555-5555-5555-555555555555"  # a VM's system-assigned identity
USER_OID = "22222222-2222-2222-2222-222222222222"  # the operator who ran pulumi up
AZURITE_BIN = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"  # scripts/setup.sh --dev puts it here


def token(oid: str, kind: str = "app", lifetime_s: int = 10 * 365 * 86400, issued: int = 1_700_000_000) -> str:
    """A storage access token as Microsoft Entra issues them (Microsoft Learn, "Access token
    claims reference"): ``aud`` Azure Storage, ``iss`` the tenant's STS, ``oid`` the principal,
    ``idtyp`` app (service principal, managed identity) or user."""
    claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/", "iat": issued, "nbf": issued,
              "exp": issued + lifetime_s, "oid": oid, "tid": TENANT, "idtyp": kind, **({"scp": "user_impersonation"} if kind == "user" else {})}

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


VM_TOKEN = token(VM_OID)
USER_TOKEN = token(USER_OID, "user")


def oid_of(bearer: str | None) -> str | None:
    if not bearer or not bearer.startswith("Bearer "):
        return None
    try:
        body = bearer.split()[1].split(".")[1]
        return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["oid"])
    except (IndexError, ValueError, KeyError):
        return None


def self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), for Azurite's HTTPS and for the SDK to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, crl_sign=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azurite_binary() -> str:
    found = str(AZURITE_BIN) if AZURITE_BIN.exists() else shutil.which("azurite-blob")
    if not found:
        raise RuntimeError(f"Azurite is not installed ({AZURITE_BIN} or azurite-blob on PATH): scripts/setup.sh --dev installs it")
    return found


class _Quiet(BaseHTTPRequestHandler):
    # keep-alive, as Azure's endpoints do: a client's pooled connection is never found closed
    # under it (the SDK would retry that after its 15 s backoff)
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Imds:
    """The instance metadata service of one VM whose system-assigned identity is ``oid``."""

    oid: str = VM_OID
    requests: int = 0
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        imds = self

        class Handler(_Quiet):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                imds.requests += 1
                url = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(url.query)
                if url.path != "/metadata/identity/oauth2/token":
                    return self.send(404, b'{"error": "not_found"}')
                if self.headers.get("Metadata") != "true":
                    return self.send(400, b'{"error": "invalid_request", "error_description": "Required metadata header not specified"}')
                if q.get("api-version") != ["2018-02-01"] or q.get("resource", [""])[0].rstrip("/") != "https://storage.azure.com":
                    return self.send(400, b'{"error": "invalid_resource", "error_description": "api-version 2018-02-01 and the storage resource"}')
                exp = int(time.time()) + 86400
                body = {"access_token": token(imds.oid), "client_id": "66666666-6666-6666-6666-666666666666", "expires_in": "86399",
                        "expires_on": str(exp), "ext_expires_in": "86399", "not_before": str(exp - 86400), "resource": "https://storage.azure.com",
                        "token_type": "Bearer"}
                self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        return Handler


@dataclass
class RoleGate:
    """Azure RBAC for the container, in front of Azurite. ``roles``: principal id -> "reader" or
    "contributor" (Storage Blob Data Reader / Contributor); ``propagating``: principal id ->
    how many more requests are refused before its assignment takes effect."""

    upstream: int
    ca: ssl.SSLContext
    roles: dict[str, str] = field(default_factory=dict)
    propagating: dict[str, int] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (principal, method)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Authorization scheme)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        gate = self

        class Handler(_Quiet):
            def _deny(self, oid: str) -> None:
                gate.refused.append((oid, self.command))
                body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is '
                        b'not authorized to perform this operation using this permission.</Message></Error>')
                self.send(403, body, {"Content-Type": "application/xml", "x-ms-error-code": "AuthorizationPermissionMismatch"})

            def _any(self) -> None:
                auth = self.headers.get("Authorization")
                gate.requests.append((self.command, self.path, (auth or "").split(" ")[0]))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                oid = oid_of(auth)
                if oid is not None:
                    if gate.propagating.get(oid, 0) > 0:
                        gate.propagating[oid] -= 1
                        return self._deny(oid)
                    role = gate.roles.get(oid)
                    if role is None or (role == "reader" and self.command not in ("GET", "HEAD")):
                        return self._deny(oid)
                conn = http.client.HTTPSConnection("127.0.0.1", gate.upstream, context=gate.ca, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                kept = {k: v for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "connection", "content-length")}
                conn.close()
                self.send(resp.status, data, kept)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any  # noqa: N815 - http.server's names

        return Handler


@dataclass
class Blob:
    """A running Blob service: the container URL the SDK is given, the CA file it must trust,
    the gate (RBAC) and the VM's metadata service."""

    container_url: str
    ca_file: Path
    gate: RoleGate
    imds: Imds


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def blob_service(where: Path, container: str = "results") -> Iterator[Blob]:
    """Azurite on a free port (HTTPS, ``--oauth basic``, in memory), the container created with
    a contributor's token, the RoleGate in front of it (the VM may write, the operator may read)
    and the VM's IMDS. Stops everything afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(where)
    port = free_port()
    cmd = [azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--oauth", "basic", "--cert", str(cert), "--key", str(key),
           "--inMemoryPersistence", "--silent", "--disableTelemetry", "--skipApiVersionCheck"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=where)
    try:
        ca = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not start: {(proc.stderr.read() if proc.stderr else b'').decode()[-500:]}") from None
                time.sleep(0.1)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ca, timeout=30)
        conn.request("PUT", f"/{ACCOUNT}/{container}?restype=container",
                     headers={"Authorization": f"Bearer {token('77777777-7777-7777-7777-777777777777')}", "x-ms-version": "2021-08-06",
                              "Content-Length": "0"})
        resp = conn.getresponse()
        assert resp.status == 201, (resp.status, resp.read())
        conn.close()
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(cert, key)
        gate = RoleGate(port, ca, roles={VM_OID: "contributor", USER_OID: "reader"})
        imds = Imds()
        with serve(gate.handler(), server_tls) as gate_port, serve(imds.handler()) as imds_port:
            imds.url = f"http://127.0.0.1:{imds_port}"
            yield Blob(f"https://127.0.0.1:{gate_port}/{ACCOUNT}/{container}", cert, gate, imds)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
