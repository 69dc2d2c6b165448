"""cloud-config per role: static bootstrap only.

Custom data cannot change on an existing VM, so nothing here depends on the topology, the
scenario or the run; those arrive through remote commands calling ``mqttlab``.
"""

from __future__ import annotations

import base64

import yaml

IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_mh", "nf_conntrack")
COMMON_PACKAGES = ("python3-venv", "python3-pip", "mosquitto-clients", "chrony")


def cloud_config(role: str, admin_user: str, docker: bool = False) -> str:
    """``role``: "brokers" or "balancer". ``docker`` also on balancers for emqtt-bench."""
    packages = list(COMMON_PACKAGES)
    files = []
    runcmd: list[list[str]] = []
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
    doc = {
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
