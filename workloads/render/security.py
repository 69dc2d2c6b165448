"""Secured brokers: credentials, certificates, password and ACL files, client settings.

Pure renderers of a plan plus one run's secret material (:class:`Material`). The material is made
per run (random passwords, fresh keys; certificate names and addresses from the plan) and only
ever written into the run's or host's files, private ones mode 0600 (see :func:`is_secret`);
it is never part of the plan, the manifest, a log or a command line.

Who may do what (``acl`` per broker, no anonymous user anywhere):

- ``bench-pub`` publishes to the scenario's topics, nothing else;
- ``bench-sub`` subscribes to them, nothing else;
- each bridge (``bridge-<hub>-<remote>``) carries the scenario's topics both ways, and its own
  connection-state notification;
- ``monitor`` reads ``$SYS``.

Modes: ``password`` (plaintext, username and password), ``tls`` (the same over TLS on 8883,
clients verify the broker), ``mtls`` (clients and bridges present a certificate from the
project's CA; its CN is the user the ACL applies to).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workloads.describe.config import ExperimentConfig, SecurityConfig
from workloads.describe.plan import BridgeLink, Broker, Plan

PUB = "bench-pub"
SUB = "bench-sub"
MONITOR = "monitor"
ROLE_USERS = {"pub": PUB, "sub": SUB, "monitor": MONITOR}
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes ($7$101$...)
CLIENT_FILE = "security/client.json"  # per client host, and brokers/ for the monitors
CONTAINER_DIR = "/mosquitto/config"  # where the compose file mounts each broker's folder


def bridge_user(link: BridgeLink) -> str:
    return f"bridge-{link.local}-{link.remote}"


def is_secret(path: str, text: str = "") -> bool:
    """Files that hold a private key or a password: written 0600, never printed. A hub's
    mosquitto.conf is one (Mosquitto reads a bridge's password only from there)."""
    return path.endswith((".key", "/passwd", CLIENT_FILE)) or "\nremote_password " in text


# --------------------------------------------------------------------------- material


@dataclass(frozen=True)
class KeyPair:
    cert: str  # PEM
    key: str  # PEM, PKCS#8, unencrypted (only ever in a 0600 file)


@dataclass(frozen=True)
class Material:
    """One run's secrets. ``ca_key`` signs and is then dropped: no file holds it."""

    passwords: dict[str, str]
    ca_cert: str = ""
    servers: dict[str, KeyPair] = field(default_factory=dict)  # broker name -> server certificate
    clients: dict[str, KeyPair] = field(default_factory=dict)  # user -> client certificate (mtls)


def users(plan: Plan) -> list[str]:
    return [PUB, SUB, MONITOR, *(bridge_user(link) for link in plan.bridges)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqttlab"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class CertificateAuthority:
    """A throw-away CA: P-256 keys (what pulumi-tls makes on Azure too), SHA-256 signatures."""

    cn: str
    days: int
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            self._builder(_name(self.cn), self.key.public_key(), self.now, self.days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, public: Any, start: datetime.datetime, days: int) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(_name(self.cn))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(minutes=5))
            .not_valid_after(start + datetime.timedelta(days=days))
        )

    def issue(self, cn: str, server: bool, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              start: datetime.datetime | None = None, days: int | None = None) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (
            self._builder(_name(cn), key.public_key(), start or self.now, days if days is not None else self.days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if dns or ips:
            alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return KeyPair(_pem_cert(b.sign(self.key, hashes.SHA256())), _pem_key(key))


def server_names(plan: Plan, broker: Broker) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A broker's certificate names: its own address, and every entry point clients dial
    (the balancers forward TLS untouched, so the client checks the VIP it connected to)."""
    ips = [broker.address, *sorted({c.target.rsplit(":", 1)[0] for c in plan.clients})]
    return (broker.name, f"{broker.name}.mqttlab"), tuple(dict.fromkeys(ips))


def generate(plan: Plan, sec: SecurityConfig, ca: CertificateAuthority | None = None) -> Material:
    """Fresh secrets for one run of ``plan``; nothing here is derived from anything guessable.
    ``ca`` lets a caller keep the CA to issue more (the refusal tests' expired certificate)."""
    passwords = {u: secrets.token_urlsafe(24) for u in users(plan)}
    if not sec.tls:
        return Material(passwords)
    ca = ca or CertificateAuthority(f"mqttlab {plan.stack} CA", sec.cert_days)
    servers = {b.name: ca.issue(b.name, True, *server_names(plan, b)) for b in plan.brokers}
    clients = {u: ca.issue(u, False) for u in users(plan)} if sec.mode == "mtls" else {}
    return Material(passwords, _pem_cert(ca.cert), servers, clients)


# --------------------------------------------------------------------------- files


def password_line(user: str, password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``user:$7$iterations$salt$hash``: PBKDF2-HMAC-SHA512 as Mosquitto 2.0's mosquitto_passwd writes it."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_file(material: Material) -> str:
    return "".join(password_line(u, p) + "\n" for u, p in material.passwords.items())


def topic_filters(cfg: ExperimentConfig) -> list[str]:
    """The scenario's topics as ACL patterns: exactly the one topic, or its per-publisher level."""
    sc = cfg.scenario
    return [sc.topic] if sc.topic_layout == "shared" else [f"{sc.topic}/+"]


def acl_file(plan: Plan, cfg: ExperimentConfig) -> str:
    topics = topic_filters(cfg)
    lines = ["# Rendered by mqttlab: who may do what. No pattern applies to anonymous clients (refused anyway).", ""]
    # Mosquitto 2.0 checks SUBSCRIBE against "read" and delivery against "read" too;
    # "deny" stops the publisher receiving its own topic if it subscribed (it never does).
    lines += [f"user {PUB}", *(f"topic write {t}" for t in topics), ""]
    lines += [f"user {SUB}", *(f"topic read {t}" for t in topics), ""]
    lines += [f"user {MONITOR}", "topic read $SYS/#", ""]
    for link in plan.bridges:
        lines += [f"user {bridge_user(link)}", *(f"topic readwrite {t}" for t in topics),
                  f"topic write $SYS/broker/connection/{link.name}/state", ""]
    return "\n".join(lines)


LOCAL_USER = "root"


def listener_lines(cfg: ExperimentConfig, broker: Broker, root: str) -> list[str]:
    """What follows ``listener`` in mosquitto.conf: who may connect and how.

    Mosquitto started as root drops to its ``mosquitto`` user before it reads the password and
    ACL files. In a container it already is that user and owns its folder; on the lab the files
    stay root's and private (0600 in a root-only run directory), so a broker rendered for a
    local folder keeps running as the root that started it (``user root``).
    """
    sec = cfg.security
    d = f"{root}/{broker.name}"
    lines = [f"user {LOCAL_USER}"] if root != CONTAINER_DIR else []
    lines += ["allow_anonymous false", f"password_file {d}/passwd", f"acl_file {d}/acl"]
    if sec.tls:
        lines += [f"cafile {d}/ca.crt", f"certfile {d}/server.crt", f"keyfile {d}/server.key", f"tls_version {sec.tls_version}"]
        if sec.ciphers:
            lines.append(f"ciphers {sec.ciphers}")
        if sec.ciphers_tls13:
            lines.append(f"ciphers_tls1.3 {sec.ciphers_tls13}")
    if sec.mode == "mtls":
        lines += ["require_certificate true", "use_identity_as_username true"]
    return lines


def bridge_topics(cfg: ExperimentConfig, qos: int) -> list[str]:
    return [f"topic {t} both {qos}" for t in topic_filters(cfg)]


def bridge_lines(cfg: ExperimentConfig, link: BridgeLink, root: str, material: Material) -> list[str]:
    """How the hub authenticates to a remote broker (and checks it, under TLS)."""
    sec = cfg.security
    d = f"{root}/{link.local}"
    user = bridge_user(link)
    lines = [f"remote_username {user}", f"remote_password {material.passwords[user]}"]
    if sec.tls:
        lines += [f"bridge_cafile {d}/ca.crt", f"bridge_tls_version {sec.tls_version}", "bridge_insecure false"]
    if sec.mode == "mtls":
        lines += [f"bridge_certfile {d}/{user}.crt", f"bridge_keyfile {d}/{user}.key"]
    return lines


def client_settings(cfg: ExperimentConfig, material: Material, roles: tuple[str, ...]) -> str:
    """A client host's (or the monitors') JSON: per role the user, its password and files,
    relative to the JSON's folder."""
    sec = cfg.security
    doc: dict[str, Any] = {"mode": sec.mode, "tlsVersion": sec.tls_version, "ciphers": sec.ciphers,
                           "ca": "ca.crt" if sec.tls else None, "roles": {}}
    for role in roles:
        user = ROLE_USERS[role]
        entry: dict[str, Any] = {"username": user, "password": material.passwords[user]}
        if sec.mode == "mtls":
            entry |= {"cert": f"{user}.crt", "key": f"{user}.key"}
        doc["roles"][role] = entry
    return json.dumps(doc, indent=2) + "\n"


def security_files(plan: Plan, cfg: ExperimentConfig, material: Material) -> dict[str, str]:
    """Every secured file of every host, keyed like :func:`workloads.render.files.render_files`."""
    files: dict[str, str] = {}
    if not cfg.security.enabled:
        return files
    tls, mtls = cfg.security.tls, cfg.security.mode == "mtls"
    for b in plan.brokers:
        d = f"brokers/{b.name}"
        files[f"{d}/passwd"] = password_file(material)
        files[f"{d}/acl"] = acl_file(plan, cfg)
        if tls:
            files[f"{d}/ca.crt"] = material.ca_cert
            files[f"{d}/server.crt"] = material.servers[b.name].cert
            files[f"{d}/server.key"] = material.servers[b.name].key
        for link in plan.bridges:
            if mtls and link.local == b.name:
                pair = material.clients[bridge_user(link)]
                files[f"{d}/{bridge_user(link)}.crt"] = pair.cert
                files[f"{d}/{bridge_user(link)}.key"] = pair.key
    hosts: list[tuple[str, tuple[str, ...]]] = [(c.host, ("pub", "sub")) for c in plan.clients] + [("brokers", ("monitor",))]
    for host, roles in hosts:
        d = f"{host}/security"
        files[f"{d}/client.json"] = client_settings(cfg, material, roles)
        if tls:
            files[f"{d}/ca.crt"] = material.ca_cert
        if mtls:
            for role in roles:
                user = ROLE_USERS[role]
                files[f"{d}/{user}.crt"] = material.clients[user].cert
                files[f"{d}/{user}.key"] = material.clients[user].key
    return files


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class ClientSecurity:
    """One client's credentials, as the bench, the monitors and the tests apply them."""

    mode: str = "none"
    username: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    tls_version: str = "tlsv1.2"
    ciphers: str | None = None

    @property
    def tls(self) -> bool:
        return self.mode in ("tls", "mtls")

    def ssl_context(self) -> ssl.SSLContext:
        """Server verification on (chain and name); the client's certificate under mtls."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.tls_version == "tlsv1.3" else ssl.TLSVersion.TLSv1_2
        if self.ciphers:
            ctx.set_ciphers(self.ciphers)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def apply(self, client: Any) -> None:
        """Credentials and TLS on a paho client, before it connects."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set_context(self.ssl_context())

    def with_(self, **changes: Any) -> ClientSecurity:
        """A variant (a wrong password, a foreign certificate) for refusal checks."""
        return ClientSecurity(**{**self.__dict__, **changes})


class SecurityFileError(ValueError):
    pass


def load_client(path: Path | str | None, role: str) -> ClientSecurity:
    """``role``'s settings from a rendered client.json; no file means the reference (anonymous)."""
    if path is None:
        return ClientSecurity()
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:  # missing, a folder, not UTF-8, not JSON
        raise SecurityFileError(f"{p}: cannot read the client security settings ({exc})") from None
    if not isinstance(doc, dict):
        raise SecurityFileError(f"{p}: not the client security settings (a JSON object with mode and roles)")
    entry = doc.get("roles", {}).get(role)
    if doc.get("mode", "none") != "none" and entry is None:
        raise SecurityFileError(f"{p}: no credentials for role {role!r} (has {', '.join(doc.get('roles', {})) or 'none'})")
    entry = entry or {}

    def rel(name: str | None) -> str | None:
        return str(p.parent / name) if name else None

    return ClientSecurity(mode=doc.get("mode", "none"), username=entry.get("username"), password=entry.get("password"),
                          ca=rel(doc.get("ca")), cert=rel(entry.get("cert")), key=rel(entry.get("key")),
                          tls_version=doc.get("tlsVersion", "tlsv1.2"), ciphers=doc.get("ciphers"))



# --------------------------------------------------------------------------- material on Azure


def material_to_json(m: Material) -> str:
    pair = lambda p: {"cert": p.cert, "key": p.key}  # noqa: E731
    return json.dumps({"passwords": m.passwords, "caCert": m.ca_cert, "servers": {k: pair(v) for k, v in m.servers.items()},
                       "clients": {k: pair(v) for k, v in m.clients.items()}})


def material_from_json(text: str, plan: Plan, sec: SecurityConfig, source: str) -> Material:
    """The material a VM received from the Pulumi program, checked against what the plan needs."""
    try:
        doc = json.loads(text)
        pairs = {k: {n: KeyPair(p["cert"], p["key"]) for n, p in doc.get(k, {}).items()} for k in ("servers", "clients")}
        m = Material(dict(doc["passwords"]), doc.get("caCert", ""), pairs["servers"], pairs["clients"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise SecurityFileError(f"{source}: not the security material mqttlab writes ({exc!r})") from None
    missing = [u for u in users(plan) if u not in m.passwords]
    if sec.tls:
        missing += [f"server certificate of {b.name}" for b in plan.brokers if b.name not in m.servers]
    if sec.mode == "mtls":
        missing += [f"client certificate of {u}" for u in users(plan) if u not in m.clients]
    if missing:
        raise SecurityFileError(f"{source}: lacks {', '.join(missing)} for security mode {sec.mode}")
    return m


def give_to(folder: Path, uid: int) -> None:
    """Hand a broker's folder to the container's mosquitto user (uid 1883 in eclipse-mosquitto):
    it reads the password and ACL files after dropping root."""
    for f in [folder, *folder.iterdir()]:
        os.chown(f, uid, uid)
