"""Azure's data plane for the results, stood in: Azurite (Microsoft's Blob service emulator, from
npm) over HTTPS with OAuth, plus the two parts of Azure it does not emulate, each a small server:

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
  Azurite unchanged, its ``Host`` header included (Azurite takes the account from a
  production-style host name, ``<account>.blob.core.windows.net``).

Tokens are unsigned JWTs with the claims Azure's carry; Azurite's basic mode does not check the
signature ("Validate signature, skip in basic check", BlobTokenAuthenticator.js).

The tests use these in-process; the rehearsal runs them as processes inside its namespaces:

    python -m infra.rehearse.dataplane imds OID [ADDRESS]          (inside a host)
    python -m infra.rehearse.dataplane store CONFIG.json           (the storage endpoint)
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"  # scripts/setup.sh --dev puts it here
TENANT = "33333333-3333-3333-3333-333333333333"
IMDS_ADDRESS = "169.254.169.254"
API_VERSION = "2021-08-06"


def token(oid: str, kind: str = "app", lifetime_s: int = 10 * 365 * 86400, issued: int = 1_700_000_000) -> str:
    """A storage access token as Microsoft Entra issues them (Microsoft Learn, "Access token
    claims reference"): ``aud`` Azure Storage, ``iss`` the tenant's STS, ``oid`` the principal,
    ``idtyp`` app (service principal, managed identity) or user."""
    claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/", "iat": issued, "nbf": issued,
              "exp": issued + lifetime_s, "oid": oid, "tid": TENANT, "idtyp": kind, **({"scp": "user_impersonation"} if kind == "user" else {})}

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def oid_of(bearer: str | None) -> str | None:
    if not bearer or not bearer.startswith("Bearer "):
        return None
    try:
        body = bearer.split()[1].split(".")[1]
        return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["oid"])
    except (IndexError, ValueError, KeyError):
        return None


def certificate(where: Path, names: Sequence[str] = ("localhost",), ips: Sequence[str] = ("127.0.0.1",)) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``names`` and ``ips``: the Blob endpoint's
    HTTPS, which the clients are told to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(names) or list(ips))[0])])
    now = dt.datetime.now(dt.UTC)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, crl_sign=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    where.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azurite_binary() -> str | None:
    return str(AZURITE_BIN) if AZURITE_BIN.exists() else shutil.which("azurite-blob")


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

    oid: str
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
    upstream_host: str = "127.0.0.1"

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
                conn = http.client.HTTPSConnection(gate.upstream_host, gate.upstream, context=gate.ca, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}  # Host kept: it names the account
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                kept = {k: v for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "connection", "content-length")}
                conn.close()
                self.send(resp.status, data, kept)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any  # noqa: N815 - http.server's names

        return Handler


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None, address: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[int]:
    server = ThreadingHTTPServer(address, handler)
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
def azurite(cert: Path, key: Path, accounts: Sequence[str] = (), host: str = "127.0.0.1", start_s: float = 30.0) -> Iterator[int]:
    """Azurite's Blob service on a free port of ``host`` (HTTPS, ``--oauth basic``, in memory),
    with ``accounts`` beside its own (``AZURITE_ACCOUNTS``); bounded start, always stopped."""
    found = azurite_binary()
    if not found:
        raise RuntimeError(f"Azurite is not installed ({AZURITE_BIN} or azurite-blob on PATH): scripts/setup.sh --dev installs it")
    port = free_port()
    env = None
    if accounts:
        key_b64 = base64.b64encode(b"rehearsal-shared-key-never-used").decode()  # shared-key access is off: nobody signs with it
        env = {**os.environ, "AZURITE_ACCOUNTS": ";".join(f"{a}:{key_b64}" for a in accounts)}
    cmd = [found, "--blobHost", host, "--blobPort", str(port), "--oauth", "basic", "--cert", str(cert), "--key", str(key),
           "--inMemoryPersistence", "--silent", "--disableTelemetry", "--skipApiVersionCheck"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cert.parent, env=env)
    try:
        deadline = time.monotonic() + start_s
        while True:
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not start: {(proc.stderr.read() if proc.stderr else b'').decode()[-500:]}") from None
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_container(port: int, ca: ssl.SSLContext, path: str, host_header: str | None = None, address: str = "127.0.0.1") -> None:
    """``PUT <path>?restype=container`` straight to Azurite, as the ARM resource creates it."""
    conn = http.client.HTTPSConnection(address, port, context=ca, timeout=30)
    headers = {"Authorization": f"Bearer {token('77777777-7777-7777-7777-777777777777')}", "x-ms-version": API_VERSION, "Content-Length": "0"}
    if host_header:
        headers["Host"] = host_header
    conn.request("PUT", f"{path}?restype=container", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 201:
        raise RuntimeError(f"Azurite refused to create {path}: {resp.status} {body[:300]!r}")


def serve_store(config: dict[str, Any]) -> None:
    """The storage endpoint of the rehearsal, as one process: Azurite on loopback, the program's
    account and container created in it, and the RoleGate on ``address``:443 with the roles the
    program assigns; prints ``ready`` once it answers, then serves until killed."""
    cert, key = Path(config["cert"]), Path(config["key"])
    ca = ssl.create_default_context(cafile=str(cert))
    with azurite(cert, key, [config["account"]], start_s=float(config.get("start_s", 1800))) as port:
        host = f"{config['account']}.blob.core.windows.net"
        create_container(port, ca, f"/{config['container']}", host_header=host)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        gate = RoleGate(port, ca, roles=dict(config["roles"]))
        with serve(gate.handler(), tls, (config["address"], 443)):
            print("ready", flush=True)
            threading.Event().wait()


def main(argv: list[str]) -> int:
    if argv[:1] == ["imds"] and len(argv) in (2, 3):
        with serve(Imds(argv[1]).handler(), address=(argv[2] if len(argv) == 3 else IMDS_ADDRESS, 80)):
            threading.Event().wait()
    elif argv[:1] == ["store"] and len(argv) == 2:
        serve_store(json.loads(Path(argv[1]).read_text()))
    else:
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
