"""cloud-config per role: static bootstrap only.

Custom data cannot change on an existing VM (Azure refuses the update), so nothing here depends
on the topology, the scenario or the run; those arrive through remote commands calling
``mqttlab``. What does change it (the load generator needs Docker on the balancers) replaces the
VM, deliberately: see ``LinuxVm``.

The SSH host key is the program's own (pulumi-tls, Ed25519), written by cloud-init's ``ssh_keys``
in place of the image's, with no other host key type generated (only ed25519, which exists), so the remote commands can pin
it. ``runcmd`` stops at its first failing command, so cloud-init reports the failure (and the
program's ``cloud-init status --wait`` step fails naming it) instead of "done" on a VM that lacks
what the later steps need. On the broker host cloud-init is told to stop putting the NIC's secondary addresses on eth0
(Azure datasource ``apply_network_config_for_secondary_ips``, default true; cloud-init
doc/rtd/reference/datasources/azure.rst): they belong to the ipvlan broker containers. The
setting is system configuration read when the network is configured, so it takes effect from
the second boot; ``mqttlab host brokers-up`` removes the addresses the first boot added.
"""

from __future__ import annotations

import base64

import yaml

IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_mh", "nf_conntrack")
COMMON_PACKAGES = ("python3-venv", "python3-pip", "mosquitto-clients", "chrony", "nftables")  # nft: the fault steps


SECONDARY_IPS_CFG = "/etc/cloud/cloud.cfg.d/91-mqttlab-secondary-ips.cfg"


def cloud_config(role: str, admin_user: str, docker: bool = False, host_key: tuple[str, str] | None = None) -> str:
    """``role``: "brokers" or "balancer". ``docker`` also on balancers for emqtt-bench.
    ``host_key``: (OpenSSH private key, public key line) for the SSH server."""
    packages = list(COMMON_PACKAGES)
    files = []
    # cloud-init runs runcmd as one sh script and judges it by its last command's status: without
    # set -e a failed `systemctl enable --now docker` was followed by a chown that succeeded, and
    # cloud-init reported done on a VM without Docker
    runcmd: list[str | list[str]] = ["set -e"]
    if role == "brokers":
        files.append({"path": SECONDARY_IPS_CFG, "permissions": "0644",
                      "content": "datasource:\n  Azure:\n    apply_network_config_for_secondary_ips: false\n"})
    if role == "brokers" or docker:
        packages += ["docker.io", "docker-compose-v2"]
        runcmd += [["systemctl", "enable", "--now", "docker"], ["usermod", "-aG", "docker", admin_user]]
    if role == "balancer":
        packages += ["ipvsadm", "conntrack", "iptables", "keepalived"]
        files += [
            {"path": "/etc/modules-load.d/mqttlab-ipvs.conf", "content": "".join(f"{m}\n" for m in IPVS_MODULES), "permissions": "0644"},
            {"path": "/etc/sysctl.d/90-mqttlab.conf", "content": "net.ipv4.ip_forward = 1\n", "permissions": "0644"},
        ]
        runcmd += [["modprobe", "-a", *IPVS_MODULES], ["sysctl", "--system"]]
    runcmd += [["mkdir", "-p", "/opt/mqttlab", "/var/lib/mqttlab/runs"], ["chown", "-R", f"{admin_user}:{admin_user}", "/opt/mqttlab", "/var/lib/mqttlab"]]
    doc: dict[str, object] = {}
    if host_key is not None:
        doc |= {"ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519"], "ssh_keys": {"ed25519_private": host_key[0], "ed25519_public": host_key[1]}}
    doc |= {
        "package_update": True,
        "packages": packages,
        "write_files": files,
        "runcmd": runcmd,
        "final_message": "mqttlab bootstrap done after $UPTIME s",
    }
    if not files:
        del doc["write_files"]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def custom_data(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
