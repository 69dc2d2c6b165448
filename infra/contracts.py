"""What Azure and the providers refuse, as one table the Pulumi mocks apply to every resource.

Plain Pulumi mocks accept any input; a real ``pulumi up`` does not. Each row below is one rule
with the source it comes from; ``ContractMocks`` names the row when a resource breaks it, and the
test fails. Adding a resource type to the program means adding its rows here.

Sources (S1..S9 in the table):
- S1 Microsoft Learn, "Naming rules and restrictions for Azure resources"
  (azure-resource-manager/management/resource-name-rules): per resource type, length, valid
  characters, case, first/last character.
- S2 pulumi-azure-native auto-naming: a resource without an explicit name gets its logical name
  plus 8 random hex characters, unchanged (no hyphen, no lower-casing): pulumi/pulumi-azure-native
  #3406, #3665 ("MyAccountab50c96d is not a valid storage account name", AccountNameInvalid).
- S3 pulumi-command ``CopyToRemote.Check`` (provider/pkg/provider/remote/copyController.go):
  "asset must be a path-based file asset or a text asset", "archive must be a path to a file or
  directory", exactly one of asset or archive.
- S4 pulumi-command ``Connection`` (provider/pkg/provider/remote/connection.go): ``host`` is
  required; ``privateKey`` is parsed with ``ssh.ParsePrivateKey`` unless ``privateKeyPassword``
  is given (``ParsePrivateKeyWithPassphrase``), so a passphrase-protected key without it fails
  every dial; ``hostKey`` (pulumi/pulumi-command#794) is the server's public key.
- S5 Microsoft Learn, "Network security groups: how they work / security rules": priority
  100-4096, unique per direction within a group.
- S6 Microsoft Learn, "Assign multiple IP addresses to virtual machines": one primary IP
  configuration per NIC; secondary configurations in the primary's subnet (as this program
  uses them).
- S7 Microsoft Learn, "Public IP addresses": the Standard SKU is always static ("Standard SKU
  public IP addresses use the static allocation method").
- S8 Microsoft Learn, "Supported SSH key formats" (Linux VMs): SSH-2 RSA >= 2048 bits, or Ed25519;
  compute REST API ``SshPublicKey.path``: "/home/<user>/.ssh/authorized_keys" is the only path;
  ``OSProfile.customData``: "The maximum length of the binary array is 65535 bytes", and it
  cannot be changed on an existing VM (PropertyChangeNotAllowed).
- S9 Azure RBAC REST API (Role Assignments - Create): the assignment name is a GUID; the role
  definition id is /subscriptions/<id>/providers/Microsoft.Authorization/roleDefinitions/<guid>.
- S10 Azure DevTest Labs ``GlobalSchedule`` for VM auto-shutdown: the schedule must be named
  ``shutdown-computevm-<vm name>``, time HHMM.
- S11 pulumi-tls 5.x (the terraform-provider-tls v4 schema, as documented in the SDK's
  ``PrivateKeyArgs``, ``SelfSignedCertArgs``, ``CertRequestArgs``, ``LocallySignedCertArgs``):
  ``algorithm`` one of RSA, ECDSA, ED25519; ``ecdsa_curve`` one of P224, P256, P384, P521
  (default P224, whose ``public_key_openssh`` is not populated); exactly one of
  ``private_key_pem`` / ``private_key_pem_wo`` (``ca_private_key_pem`` / ``_wo`` for a signed
  certificate); ``allowed_uses``, ``validity_period_hours`` (and ``cert_request_pem``,
  ``ca_cert_pem``) required; ``allowed_uses`` from the RFC 5280 names listed there;
  ``ip_addresses`` are IP addresses. The private key outputs (``privateKeyPem``,
  ``privateKeyOpenssh``, ``privateKeyPemPkcs8``) are additional secret outputs.
- S12 pulumi-random 4.x ``RandomPasswordArgs.length``: "The minimum value for length is 1 and,
  length must also be >= (min_upper + min_lower + min_numeric + min_special)"; of ``numeric``,
  ``upper``, ``lower``, ``special`` at least one must be true. ``result`` is a secret output.
- S13 Microsoft Learn, "Resource providers and types" (azure-resource-manager/management/
  resource-providers-and-types): a resource type can be created only once its namespace is
  registered for the subscription (else MissingSubscriptionRegistration); a new subscription
  has only the namespaces "registered by default"; Azure registers others by itself for portal
  actions and templates only, and azure-native registers none (pulumi/pulumi-azure-native#3479).
  ARM's Resource Providers - Get reports ``registrationState``.
- S14 azure-compute-docs virtual-machines/delete.md: ``deleteOption: Delete`` on a VM's NIC
  reference deletes the NIC with the VM. For a NIC that is a Pulumi resource of its own, the
  VM's deletion (destroy, or a delete-before-replace) would remove a resource Pulumi still
  holds, and the replacement VM's request would name a NIC that no longer exists.
- S15 pulumi-command provider/pkg/provider/remote/commandController.go: ``Delete`` runs the
  ``delete`` command over SSH at destroy, and on a replacement after the new resource's create.
  A deallocated (Spot-evicted, auto-shut-down) VM cannot answer, so destroy would hang on it.
- S16 Azure RBAC REST API, Role Assignments - Create, ``RoleAssignmentProperties.principalType``:
  taken as ``User`` when absent; a principal of another type is refused with
  ``UnmatchedPrincipalType``. A managed identity is a ``ServicePrincipal``.
- S17 Microsoft Learn, "Use Azure Spot Virtual Machines" (virtual-machines/spot-vms),
  Limitations: "B-series" sizes are not supported as Spot.
- S18 Microsoft Learn, "Public IP addresses": ``publicIPAddressVersion`` defaults to IPv4, and an
  IPv6 address needs a dual-stack NIC configuration; this program's VMs have IPv4 addresses
  only, so an NSG rule allowing an IPv6 source matches no packet that reaches them.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import struct
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pulumi

TLS_KEY, TLS_CA = "tls:index/privateKey:PrivateKey", "tls:index/selfSignedCert:SelfSignedCert"
TLS_CSR, TLS_SIGNED = "tls:index/certRequest:CertRequest", "tls:index/locallySignedCert:LocallySignedCert"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Name:
    """One row of S1 for one resource type: which input carries the name, and the rule."""

    key: str
    lo: int
    hi: int
    pattern: str
    says: str


NAMES: dict[str, Name] = {
    "azure-native:resources:ResourceGroup": Name("resourceGroupName", 1, 90, r"^[\w().-]*[\w()-]$", "letters, digits, _ ( ) . -, not ending in ."),
    "azure-native:network:VirtualNetwork": Name("virtualNetworkName", 2, 64, r"^[A-Za-z0-9][\w.-]*[A-Za-z0-9_]$", "alphanumerics, _ . -; start alphanumeric, end alphanumeric or _"),
    "azure-native:network:Subnet": Name("subnetName", 1, 80, r"^[A-Za-z0-9]([\w.-]*[A-Za-z0-9_])?$", "alphanumerics, _ . -; start alphanumeric, end alphanumeric or _"),
    "azure-native:network:NetworkSecurityGroup": Name("networkSecurityGroupName", 1, 80, r"^[A-Za-z0-9]([\w.-]*[A-Za-z0-9_])?$", "alphanumerics, _ . -; start alphanumeric, end alphanumeric or _"),
    "azure-native:network:NetworkInterface": Name("networkInterfaceName", 1, 80, r"^[A-Za-z0-9]([\w.-]*[A-Za-z0-9_])?$", "alphanumerics, _ . -; start alphanumeric, end alphanumeric or _"),
    "azure-native:network:PublicIPAddress": Name("publicIpAddressName", 1, 80, r"^[A-Za-z0-9]([\w.-]*[A-Za-z0-9_])?$", "alphanumerics, _ . -; start alphanumeric, end alphanumeric or _"),
    "azure-native:compute:VirtualMachine": Name("vmName", 1, 64, r"^[^\s~!@#$%^&*()=+_\[\]{}\\|;:.'\",<>/?][^\s~!@#$%^&*()=+_\[\]{}\\|;:'\",<>/?]*(?<![.-])$", "Linux: 1-64, none of ~!@#$%^&*()=+_[]{}\\|;:.'\",<>/? or spaces, not ending in . or -"),
    "azure-native:storage:StorageAccount": Name("accountName", 3, 24, r"^[a-z0-9]+$", "3-24 lowercase letters and digits only"),
    "azure-native:storage:BlobContainer": Name("containerName", 3, 63, r"^[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]$", "lowercase letters, digits, single hyphens; start and end alphanumeric"),
    "azure-native:authorization:RoleAssignment": Name("roleAssignmentName", 36, 36, GUID.pattern, "a GUID"),
    "azure-native:devtestlab:GlobalSchedule": Name("name", 1, 260, r"^shutdown-computevm-.+$", "shutdown-computevm-<vm name>"),
}


@dataclass(frozen=True)
class World:
    """What a rule may need beyond the resource itself: the subscription and what the program
    created before it (the mocks fill it in as resources arrive)."""

    registered: frozenset[str] = frozenset()  # S13; empty: every namespace counts as registered
    nic_ids: frozenset[str] = frozenset()  # S14: ids of the NICs this program created
    principals: Mapping[str, str] = field(default_factory=dict)  # S16: principal id -> its real type


@dataclass
class Seen:
    """A resource as the contract sees it: type, logical name, plain inputs, physical name."""

    typ: str
    logical: str
    inputs: dict[str, Any]
    physical: str
    raw: dict[str, Any] = field(default_factory=dict)
    world: World = field(default_factory=World)


@dataclass(frozen=True)
class Rule:
    """One contract: its id (named in failures), the types it applies to, its source, the check."""

    id: str
    types: tuple[str, ...]
    source: str
    check: Callable[[Seen], str | None]


def autoname(typ: str, logical: str, inputs: Mapping[str, Any]) -> str:
    """S2: the given name, else logical name + 8 hex characters (random in the provider;
    derived from the logical name here so runs compare)."""
    spec = NAMES.get(typ)
    given = inputs.get(spec.key) if spec else None
    if isinstance(given, str) and given:
        return given
    return logical + hashlib.sha256(logical.encode()).hexdigest()[:8]


def _ssh_key(line: str) -> str | None:
    """S8, written from the Microsoft page, independently of the program's own check."""
    parts = line.split()
    if len(parts) < 2 or parts[0] not in ("ssh-rsa", "ssh-ed25519"):
        return f"{parts[0] if parts else line!r}: Azure takes only ssh-rsa (>= 2048 bits) or ssh-ed25519"
    blob = base64.b64decode(parts[1])
    fields, at = [], 0
    while at < len(blob):
        (n,) = struct.unpack(">I", blob[at : at + 4])
        fields.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    if parts[0] == "ssh-rsa" and int.from_bytes(fields[2], "big").bit_length() < 2048:
        return "RSA key shorter than 2048 bits"
    return None


