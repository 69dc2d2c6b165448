"""The rehearsal's machines: one network namespace per VM of the program, each with its own mount,
UTS and PID namespaces and a root overlaid on this machine's (so apt, cloud-init and pip write
privately), its own sshd and cloud-init, and a controller namespace the steps are dialled from.

What stands in for what (each is said in the rehearsal's log):
- the Ubuntu image and Azure's provisioning agent: the admin user with the operator's key from
  the VM's ``osProfile`` and passwordless sudo, as the agent creates them; sshd as installed;
- Azure's datasource: a NoCloud seed with the VM's ``customData`` as user-data and its ``vmId``
  as instance id; cloud-init's network configuration is off (the fabric below sets addresses);
- the fabric: two switches in a namespace of their own, "admin" for the public addresses (the
  controller dials them) and "vnet" for the plan's private addresses, one address per host
  with the VNet on-link, the broker host's secondary addresses routed to it;
- the registries: apt and pip go through a relay to a proxy on a unix socket
  (:mod:`infra.rehearse.proxy`).

Nothing is changed in the root network namespace; teardown removes every namespace and stops
every process the rehearsal started, and always runs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.rehearse import dataplane, standins
from infra.rehearse import store as results_store
from infra.rehearse.program import ADMIN_NET, CONTROLLER, Rehearsed
from workloads.base.errors import LabError
from workloads.hosts.lab import vm as microvm
from workloads.hosts.shell import run

PREFIX = "rh-"
FABRIC, CTL = f"{PREFIX}fabric", f"{PREFIX}ctl"
RELAY_PORT = 3142
ROOT = Path(__file__).resolve().parents[2]
STAND_INS = (
    "image: the admin user, its key and passwordless sudo are made as Azure's provisioning agent makes them",
    "datasource: cloud-init reads a NoCloud seed (the VM's customData and vmId) instead of Azure's",
    "network: cloud-init's network configuration is off; the rehearsal's switches give the plan's addresses",
    "name resolution: each host resolves its own name from /etc/hosts (Azure's DNS resolves a VM's name in its VNet)",
    "registries: apt and pip reach Debian's mirror and PyPI through a relay to a proxy outside the hosts",
)


@dataclass(frozen=True)
class Machine:
    vm: str
    ns: str
    public: str  # on the admin switch: what the steps dial
    private: str  # the plan's address, with its subnet's prefix
    secondary: tuple[str, ...]  # the broker host's broker addresses
    user: str
    authorized_key: str
    instance_id: str
    user_data: str
    principal: str  # its system-assigned identity


def machines(r: Rehearsed, plan: Any) -> list[Machine]:
    """One per VM the program makes, from its resources (names, keys, ids) and the plan (addresses)."""
    out = []
    for vm in r.program.of("azure-native:compute:VirtualMachine"):
        name = vm.name.removesuffix("-vm")
        host = plan.host(name)
        prof = vm.inputs["osProfile"]
        key = prof["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"]
        prefix = ipaddress.ip_network(host.subnet).prefixlen
        secondary = tuple(b.address for b in plan.brokers) if name == "brokers" else ()
        out.append(Machine(name, PREFIX + name, r.addresses[name], f"{host.address}/{prefix}", secondary, prof["adminUsername"], key,
                           str(vm.outputs.get("vmId", name)), r.user_data[name], vm.outputs["identity"]["principalId"]))
    return out


def _init_script(m: Machine, python: str) -> str:
    """Runs as PID 1 of the host, in its root: the image's preparation, cloud-init's boot stages,
    sshd (after the stage that writes the program's host key, as on the VM), then the rest."""
    q = shlex.quote
    return f"""set -e
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen > /dev/null 2>&1 || true
echo 'deb [trusted=yes] file:/rehearsal/apt ./' > /etc/apt/sources.list.d/rehearsal.list
install -m 755 /rehearsal/systemctl /usr/local/sbin/systemctl
grep -q ' {m.vm}$' /etc/hosts || echo '127.0.1.1 {m.vm}' >> /etc/hosts
id -u {m.user} >/dev/null 2>&1 || useradd -m -s /bin/bash {m.user}
install -d -m 700 -o {m.user} -g {m.user} /home/{m.user}/.ssh
printf '%s\\n' {q(m.authorized_key)} > /home/{m.user}/.ssh/authorized_keys
chown {m.user}:{m.user} /home/{m.user}/.ssh/authorized_keys; chmod 600 /home/{m.user}/.ssh/authorized_keys
echo '{m.user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users; chmod 440 /etc/sudoers.d/90-cloud-init-users
echo "rehearsal: the image's host keys"
rm -f /etc/ssh/ssh_host_*; ssh-keygen -A -q; mkdir -p /run/sshd
rm -rf /var/lib/cloud/instance /var/lib/cloud/instances /var/log/cloud-init*.log
mkdir -p /var/lib/cloud/seed/nocloud
cp /rehearsal/user-data /rehearsal/meta-data /var/lib/cloud/seed/nocloud/
printf 'datasource_list: [NoCloud]\\nnetwork: {{config: disabled}}\\n' > /etc/cloud/cloud.cfg.d/99-rehearsal.cfg
printf 'Acquire::http::Proxy "http://127.0.0.1:{RELAY_PORT}";\\nAcquire::http::Pipeline-Depth "0";\\nAcquire::Retries "3";\\n' > /etc/apt/apt.conf.d/99-rehearsal-proxy
printf '[global]\\nproxy = http://127.0.0.1:{RELAY_PORT}\\n' > /etc/pip.conf
echo "rehearsal: the registry relay"
cd {q(str(ROOT))} && {q(python)} -m infra.rehearse.proxy relay /run/rehearsal/proxy.sock {RELAY_PORT} &
if [ -f /rehearsal/store-hosts ]; then
  cat /rehearsal/store-hosts >> /etc/hosts
  echo 'REQUESTS_CA_BUNDLE=/rehearsal/store-ca.pem' >> /etc/environment
  echo 'Defaults env_keep += "REQUESTS_CA_BUNDLE"' > /etc/sudoers.d/91-rehearsal-store; chmod 440 /etc/sudoers.d/91-rehearsal-store
  ip addr add {dataplane.IMDS_ADDRESS}/32 dev lo
  cd {q(str(ROOT))} && {q(python)} -m infra.rehearse.dataplane imds {m.principal} > /var/log/rehearsal-imds.log 2>&1 &
fi
cd /
{q(python)} -c 'import socket, sys, time
for _ in range(1200):
    try:
        socket.create_connection(("127.0.0.1", {RELAY_PORT}), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("rehearsal: the registry relay did not start in 120 s")'
echo "rehearsal: cloud-init's stages"
cloud-init init --local > /var/log/rehearsal-boot.log 2>&1 || true
cloud-init init >> /var/log/rehearsal-boot.log 2>&1 || true
/usr/sbin/sshd -D -e 2>> /var/log/rehearsal-sshd.log &
cloud-init modules --mode config >> /var/log/rehearsal-boot.log 2>&1 || true
cloud-init modules --mode final >> /var/log/rehearsal-boot.log 2>&1 || true
wait
"""


def _mount_script(m: Machine, d: Path, sock_dir: Path) -> str:
    """The host's root; the project and its interpreter (which the host's relay runs) stay visible
    when they live under /tmp or /run, which the host gets empty."""
    root = d / "root"
    shown = sorted({p for p in (ROOT, Path(sys.prefix)) if p.is_relative_to("/tmp") or p.is_relative_to("/run")})
    binds = "\n".join(f"mkdir -p {root}{p} && mount --bind {p} {root}{p}" for p in shown)
    return f"""set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=/,upperdir={d}/upper,workdir={d}/work {root}
mount -t proc proc {root}/proc
mount -t sysfs sysfs {root}/sys
mount --rbind /dev {root}/dev
mount --rbind /sys/fs/cgroup {root}/sys/fs/cgroup
mkdir -p {d}/docker {root}/var/lib/docker && mount --bind {d}/docker {root}/var/lib/docker
mount -t tmpfs tmpfs {root}/run
mount -t tmpfs tmpfs {root}/tmp
mkdir -p {root}/run/rehearsal && mount --bind {sock_dir} {root}/run/rehearsal
{binds}
hostname {m.vm}
exec chroot {root} /bin/sh /rehearsal/init.sh
"""


class Hosts:
    """Builds, and always tears down, the hosts of one rehearsal under ``work`` (a tmpfs path)."""

    LOGS = ("var/log/cloud-init-output.log", "var/log/cloud-init.log", "var/log/rehearsal-boot.log", "var/log/rehearsal-sshd.log",
            "var/log/rehearsal-dockerd.log", "var/log/rehearsal-imds.log")
    NETNS_ETC = Path("/etc/netns") / CTL  # ip netns exec binds its files over /etc: the controller's name for the store

    def __init__(self, r: Rehearsed, plan: Any, work: Path, log: Any = print, keep: Path | None = None, with_store: bool = True) -> None:
        """``keep``: where each host's boot, cloud-init, sshd and dockerd logs are copied at teardown;
        ``with_store``: the results store stood in (Azurite, its gate, the hosts' IMDS)."""
        self.r, self.plan, self.work, self.log, self.keep = r, plan, work, log, keep
        self.store = results_store.spec(r) if with_store else None
        self.store_ca: Path | None = None
        self.machines = machines(r, plan)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.inits: dict[str, subprocess.Popen[bytes]] = {}
        self.namespaces: list[str] = []

    def __enter__(self) -> Hosts:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "link", "set", "lo", "up"], ns=name)

    def _port(self, switch: str, peer_ns: str, peer_if: str, tag: str) -> None:
        outside = f"{tag}"[:15]
        run(["ip", "link", "add", outside, "type", "veth", "peer", "name", peer_if, "netns", peer_ns], ns=FABRIC)
        run(["ip", "link", "set", outside, "master", switch, "up"], ns=FABRIC)
        run(["ip", "link", "set", peer_if, "up"], ns=peer_ns)

    def build(self) -> None:
        if any(n.startswith(PREFIX) for n in run(["ip", "netns", "list"]).stdout.split()):
            raise LabError(f"namespaces {PREFIX}* exist: another rehearsal runs, or one was killed (ip netns del them)")
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # apt reads the hosts' local repository as its own unprivileged user
        sock_dir = self.work / "sock"
        sock_dir.mkdir(exist_ok=True)
        sock = sock_dir / "proxy.sock"
        sock.unlink(missing_ok=True)
        self.procs.append(subprocess.Popen([sys.executable, "-m", "infra.rehearse.proxy", "serve", str(sock)], cwd=ROOT,
                                           start_new_session=True))
        self._ns(FABRIC)
        for sw in ("admin", "vnet"):
            run(["ip", "link", "add", sw, "type", "bridge"], ns=FABRIC)
            run(["ip", "link", "set", sw, "up"], ns=FABRIC)
        self._ns(CTL)
        self._port("admin", CTL, "eth0", "a-ctl")
        run(["ip", "addr", "add", f"{CONTROLLER}/{ADMIN_NET.prefixlen}", "dev", "eth0"], ns=CTL)
        vnet = self.plan.vnet
        for i, m in enumerate(self.machines):
            self._ns(m.ns)
            self._port("admin", m.ns, "eth1", f"a{i}")
            self._port("vnet", m.ns, "eth0", f"v{i}")
            run(["ip", "addr", "add", f"{m.public}/{ADMIN_NET.prefixlen}", "dev", "eth1"], ns=m.ns)
            run(["ip", "addr", "add", m.private, "dev", "eth0"], ns=m.ns)
            run(["ip", "route", "add", vnet, "dev", "eth0"], ns=m.ns)
        if self.store is not None:
            self.store_ca = self._start_store(self.store)
        brokers = next(m for m in self.machines if m.vm == "brokers")
        for m in self.machines:
            if m is not brokers:  # Azure's fabric delivers a NIC's secondary addresses to its VM
                for a in brokers.secondary:
                    run(["ip", "route", "add", f"{a}/32", "via", brokers.private.split("/")[0], "dev", "eth0"], ns=m.ns)
        image = self.work / "broker-image.tar"
        standins.broker_image(image)
        for m in self.machines:
            d = self.work / m.vm
            for sub in ("upper/rehearsal", "work", "root"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "upper/rehearsal/init.sh").write_text(_init_script(m, sys.executable))
            (d / "upper/rehearsal/systemctl").write_text(standins.systemctl(self.plan.broker_image))
            standins.compose_repo(d / "upper/rehearsal/apt")
            shutil.copyfile(image, d / "upper/rehearsal/broker-image.tar")
            (d / "upper/rehearsal/user-data").write_text(m.user_data)
            (d / "upper/rehearsal/meta-data").write_text(f"instance-id: {m.instance_id}\nlocal-hostname: {m.vm}\n")
            if self.store is not None and self.store_ca is not None:
                (d / "upper/rehearsal/store-hosts").write_text(f"{results_store.ADDRESS} {self.store.host}\n")
                (d / "upper/rehearsal/store-ca.pem").write_text(results_store.ca_bundle(self.store_ca))
            out = open(d / "console.log", "wb")  # noqa: SIM115 - kept open for the host's life
            # nsenter, not ip netns exec: that one remounts /sys, hiding the cgroup hierarchies dockerd needs
            init = subprocess.Popen(["nsenter", f"--net=/run/netns/{m.ns}", "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                                     "sh", "-c", _mount_script(m, d, sock_dir)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(init)
            self.inits[m.vm] = init
            self.log(f"host {m.vm}: namespace {m.ns}, public {m.public}, private {m.private}"
                     + (f", secondary {', '.join(m.secondary)}" if m.secondary else ""))
        for s in (*STAND_INS, *standins.STAND_INS, *(results_store.STAND_INS if self.store else ())):
            self.log(f"stand-in: {s}")
        self.wait_ssh()
        if self.store is not None:
            self._wait_store()

    def _start_store(self, spec: results_store.StoreSpec) -> Path:
        """Azurite and its gate in the controller's namespace at the store's address; the
        controller resolves the account's host name there too. Its readiness is awaited later,
        while the hosts boot."""
        d = self.work / "store"
        cert, key = dataplane.certificate(d, names=[spec.host], ips=[results_store.ADDRESS, "127.0.0.1"])
        run(["ip", "addr", "add", f"{results_store.ADDRESS}/{ADMIN_NET.prefixlen}", "dev", "eth0"], ns=CTL)
        self.NETNS_ETC.mkdir(parents=True, exist_ok=True)
        (self.NETNS_ETC / "hosts").write_text(f"127.0.0.1 localhost\n{results_store.ADDRESS} {spec.host}\n")
        cfg = d / "store.json"
        cfg.write_text(json.dumps({"cert": str(cert), "key": str(key), "account": spec.account, "container": spec.container,
                                   "roles": spec.roles, "address": results_store.ADDRESS}))
        self.store_out = open(d / "store.log", "w+b")  # noqa: SIM115 - kept open for the store's life
        self.store_proc = subprocess.Popen(["ip", "netns", "exec", CTL, sys.executable, "-m", "infra.rehearse.dataplane", "store", str(cfg)],
                                           cwd=ROOT, stdout=self.store_out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.store_proc)
        return cert

    def _wait_store(self, limit_s: float | None = None) -> None:
        """Until the store says ``ready`` (Azurite started, the container made); bounded (5
        minutes, 30 in the emulated micro-VM, where node's start alone takes minutes), and
        failing at once when it has ended."""
        limit_s = limit_s if limit_s is not None else (1800.0 if microvm.in_guest() else 300.0)
        t0 = time.monotonic()
        log = self.work / "store" / "store.log"
        while b"ready" not in log.read_bytes():
            if self.store_proc.poll() is not None or time.monotonic() - t0 > limit_s:
                tail = log.read_bytes().decode(errors="replace").strip().splitlines()[-3:]
                state = "ended" if self.store_proc.poll() is not None else f"still starting after {limit_s:.0f}s"
                raise LabError(f"the results store did not start ({state}: {' | '.join(tail) or 'no output'})")
            time.sleep(0.5)
        self.log(f"results store: {self.store.url if self.store else ''} at {results_store.ADDRESS} (Azurite behind the role gate)")

    BOOT_LOGS = ("console.log", "upper/var/log/rehearsal-boot.log", "upper/var/log/cloud-init.log", "upper/var/log/cloud-init-output.log")

    def _boot_progress(self, vm: str) -> int:
        """How much the host's first script and cloud-init have logged so far: its sign of life
        before sshd starts."""
        size = 0
        for rel in self.BOOT_LOGS:
            try:
                size += (self.work / vm / rel).stat().st_size
            except OSError:
                pass
        return size

    def _boot_stage(self, vm: str) -> str:
        """The last line the host's first script or cloud-init wrote."""
        lines: list[str] = []
        for rel in ("console.log", "upper/var/log/cloud-init.log"):
            try:
                lines += [ln for ln in (self.work / vm / rel).read_text(errors="replace").splitlines() if ln.strip()][-1:]
            except OSError:
                pass
        return " | ".join(line[-160:] for line in lines) or "nothing logged yet"

    def wait_ssh(self, quiet_s: float | None = None, limit_s: float = 3600.0) -> None:
        """Until every host's sshd answers (its cloud-init wrote the host key first); bounded by
        progress: failing once no waiting host has logged anything for ``quiet_s`` (2 minutes,
        10 in the emulated micro-VM, where one interpreter's start takes seconds and a boot stage
        minutes, logging all along), past ``limit_s`` in any case, and at once when a host's init
        has died."""
        quiet_s = quiet_s if quiet_s is not None else (600.0 if microvm.in_guest() else 120.0)
        left = {m.vm: m for m in self.machines}
        t0 = last = shown = time.monotonic()
        seen = {vm: self._boot_progress(vm) for vm in left}
        while left:
            for vm, m in list(left.items()):
                # bash, not python: emulated, an interpreter's start alone takes seconds
                cp = run(["timeout", "5", "bash", "-c", f"exec 3<>/dev/tcp/{m.public}/22"], ns=CTL, check=False, timeout=30)
                if cp.returncode == 0:
                    del left[vm]
            dead = [vm for vm, p in self.inits.items() if p.poll() is not None]
            if dead:
                raise LabError(f"the init of rehearsal host {dead[0]} ended (status {self.inits[dead[0]].returncode}); "
                               f"see {self.work / dead[0] / 'console.log'}")
            if self.store is not None and self.store_proc.poll() is not None:
                self._wait_store()  # says why it ended
            now = {vm: self._boot_progress(vm) for vm in left}
            if any(now[vm] != seen.get(vm) for vm in left):
                seen, last = now, time.monotonic()
            if left and time.monotonic() - shown > 60:  # long under emulation: say where each host is
                shown = time.monotonic()
                for vm_name in left:
                    self.log(f"waiting for sshd on {vm_name} ({shown - t0:.0f}s): {self._boot_stage(vm_name)}")
            if left and (time.monotonic() - last > quiet_s or time.monotonic() - t0 > limit_s):
                raise LabError(f"sshd did not answer on {', '.join(left)}: they logged nothing for {time.monotonic() - last:.0f}s "
                               f"({time.monotonic() - t0:.0f}s in all)")
            if left:
                time.sleep(0.5)

    def teardown(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        keep = self.keep
        for m in self.machines if keep is not None else ():
            for rel in (*self.LOGS, "console.log"):
                src = self.work / m.vm / ("upper/" + rel if rel.startswith("var/") else rel)
                if src.is_file() and keep is not None:
                    dst = keep / m.vm / Path(rel).name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        self.procs.clear()
        shutil.rmtree(self.work / "sock", ignore_errors=True)
        if self.store is not None:
            shutil.rmtree(self.NETNS_ETC, ignore_errors=True)

