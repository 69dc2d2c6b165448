"""Azure-only settings (``mqttlab:azure``), read once and validated before any resource exists.

The experiment itself (topology, brokers, balancer, scenario) comes from the same stack file
through ``workloads.describe.config``, the code the local lab uses, so it is never described twice.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from workloads.describe.config import ConfigError
from workloads.describe.schema import LOAD_GENERATORS

P = "mqttlab:azure."

OPEN_WORLD = {"*", "0.0.0.0/0", "internet", "any", "::/0"}
_SIZE = re.compile(r"^Standard_[A-Za-z0-9_]+$")
_TIME = re.compile(r"^([01]\d|2[0-3])[0-5]\d$")
_AFTER = re.compile(r"^\+(\d{1,2})h$")
# what a run may take before its benchmark ends: cloud-init and install (20 minutes each at most,
# infra.components) before benchTimeoutS; a shutdown sooner than that deallocates the run
PROVISION_S = 2400


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AzureSettings:
    admin_cidrs: tuple[str, ...]
    ssh_public_key: str | None
    generate_ssh_key: bool
    admin_user: str
    broker_vm_size: str
    balancer_vm_size: str
    spot: bool
    auto_shutdown: str | None  # "HHMM" daily, or "+Nh": N hours after the latest pulumi up, in UTC
    auto_shutdown_tz: str
    auto_shutdown_at: str | None  # the schedule's daily HHMM, in auto_shutdown_tz
    mqtt_cidrs: tuple[str, ...]
    load_generator: str
    run_id: str
    bench_timeout_s: int


def _cidr(key: str, value: Any) -> str:
    """An IPv4 source for the NSGs. The VMs' public addresses are IPv4 (``publicIPAddressVersion``
    defaults to IPv4; IPv6 needs a dual-stack NIC, Microsoft Learn "Public IP addresses"), so a
    rule allowing an IPv6 source never matches: every SSH dial would be denied after its retries."""
    if str(value).strip().lower() in OPEN_WORLD:
        raise ConfigError(key, value, "must not open SSH to the whole Internet; give your own address, e.g. 203.0.113.7/32")
    try:
        net = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ConfigError(key, value, "must be a CIDR such as 203.0.113.7/32") from None
    if net.version != 4:
        raise ConfigError(key, value, "must be an IPv4 CIDR: the VMs have IPv4 public addresses only "
                          "(your IPv4 address: curl -4 -s https://ifconfig.me)")
    return str(net)


def parse_azure(sec: Mapping[str, Any] | None, run_id: str | None) -> AzureSettings:
    sec = sec or {}
    if not isinstance(sec, Mapping):
        raise ConfigError("mqttlab:azure", sec, "must be a mapping of settings")
    admin = sec.get("adminCidr")
    if admin is None:
        raise ConfigError(P + "adminCidr", None, "is required: the only source allowed to SSH to the VMs "
                          "(pulumi config set --path 'mqttlab:azure.adminCidr' \"$(curl -4 -s https://ifconfig.me)/32\")")
    admins = tuple(_cidr(P + "adminCidr", a) for a in (admin if isinstance(admin, list) else [admin]))
    if any(ipaddress.ip_network(a).prefixlen == 0 for a in admins):
        raise ConfigError(P + "adminCidr", admin, "must not be a /0")
    key = sec.get("sshPublicKey")
    generate = bool(sec.get("generateSshKey", False))
    if key is None and not generate:
        raise ConfigError(P + "sshPublicKey", None, "is required unless generateSshKey is true")
    if key is not None:
        problem = azure_ssh_key_problem(str(key))
        if problem:
            raise ConfigError(P + "sshPublicKey", str(key)[:30] + "...", problem)
    sizes = {}
    for k, default in (("brokerVmSize", "Standard_D2s_v5"), ("balancerVmSize", "Standard_D2s_v5")):
        v = str(sec.get(k, default))
        if not _SIZE.match(v):
            raise ConfigError(P + k, v, "must be an Azure VM size such as Standard_D2s_v5")
        sizes[k] = v
    spot = bool(sec.get("spot", False))
    if spot:
        burstable = [f"{k}={v}" for k, v in sizes.items() if not spot_capable(v)]
        if burstable:
            raise ConfigError(P + "spot", True, f"Azure offers no Spot capacity for B-series sizes ({', '.join(burstable)}); "
                              "use a size such as Standard_D2s_v5 or turn spot off")
    shutdown = sec.get("autoShutdown")
    if shutdown is not None and not (_TIME.match(str(shutdown)) or _AFTER.match(str(shutdown))):
        raise ConfigError(P + "autoShutdown", shutdown, "must be a daily time HHMM (e.g. 1900) or hours after pulumi up (e.g. +2h)")
    lg = str(sec.get("loadGenerator", "mqttlab"))
    if lg not in LOAD_GENERATORS:
        raise ConfigError(P + "loadGenerator", lg, f"must be one of {', '.join(LOAD_GENERATORS)}")
    mqtt = sec.get("mqttCidrs", [])
    if not isinstance(mqtt, list):
        raise ConfigError(P + "mqttCidrs", mqtt, "must be a list of CIDRs allowed to reach MQTT 1883 from outside the VNet")
    rid = str(run_id or "1")
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,40}$", rid):
        raise ConfigError("mqttlab:runId", rid, "must be 1-41 lowercase letters, digits or dashes (it names the results prefix)")
    timeout = sec.get("benchTimeoutS", 3600)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 60:
        raise ConfigError(P + "benchTimeoutS", timeout, "must be a whole number of seconds >= 60")
    tz = str(sec.get("autoShutdownTimeZone", "UTC"))
    shutdown_at, tz = shutdown_schedule(None if shutdown is None else str(shutdown), tz, PROVISION_S + timeout)
    user = str(sec.get("adminUser", "mqttlab"))
    if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user) or user in ("root", "admin"):
        raise ConfigError(P + "adminUser", user, "must be a Linux user name other than root or admin")
    return AzureSettings(
        admin_cidrs=admins, ssh_public_key=str(key) if key else None, generate_ssh_key=generate, admin_user=user,
        broker_vm_size=sizes["brokerVmSize"], balancer_vm_size=sizes["balancerVmSize"], spot=spot,
        auto_shutdown=str(shutdown) if shutdown is not None else None, auto_shutdown_tz=tz, auto_shutdown_at=shutdown_at,
        mqtt_cidrs=tuple(_cidr(f"{P}mqttCidrs[{i}]", c) for i, c in enumerate(mqtt)), load_generator=lg, run_id=rid,
        bench_timeout_s=timeout,
    )


def shutdown_schedule(value: str | None, tz: str, run_s: int) -> tuple[str | None, str]:
    """The daily auto-shutdown time (HHMM) and its time zone, or None. A DevTest Labs schedule
    deallocates the VMs at that time whatever runs (Microsoft Learn, "Auto-shutdown a VM"), and
    every later remote step would dial a deallocated VM; so the time must fall after this run's
    bound (``run_s``: provisioning plus benchTimeoutS). ``+Nh`` moves it to N hours after each
    ``pulumi up``, in UTC; a fixed UTC time that comes sooner than the bound is refused (a time in
    another zone is taken as given: Azure's zone names are Windows ones, unknown here)."""
    if value is None:
        return None, tz
    now = utc_now()
    after = _AFTER.match(value)
    if after:
        if int(after.group(1)) * 3600 < run_s:
            raise ConfigError(P + "autoShutdown", value, f"is sooner than this run can end ({run_s // 60} minutes: provisioning plus benchTimeoutS)")
        return (now + timedelta(hours=int(after.group(1)))).strftime("%H%M"), "UTC"
    if tz == "UTC":
        at = now.replace(hour=int(value[:2]), minute=int(value[2:]), second=0, microsecond=0)
        wait = (at - now).total_seconds() % 86400
        if wait < run_s:
            raise ConfigError(P + "autoShutdown", value, f"comes in {wait / 60:.0f} minutes (now {now:%H:%M} UTC), before this run can end "
                              f"({run_s // 60} minutes): the VMs would be deallocated mid-run; use +Nh (hours after pulumi up), e.g. +2h")
    return value, tz


def spot_capable(size: str) -> bool:
    """Microsoft Learn "Use Azure Spot Virtual Machines" (virtual-machines/spot-vms), Limitations:
    B-series sizes are not supported as Spot; the VM create is refused after the rest exists."""
    return not re.match(r"^Standard_B\d", size, re.I)


# Azure accepts only SSH-2 RSA keys of at least 2048 bits and Ed25519 keys for Linux VMs
# (Microsoft Learn, "Supported SSH key formats", virtual-machines/linux/mac-create-ssh-keys);
# anything else (ecdsa-*, DSA, short RSA) passes an OpenSSH parser and fails at VM creation.
AZURE_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
MIN_RSA_BITS = 2048


def _ssh_string(blob: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack(">I", blob[at : at + 4])
    return blob[at + 4 : at + 4 + n], at + 4 + n


def azure_ssh_key_problem(line: str) -> str | None:
    """Why Azure would refuse this OpenSSH public key line, or None."""
    parts = line.strip().split()
    if len(parts) < 2:
        return "must be an OpenSSH public key line (ssh-ed25519 AAAA... or ssh-rsa AAAA...)"
    kind = parts[0]
    if kind not in AZURE_KEY_TYPES:
        return f"Azure accepts only ssh-ed25519 or ssh-rsa (>= {MIN_RSA_BITS} bits) keys, not {kind}"
    try:
        blob = base64.b64decode(parts[1], validate=True)
        inner, at = _ssh_string(blob, 0)
        if inner.decode() != kind:
            return f"key data says {inner.decode(errors='replace')} but the line says {kind}"
        if kind == "ssh-rsa":
            _, at = _ssh_string(blob, at)  # public exponent
            modulus, _ = _ssh_string(blob, at)
            bits = int.from_bytes(modulus, "big").bit_length()
            if bits < MIN_RSA_BITS:
                return f"RSA key has {bits} bits; Azure requires at least {MIN_RSA_BITS}"
    except (binascii.Error, struct.error, UnicodeDecodeError, ValueError):
        return "key data is not valid base64 OpenSSH public key data"
    return None


def private_key_is_encrypted(text: str) -> bool:
    """True for a passphrase-protected private key (OpenSSH format with a cipher other than
    "none", or PEM marked ENCRYPTED). pulumi-command parses it with ``ssh.ParsePrivateKey``
    unless ``privateKeyPassword`` is given (connection.go SShConfig), which then fails."""
    if "ENCRYPTED" in text:
        return True
    m = re.search(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", text, re.S)
    if not m:
        return False
    try:
        blob = base64.b64decode("".join(m.group(1).split()))
    except binascii.Error:
        return False
    magic = b"openssh-key-v1\0"
    if not blob.startswith(magic):
        return False
    try:
        cipher, _ = _ssh_string(blob, len(magic))
    except struct.error:
        return False
    return cipher != b"none"