def _encrypted(key: str) -> bool:
    """S4: what makes ssh.ParsePrivateKey fail for want of a passphrase."""
    if "ENCRYPTED" in key:
        return True
    body = "".join(line for line in key.strip().splitlines() if not line.startswith("-----"))
    try:
        blob = base64.b64decode(body)
    except ValueError:
        return False
    magic = b"openssh-key-v1\0"
    return blob.startswith(magic) and blob[len(magic) + 4 : len(magic) + 8] != b"none"


def _name(r: Seen) -> str | None:
    spec = NAMES[r.typ]
    n = r.physical
    if not spec.lo <= len(n) <= spec.hi:
        return f"name {n!r} is {len(n)} characters; Azure allows {spec.lo}-{spec.hi} ({spec.says})"
    if not re.match(spec.pattern, n):
        return f"name {n!r} breaks Azure's rule: {spec.says}"
    return None


def _nsg(r: Seen) -> str | None:
    seen: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    for rule in r.inputs.get("securityRules") or []:
        prio, direction, name = rule.get("priority"), rule.get("direction"), rule.get("name")
        if isinstance(prio, float) and prio.is_integer():
            prio = int(prio)  # numbers cross the engine as floats
        if not isinstance(prio, int) or not 100 <= prio <= 4096:
            return f"rule {name!r} has priority {prio}; Azure allows 100-4096"
        if (direction, prio) in seen:
            return f"rules {seen[(direction, prio)]!r} and {name!r} share priority {prio} ({direction}); priorities are unique per direction"
        if name in names:
            return f"two rules are named {name!r}"
        seen[(direction, prio)] = name
        names.add(name)
    return None


