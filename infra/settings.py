"""Azure-only settings (``mqttlab:azure``), read once and validated before any resource exists.

The experiment itself (topology, brokers, balancer, scenario) comes from the same stack file
through ``workloads.config``, the code the local lab uses, so it is never described twice.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workloads.config import ConfigError

P = "mqttlab:azure."
LOAD_GENERATORS = ("mqttlab", "emqtt-bench")
OPEN_WORLD = {"*", "0.0.0.0/0", "internet", "any", "::/0"}
_SIZE = re.compile(r"^Standard_[A-Za-z0-9_]+$")
_TIME = re.compile(r"^([01]\d|2[0-3])[0-5]\d$")


@dataclass(frozen=True)
class AzureSettings:
    admin_cidrs: tuple[str, ...]
    ssh_public_key: str | None
    generate_ssh_key: bool
    admin_user: str
    broker_vm_size: str
    balancer_vm_size: str
    spot: bool
    auto_shutdown: str | None  # "HHMM", daily
    auto_shutdown_tz: str
    mqtt_cidrs: tuple[str, ...]
    load_generator: str
    run_id: str
    bench_timeout_s: int


def _cidr(key: str, value: Any) -> str:
    if str(value).strip().lower() in OPEN_WORLD:
        raise ConfigError(key, value, "must not open SSH to the whole Internet; give your own address, e.g. 203.0.113.7/32")
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ConfigError(key, value, "must be a CIDR such as 203.0.113.7/32") from None


def parse_azure(sec: Mapping[str, Any] | None, run_id: str | None) -> AzureSettings:
    sec = sec or {}
    if not isinstance(sec, Mapping):
        raise ConfigError("mqttlab:azure", sec, "must be a mapping of settings")
    admin = sec.get("adminCidr")
    if admin is None:
        raise ConfigError(P + "adminCidr", None, "is required: the only source allowed to SSH to the VMs "
                          "(pulumi config set --path 'mqttlab:azure.adminCidr' \"$(curl -s ifconfig.me)/32\")")
    admins = tuple(_cidr(P + "adminCidr", a) for a in (admin if isinstance(admin, list) else [admin]))
    if any(ipaddress.ip_network(a).prefixlen == 0 for a in admins):
        raise ConfigError(P + "adminCidr", admin, "must not be a /0")
    key = sec.get("sshPublicKey")
    generate = bool(sec.get("generateSshKey", False))
    if key is None and not generate:
        raise ConfigError(P + "sshPublicKey", None, "is required unless generateSshKey is true")
    if key is not None and not re.match(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+", str(key)):
        raise ConfigError(P + "sshPublicKey", str(key)[:30] + "...", "must be an OpenSSH public key line (ssh-ed25519 AAAA... or ssh-rsa AAAA...)")
    sizes = {}
    for k, default in (("brokerVmSize", "Standard_D2s_v5"), ("balancerVmSize", "Standard_D2s_v5")):
        v = str(sec.get(k, default))
        if not _SIZE.match(v):
            raise ConfigError(P + k, v, "must be an Azure VM size such as Standard_D2s_v5")
        sizes[k] = v
    shutdown = sec.get("autoShutdown")
    if shutdown is not None and not _TIME.match(str(shutdown)):
        raise ConfigError(P + "autoShutdown", shutdown, "must be a daily time HHMM, e.g. 1900")
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
    user = str(sec.get("adminUser", "mqttlab"))
    if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user) or user in ("root", "admin"):
        raise ConfigError(P + "adminUser", user, "must be a Linux user name other than root or admin")
    return AzureSettings(
        admin_cidrs=admins, ssh_public_key=str(key) if key else None, generate_ssh_key=generate, admin_user=user,
        broker_vm_size=sizes["brokerVmSize"], balancer_vm_size=sizes["balancerVmSize"], spot=bool(sec.get("spot", False)),
        auto_shutdown=str(shutdown) if shutdown is not None else None, auto_shutdown_tz=str(sec.get("autoShutdownTimeZone", "UTC")),
        mqtt_cidrs=tuple(_cidr(f"{P}mqttCidrs[{i}]", c) for i, c in enumerate(mqtt)), load_generator=lg, run_id=rid,
        bench_timeout_s=timeout,
    )
