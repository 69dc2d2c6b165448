"""The rendered IPVS, SNAT and sysctl files loaded into a real IPVS kernel.

The host kernel may lack IPVS; then a stock Debian kernel runs them in the micro-VM. One boot
serves every scheduler (booting under emulation takes most of a minute).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workloads.describe.config import SCHEDULERS, load_stack
from workloads.describe.plan import build_plan
from workloads.hosts.lab import vm
from workloads.render.files import render_files


def host_has_ipvs() -> bool:
    return subprocess.run(["modprobe", "-n", "ip_vs"], capture_output=True).returncode == 0 and Path("/proc/net/ip_vs").exists()


@pytest.mark.vm
@pytest.mark.timeout(1000)
def test_rendered_ipvs_rules_read_back_identically_for_every_scheduler(tmp_path: Path) -> None:
    reason = vm.unavailable_reason()
    if reason and not host_has_ipvs():
        pytest.skip(f"no IPVS in this kernel and no micro-VM: {reason}")
    work = tmp_path / "ipvs"
    work.mkdir()
    base = load_stack("centralized", ROOT).with_overrides({"balancer.weights": [3, 2, 1], "balancer.timeouts": {"tcp": 600, "tcpfin": 60, "udp": 200}})
    rendered = {}
    for s in SCHEDULERS:
        cfg = base.with_overrides({"balancer.scheduler": s})
        files = render_files(build_plan(cfg), cfg)
        rendered[s] = files["ipvs1/ipvs.rules"]
        (work / f"{s}.rules").write_text(files["ipvs1/ipvs.rules"])
    (work / "timeouts").write_text(files["ipvs1/ipvs-timeouts"])
    (work / "rules.v4").write_text(files["ipvs1/rules.v4"])
    (work / "sysctl.conf").write_text(files["ipvs1/sysctl.conf"])
    script = f"""
set -e
cd {work}
modprobe ip_vs
ip link add eth0 type veth peer name eth0p
for s in {' '.join(SCHEDULERS)}; do
  modprobe ip_vs_$s
  ipvsadm -C
  ipvsadm-restore < $s.rules
  ipvsadm -Sn > $s.saved
done
ipvsadm --set $(cat timeouts)
ipvsadm -L --timeout > timeouts.out
iptables-restore < rules.v4
iptables-save > saved.v4
sysctl -p sysctl.conf > sysctl.out
# the Azure step itself, as the remote command runs it on VM-IPVS1 and VM-IPVS2 (centralized)
ipvsadm -C
cd {ROOT}
# (one kernel plays both VMs here: ipvs2's step clears IPVS, so it runs first)
{sys.executable} -m workloads.cli host balancer-apply -s centralized --host ipvs2 > {work}/apply2.out
{sys.executable} -m workloads.cli host balancer-apply -s centralized --host ipvs1 > {work}/apply1.out
ipvsadm -Sn > {work}/apply.saved
iptables-save -t nat > {work}/apply-nat.saved
echo done > {work}/ok
"""
    if host_has_ipvs():
        cp = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    else:
        cp = vm.run_in_vm(script, [work], timeout=300)  # longer while the guest works, at most 900 s
    assert (work / "ok").exists(), cp.stdout[-3000:] + cp.stderr[-3000:]
    for s in SCHEDULERS:
        assert (work / f"{s}.saved").read_text() == rendered[s], s
    assert "-r 10.2.0.20:1883 -m -w 3" in rendered["lc"] and "-r 10.2.0.22:1883 -m -w 1" in rendered["lc"]
    assert "600 60 200" in (work / "timeouts.out").read_text()
    saved = (work / "saved.v4").read_text()
    assert "-A POSTROUTING -s 10.4.0.0/24 -o eth0 -j MASQUERADE" in saved and ":FORWARD DROP" in saved
    assert "net.ipv4.vs.conntrack = 1" in (work / "sysctl.out").read_text()
    ref = load_stack("centralized", ROOT)
    expected = render_files(build_plan(ref), ref)["ipvs1/ipvs.rules"]
    assert (work / "apply1.out").read_text() == expected == (work / "apply.saved").read_text()
    assert "no balancer on ipvs2 in the centralized topology; its clients use 10.3.0.10:1883" in (work / "apply2.out").read_text()
    assert "-A POSTROUTING -s 10.4.0.0/24 -o eth0 -j MASQUERADE" in (work / "apply-nat.saved").read_text()