def _nic(r: Seen) -> str | None:
    cfgs = r.inputs.get("ipConfigurations") or []
    primaries = [c for c in cfgs if c.get("primary")]
    if len(cfgs) > 1 and len(primaries) != 1:
        return f"{len(primaries)} primary IP configurations; exactly one is required"
    if primaries:
        subnet = (primaries[0].get("subnet") or {}).get("id")
        for c in cfgs:
            if (c.get("subnet") or {}).get("id") != subnet:
                return f"IP configuration {c.get('name')!r} is not in the primary's subnet"
    return None


def _pip(r: Seen) -> str | None:
    sku = (r.inputs.get("sku") or {}).get("name", "Basic")
    if sku == "Standard" and r.inputs.get("publicIPAllocationMethod") != "Static":
        return "a Standard public IP must use publicIPAllocationMethod Static"
    return None


def _vm(r: Seen) -> str | None:
    os_profile = r.inputs.get("osProfile") or {}
    user = os_profile.get("adminUsername", "")
    computer = os_profile.get("computerName", "")
    if not 1 <= len(computer) <= 64:
        return f"computerName {computer!r} must be 1-64 characters on Linux"
    for key in ((os_profile.get("linuxConfiguration") or {}).get("ssh") or {}).get("publicKeys") or []:
        problem = _ssh_key(str(key.get("keyData", "")))
        if problem:
            return f"SSH key refused: {problem}"
        if key.get("path") != f"/home/{user}/.ssh/authorized_keys":
            return f"SSH key path {key.get('path')!r} must be /home/{user}/.ssh/authorized_keys"
    data = os_profile.get("customData")
    if data is not None and len(base64.b64decode(data)) > 65535:
        return "customData is larger than 65535 bytes"
    return None


def _copy(r: Seen) -> str | None:
    src = r.raw.get("source")
    if isinstance(src, pulumi.FileAsset | pulumi.StringAsset):
        return None
    if isinstance(src, pulumi.FileArchive):
        return None
    if isinstance(src, pulumi.Asset):
        return "asset must be a path-based file asset or a text asset"
    if isinstance(src, pulumi.Archive):
        return "archive must be a path to a file or directory"
    return "either asset or archive must be set"


def _connection(r: Seen) -> str | None:
    conn = r.inputs.get("connection") or {}
    if not conn.get("host"):
        return "connection.host is required"
    key = conn.get("privateKey")
    if key and _encrypted(str(key)) and not conn.get("privateKeyPassword"):
        return "connection.privateKey is passphrase-protected and no privateKeyPassword is given (ssh.ParsePrivateKey fails)"
    hk = conn.get("hostKey")
    if hk is not None and not re.match(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+", str(hk)):
        return f"connection.hostKey {str(hk)[:40]!r} is not an OpenSSH public key"
    return None


def _role(r: Seen) -> str | None:
    rd = str(r.inputs.get("roleDefinitionId", ""))
    if not re.match(r"^/subscriptions/[^/]+/providers/Microsoft\.Authorization/roleDefinitions/[0-9a-f-]{36}$", rd):
        return f"roleDefinitionId {rd!r} is not /subscriptions/<id>/providers/Microsoft.Authorization/roleDefinitions/<guid>"
    if not GUID.match(str(r.inputs.get("principalId", ""))):
        return f"principalId {r.inputs.get('principalId')!r} is not a GUID"
    if not str(r.inputs.get("scope", "")).startswith("/subscriptions/"):
        return "scope must be a resource id"
    return None


TLS_USES = frozenset({
    "any_extended", "cert_signing", "client_auth", "code_signing", "content_commitment", "crl_signing", "data_encipherment", "decipher_only",
    "digital_signature", "email_protection", "encipher_only", "ipsec_end_system", "ipsec_tunnel", "ipsec_user", "key_agreement",
    "key_encipherment", "microsoft_commercial_code_signing", "microsoft_kernel_code_signing", "microsoft_server_gated_crypto",
    "netscape_server_gated_crypto", "ocsp_signing", "server_auth", "timestamping"})


def _tls_key(r: Seen) -> str | None:
    alg = r.inputs.get("algorithm")
    if alg not in ("RSA", "ECDSA", "ED25519"):
        return f"algorithm {alg!r} is not one of RSA, ECDSA, ED25519"
    curve = r.inputs.get("ecdsaCurve")
    if alg == "ECDSA" and curve is not None and curve not in ("P224", "P256", "P384", "P521"):
        return f"ecdsaCurve {curve!r} is not one of P224, P256, P384, P521"
    return None


def _exactly_one(r: Seen, key: str) -> str | None:
    given = [k for k in (key, f"{key}Wo") if r.inputs.get(k)]
    return None if len(given) == 1 else f"exactly one of {key} or {key}Wo must be set (given: {given or 'neither'})"


def _tls_cert(r: Seen) -> str | None:
    signed = r.typ == "tls:index/locallySignedCert:LocallySignedCert"
    required = ["allowedUses", "validityPeriodHours", *(["certRequestPem", "caCertPem"] if signed else [])]
    if r.typ == "tls:index/certRequest:CertRequest":
        required = []
    missing = [k for k in required if r.inputs.get(k) in (None, "", [])]
    if missing:
        return f"required {', '.join(missing)} missing"
    why = _exactly_one(r, "caPrivateKeyPem" if signed else "privateKeyPem")
    if why:
        return why
    bad = sorted(set(r.inputs.get("allowedUses") or []) - TLS_USES)
    if bad:
        return f"allowedUses {bad} are not key usages the provider accepts"
    for ip in r.inputs.get("ipAddresses") or []:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return f"ipAddresses entry {ip!r} is not an IP address"
    return None


def _password(r: Seen) -> str | None:
    length = r.inputs.get("length")
    mins = sum(int(r.inputs.get(k) or 0) for k in ("minUpper", "minLower", "minNumeric", "minSpecial"))
    if not isinstance(length, int | float) or length < max(1, mins):
        return f"length {length!r} must be at least 1 and at least minUpper + minLower + minNumeric + minSpecial ({mins})"
    if not any(r.inputs.get(k, True) for k in ("numeric", "upper", "lower", "special")):
        return "numeric, upper, lower and special are all false"
    return None


def _schedule(r: Seen) -> str | None:
    t = str((r.inputs.get("dailyRecurrence") or {}).get("time", ""))
    return None if re.match(r"^([01]\d|2[0-3])[0-5]\d$", t) else f"dailyRecurrence.time {t!r} is not HHMM"


# S13: the namespace behind each azure-native module this program uses
NAMESPACE_OF = {"resources": "Microsoft.Resources", "network": "Microsoft.Network", "compute": "Microsoft.Compute", "storage": "Microsoft.Storage",
                "authorization": "Microsoft.Authorization", "devtestlab": "Microsoft.DevTestLab"}


def _registered(r: Seen) -> str | None:
    module = r.typ.split(":")[1]
    ns = NAMESPACE_OF.get(module)
    if ns is None:
        return f"module {module!r} has no namespace in NAMESPACE_OF: add it, and its registration, to the table"
    if r.world.registered and ns not in r.world.registered:
        return f"MissingSubscriptionRegistration: the subscription is not registered to use namespace '{ns}'"
    return None


def _nic_delete(r: Seen) -> str | None:
    for ref in ((r.inputs.get("networkProfile") or {}).get("networkInterfaces")) or []:
        if ref.get("id") in r.world.nic_ids and ref.get("deleteOption") == "Delete":
            return f"NIC {ref['id'].rsplit('/', 1)[-1]!r} is a resource of this program but deleteOption Delete removes it with the VM"
    return None


def _no_delete(r: Seen) -> str | None:
    if r.inputs.get("delete"):
        return f"delete {str(r.inputs['delete'])[:60]!r} dials the VM at destroy (and after a replacement's create)"
    return None


def _principal_type(r: Seen) -> str | None:
    pid = str(r.inputs.get("principalId", ""))
    given = r.inputs.get("principalType") or "User"
    real = r.world.principals.get(pid)
    if real is None:
        return f"principalId {pid!r} is no principal these mocks know (the caller or a VM's identity)"
    if given != real:
        return f"UnmatchedPrincipalType: principal {pid} is a {real}, the assignment says {given}"
    return None


def _spot(r: Seen) -> str | None:
    size = str((r.inputs.get("hardwareProfile") or {}).get("vmSize", ""))
    if r.inputs.get("priority") == "Spot" and re.match(r"^Standard_B\d", size, re.I):
        return f"{size} is a B-series size, which Azure does not offer as Spot"
    return None


def _ipv4_sources(r: Seen) -> str | None:
    for rule in r.inputs.get("securityRules") or []:
        if rule.get("access") != "Allow":
            continue
        for src in [rule.get("sourceAddressPrefix"), *(rule.get("sourceAddressPrefixes") or [])]:
            try:
                net = ipaddress.ip_network(str(src), strict=False)
            except ValueError:
                continue  # a service tag (VirtualNetwork, ...) or *
            if net.version != 4:
                return f"rule {rule.get('name')!r} allows {src}, an IPv6 source; the VMs have IPv4 public addresses only"
    return None


RULES: tuple[Rule, ...] = (
    Rule("provider-registered", tuple(NAMES), "S13 resource providers and types", _registered),
    Rule("azure-name", tuple(NAMES), "S1 naming rules, S2 azure-native auto-naming", _name),
    Rule("nsg-priority", ("azure-native:network:NetworkSecurityGroup",), "S5 NSG security rules", _nsg),
    Rule("nic-ip-configurations", ("azure-native:network:NetworkInterface",), "S6 multiple IP addresses", _nic),
    Rule("public-ip-standard-static", ("azure-native:network:PublicIPAddress",), "S7 public IP SKUs", _pip),
    Rule("vm-os-profile", ("azure-native:compute:VirtualMachine",), "S8 SSH key formats, OSProfile", _vm),
    Rule("copy-source-kind", ("command:remote:CopyToRemote",), "S3 CopyToRemote.Check", _copy),
    Rule("command-connection", ("command:remote:Command", "command:remote:CopyToRemote"), "S4 remote Connection", _connection),
    Rule("role-assignment", ("azure-native:authorization:RoleAssignment",), "S9 role assignments", _role),
    Rule("vm-shutdown-schedule", ("azure-native:devtestlab:GlobalSchedule",), "S10 auto-shutdown schedule", _schedule),
    Rule("tls-private-key", (TLS_KEY,), "S11 pulumi-tls PrivateKey", _tls_key),
    Rule("tls-certificate", (TLS_CA, TLS_CSR, TLS_SIGNED), "S11 pulumi-tls certificates", _tls_cert),
    Rule("random-password", (RANDOM_PASSWORD,), "S12 pulumi-random RandomPassword", _password),
    Rule("vm-nic-delete-option", ("azure-native:compute:VirtualMachine",), "S14 virtual-machines/delete.md", _nic_delete),
    Rule("command-no-delete", ("command:remote:Command",), "S15 pulumi-command commandController.go", _no_delete),
    Rule("role-principal-type", ("azure-native:authorization:RoleAssignment",), "S16 RoleAssignmentProperties.principalType", _principal_type),
    Rule("vm-spot-size", ("azure-native:compute:VirtualMachine",), "S17 Spot limitations", _spot),
    Rule("nsg-ipv4-sources", ("azure-native:network:NetworkSecurityGroup",), "S18 public IP address versions", _ipv4_sources),
)
# Options the engine sees, not the provider: customData is create-only (S8), so a VM must say
# what happens when it changes, or the update is refused by Azure.
CUSTOM_DATA_RULE = Rule("vm-custom-data-immutable", ("azure-native:compute:VirtualMachine",), "S8 OSProfile.customData", lambda r: None)


class ContractViolation(Exception):
    pass


SECRET_SIG = "4dabf18193072939515e22adb298388d"
MOCK_SECRET = "MOCKSECRET"  # in every private key and password the mocks make
MOCK_START = 1_790_000_000.25  # the agreed start the mocked bench-start step prints


def unsecret(v: Any) -> Any:
    """Secrets reach the mocks wrapped; the rules look at the plain values."""
    if isinstance(v, dict):
        if SECRET_SIG in v:
            return unsecret(v["value"])
        return {k: unsecret(x) for k, x in v.items()}
    if isinstance(v, list):
        return [unsecret(x) for x in v]
    return v


def violation(typ: str, logical: str, raw_inputs: Mapping[str, Any], world: World | None = None) -> str | None:
    """The first rule this resource breaks, as "[rule] type 'name': why (source)", or None."""
    inputs = unsecret(dict(raw_inputs))
    seen = Seen(typ, logical, inputs, autoname(typ, logical, inputs), raw=dict(raw_inputs), world=world or World())
    for rule in RULES:
        if typ in rule.types:
            why = rule.check(seen)
            if why:
                return f"[{rule.id}] {typ} '{logical}': {why} (source: {rule.source})"
    return None


def options_violation(typ: str, logical: str, replace_on_changes: list[str], ignore_changes: list[str]) -> str | None:
    if typ in CUSTOM_DATA_RULE.types and not {"osProfile.customData", "osProfile"} & {*replace_on_changes, *ignore_changes}:
        return (f"[{CUSTOM_DATA_RULE.id}] {typ} '{logical}': customData cannot change on an existing VM; declare replace_on_changes "
                f"or ignore_changes for osProfile.customData (source: {CUSTOM_DATA_RULE.source})")
    return None


CALLER_OBJECT_ID = "22222222-2222-2222-2222-222222222222"


def caller_token(kind: str) -> str:
    """An ARM access token shaped as the Microsoft identity platform issues them ("Access token
    claims reference"): a user's carries ``scp`` and ``idtyp: user``; an app-only token (service
    principal, managed identity) carries ``roles`` and ``idtyp: app``, and no ``scp``."""
    claims: dict[str, Any] = {"aud": "https://management.azure.com/", "oid": CALLER_OBJECT_ID, "tid": "33333333-3333-3333-3333-333333333333"}
    claims |= {"scp": "user_impersonation", "idtyp": "user"} if kind == "User" else {"roles": [], "idtyp": "app"}

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# S13: what a new subscription has registered (Microsoft Learn, "Resource providers and types":
# "Resource providers registered by default"); the others exist but wait for a registration.
DEFAULT_REGISTERED = frozenset({
    "Microsoft.Authorization", "Microsoft.Billing", "Microsoft.ClassicSubscription", "Microsoft.Commerce", "Microsoft.Consumption",
    "Microsoft.CostManagement", "Microsoft.Features", "Microsoft.MarketplaceOrdering", "Microsoft.Portal", "Microsoft.ResourceGraph",
    "Microsoft.ResourceNotifications", "Microsoft.Resources", "Microsoft.SerialConsole", "microsoft.support"})
NAMESPACES = DEFAULT_REGISTERED | {"Microsoft.Compute", "Microsoft.Network", "Microsoft.Storage", "Microsoft.DevTestLab"}
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


class ContractMocks(pulumi.runtime.Mocks):
    """Answers as the providers would (names, ids, addresses, identities, command output), after
    applying ``RULES``; a violation is recorded and raised with its rule named."""

    def __init__(self, caller_type: str = "User", registered: frozenset[str] = NAMESPACES) -> None:
        self.caller_type = caller_type  # what kind of principal runs pulumi up: "User" or "ServicePrincipal"
        self.registered = registered  # the subscription's registered resource provider namespaces
        self.nic_ids: set[str] = set()
        self.principals: dict[str, str] = {CALLER_OBJECT_ID: caller_type}
        self.violations: list[str] = []
        self.calls: list[str] = []
        self.secrets: set[str] = set()  # every private key and password these mocks answered with

    def _tls_key(self, name: str, inputs: Mapping[str, Any], digest: str) -> dict[str, str]:
        """S11's outputs, shaped per algorithm; the private ones carry ``MOCK_SECRET`` so a grep
        finds them anywhere. Returned in plain: the provider's additional secret outputs are
        not applied here, so the program must mark every private value secret itself."""
        alg = inputs.get("algorithm")
        private = f"{MOCK_SECRET}{name}{digest[:16]}"
        out = {"privateKeyPem": f"-----BEGIN PRIVATE KEY-----\n{private}\n-----END PRIVATE KEY-----\n",
               "privateKeyOpenssh": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{private}\n-----END OPENSSH PRIVATE KEY-----\n",
               "publicKeyPem": f"-----BEGIN PUBLIC KEY-----\nmockpub{digest[:16]}\n-----END PUBLIC KEY-----\n"}
        out["privateKeyPemPkcs8"] = out["privateKeyPem"]
        if alg == "ED25519":
            blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes.fromhex(digest)
            out["publicKeyOpenssh"] = "ssh-ed25519 " + base64.b64encode(blob).decode() + "\n"
        elif alg == "ECDSA":
            curve = inputs.get("ecdsaCurve") or "P224"
            out["publicKeyOpenssh"] = "" if curve == "P224" else f"ecdsa-sha2-nistp{curve[1:]} AAAAE2VjZHNh{digest[:16]}\n"
        else:
            out["publicKeyOpenssh"] = f"ssh-rsa AAAAB3NzaC1yc2E{digest[:16]}\n"
        self.secrets |= {out["privateKeyPem"].strip(), out["privateKeyOpenssh"].strip(), private}
        return out

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        why = violation(args.typ, args.name, args.inputs, World(self.registered, frozenset(self.nic_ids), dict(self.principals)))
        if why:
            self.violations.append(why)
            raise ContractViolation(why)
        out = dict(args.inputs)
        digest = hashlib.sha256(args.name.encode()).hexdigest()
        name = autoname(args.typ, args.name, unsecret(dict(args.inputs)))
        out.setdefault("name", name)
        spec = NAMES.get(args.typ)
        if spec:
            out.setdefault(spec.key, name)
        if args.typ == "azure-native:network:PublicIPAddress":
            out["ipAddress"] = f"20.50.0.{int(digest[:4], 16) % 250}"
        if args.typ == "azure-native:resources:ResourceGroup":
            out["location"] = "westeurope"
        if args.typ == "azure-native:compute:VirtualMachine":
            out["vmId"] = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
            if (unsecret(args.inputs.get("identity")) or {}).get("type") == "SystemAssigned":
                out["identity"] = {"type": "SystemAssigned", "principalId": f"{digest[32:40]}-{digest[40:44]}-{digest[44:48]}-{digest[48:52]}-{digest[52:64]}"}
        if args.typ == TLS_KEY:
            out |= self._tls_key(args.name, unsecret(args.inputs), digest)
        if args.typ in (TLS_CA, TLS_SIGNED):
            out["certPem"] = f"-----BEGIN CERTIFICATE-----\nmockcert{digest[:24]}\n-----END CERTIFICATE-----\n"
        if args.typ == TLS_CSR:
            out["certRequestPem"] = f"-----BEGIN CERTIFICATE REQUEST-----\nmockcsr{digest[:24]}\n-----END CERTIFICATE REQUEST-----\n"
        if args.typ == RANDOM_PASSWORD:
            out["result"] = (MOCK_SECRET + digest * 2)[: int(args.inputs["length"])]
            self.secrets.add(out["result"])
        if args.typ == "command:remote:Command":
            out["stdout"] = json.dumps({"host": args.name})
            if " host bench-start " in str(args.inputs.get("create", "")):
                out["stdout"] = f"{MOCK_START:.3f}\n"  # what the real step prints: one epoch time
            out["stderr"] = ""
        rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/mock/providers/{args.typ}/{name}"
        if args.typ == "azure-native:network:NetworkInterface":
            self.nic_ids.add(rid)
        if "identity" in out and isinstance(out["identity"], dict) and out["identity"].get("principalId"):
            self.principals[out["identity"]["principalId"]] = "ServicePrincipal"  # a managed identity
        return rid, out

    def call(self, args: pulumi.runtime.MockCallArgs) -> Any:
        self.calls.append(args.token)
        if args.token == "azure-native:authorization:getClientConfig":
            return {"clientId": "11111111-1111-1111-1111-111111111111", "objectId": CALLER_OBJECT_ID,
                    "subscriptionId": SUBSCRIPTION, "tenantId": "33333333-3333-3333-3333-333333333333"}
        if args.token == "azure-native:authorization:getClientToken":
            return {"token": caller_token(self.caller_type)}
        raise ContractViolation(f"the program calls {args.token}, which these mocks do not answer")


@contextmanager
def arm_stand_in(mocks: ContractMocks) -> Iterator[str]:
    """S13's Resource Providers - Get (``GET /subscriptions/{id}/providers/{namespace}?api-version=``)
    on loopback, answering from ``mocks.registered``, refusing what ARM refuses: no or another
    bearer token (401 InvalidAuthenticationToken), no api-version (400
    MissingApiVersionParameter), another subscription (404 SubscriptionNotFound), a namespace
    that does not exist (404 InvalidResourceNamespace). Yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def refuse(self, status: int, code: str) -> None:
            self.answer(status, {"error": {"code": code, "message": code}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            m = re.fullmatch(r"/subscriptions/([^/]+)/providers/([^/]+)", url.path)
            if self.headers.get("Authorization") != f"Bearer {caller_token(mocks.caller_type)}":
                return self.refuse(401, "InvalidAuthenticationToken")
            if "api-version" not in urllib.parse.parse_qs(url.query):
                return self.refuse(400, "MissingApiVersionParameter")
            if not m or m.group(1) != SUBSCRIPTION:
                return self.refuse(404, "SubscriptionNotFound")
            known = {n.lower(): n for n in NAMESPACES}
            ns = known.get(m.group(2).lower())
            if ns is None:
                return self.refuse(404, "InvalidResourceNamespace")
            state = "Registered" if ns in mocks.registered else "NotRegistered"
            self.answer(200, {"id": f"/subscriptions/{SUBSCRIPTION}/providers/{ns}", "namespace": ns, "registrationState": state})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
