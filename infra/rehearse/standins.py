"""What the rehearsal hosts (Debian, no systemd, no registry but Debian's and PyPI) lack of an
Ubuntu 24.04 VM, each stood in at the narrowest point:

- ``docker-compose-v2`` (Ubuntu's package of the Compose v2 CLI plugin) does not exist in Debian
  12: a local apt repository offers a package of that name holding a CLI plugin that runs
  Debian's Compose 1.29 (``docker-compose``, on which it depends);
- ``systemctl enable --now docker`` (cloud-init's ``runcmd``): no systemd runs in the hosts, so
  a ``systemctl`` in ``/usr/local/sbin`` starts ``dockerd`` itself, for this unit only;
- the broker image (Docker Hub is out of reach): built offline from this machine's Mosquitto,
  its libraries and a ``mosquitto`` user (uid 1883, as in eclipse-mosquitto), run with the
  image's command, imported under the plan's image name when dockerd starts;
- the ``en_US.UTF-8`` locale the Ubuntu image has generated (cloud-init's ``locale`` module
  sets it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shlex
import subprocess
import tarfile
from pathlib import Path

STAND_INS = (
    "docker-compose-v2: Ubuntu's package is offered by a local repository as a Compose CLI plugin running Debian's docker-compose 1.29",
    "systemctl: no systemd in the hosts; 'systemctl enable --now docker' starts dockerd (no other unit is stood in)",
    "broker image: built offline from this machine's mosquitto (uid 1883 as in eclipse-mosquitto), imported as the plan's image",
    "locale: en_US.UTF-8 generated, as in the Ubuntu image",
)
IMAGE_CMD = '["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]'  # eclipse-mosquitto's CMD
PLUGIN = """#!/bin/sh
# mqttlab rehearsal: Ubuntu's docker-compose-v2 stood in by Debian's docker-compose 1.29
if [ "$1" = docker-cli-plugin-metadata ]; then
  echo '{"SchemaVersion":"0.1.0","Vendor":"mqttlab rehearsal","Version":"v2-stand-in","ShortDescription":"Docker Compose (1.29 as v2)"}'
  exit 0
fi
shift
exec docker-compose "$@"
"""


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        if len(data) % 2:
            out += b"\n"
    return out


def _tgz(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo("./" + d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compose_repo(repo: Path) -> None:
    """A trusted flat apt repository (``deb [trusted=yes] file:DIR ./``) with ``docker-compose-v2``."""
    repo.mkdir(parents=True, exist_ok=True)
    control = ("Package: docker-compose-v2\nVersion: 2.0.0~rehearsal\nArchitecture: all\nMaintainer: mqttlab rehearsal <root@localhost>\n"
               "Depends: docker-compose\nDescription: stand-in for Ubuntu's Compose v2 plugin (runs docker-compose 1.29)\n")
    deb = _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", _tgz({"control": (control.encode(), 0o644)})),
               ("data.tar.gz", _tgz({"usr/libexec/docker/cli-plugins/docker-compose": (PLUGIN.encode(), 0o755)}))])
    name = "docker-compose-v2_2.0.0~rehearsal_all.deb"
    (repo / name).write_bytes(deb)
    entry = control + f"Filename: ./{name}\nSize: {len(deb)}\nSHA256: {hashlib.sha256(deb).hexdigest()}\n\n"
    (repo / "Packages").write_text(entry)
    (repo / "Packages.gz").write_bytes(gzip.compress(entry.encode(), mtime=0))


def _libraries(binaries: list[str]) -> list[str]:
    out: set[str] = set()
    for b in binaries:
        for line in subprocess.run(["ldd", b], capture_output=True, text=True, check=True).stdout.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                out.add(path)
    return sorted(out)


def broker_image(tar_path: Path) -> None:
    """The broker image's root as a tarball for ``docker import``."""
    binaries = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto_sub", "/usr/bin/mosquitto_pub"]
    files: dict[str, tuple[bytes, int]] = {}
    for p in [*binaries, *_libraries(binaries), "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"]:
        real = Path(p).resolve()
        files[p.lstrip("/")] = (real.read_bytes(), 0o755)
        if str(real) != p:
            files[str(real).lstrip("/")] = (real.read_bytes(), 0o755)
    files["etc/passwd"] = (b"root:x:0:0:root:/root:/bin/false\nmosquitto:x:1883:1883:mosquitto:/var/empty:/bin/false\n", 0o644)
    files["etc/group"] = (b"root:x:0:\nmosquitto:x:1883:\n", 0o644)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d, uid in (("mosquitto", 0), ("mosquitto/config", 0), ("mosquitto/data", 1883), ("mosquitto/log", 1883), ("tmp", 0),
                       ("var/empty", 0), ("lib64", 0), ("usr/sbin", 0), ("usr/bin", 0), ("lib/x86_64-linux-gnu", 0),
                       ("usr/lib/x86_64-linux-gnu", 0)):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, uid, uid
            tar.addfile(info)
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    tar_path.write_bytes(buf.getvalue())


def systemctl(image: str, log: str = "/var/log/rehearsal-dockerd.log") -> str:
    """``/usr/local/sbin/systemctl`` of a host: dockerd for ``docker``, nothing else."""
    q = shlex.quote(image)
    return f"""#!/bin/sh
# mqttlab rehearsal: no systemd here; only the unit the program starts is stood in
case "$*" in
  "enable --now docker"|"start docker"|"restart docker")
    if ! docker info >/dev/null 2>&1; then
      # as systemd would: a clean environment, not the SSH/sudo session's (its
      # XDG_RUNTIME_DIR=/run/user/0 does not exist without logind, and runc then
      # fails every `docker exec`)
      nohup env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        dockerd > {shlex.quote(log)} 2>&1 &
      i=0
      until docker info >/dev/null 2>&1; do
        i=$((i+1)); [ $i -gt 120 ] && {{ echo "rehearsal: dockerd did not answer within 120 s" >&2; exit 1; }}; sleep 1
      done
    fi
    docker image inspect {q} >/dev/null 2>&1 || docker import --change 'CMD {IMAGE_CMD}' /rehearsal/broker-image.tar {q} >/dev/null
    echo "rehearsal: systemctl $* stood in: dockerd started, image {image} imported"
    exit 0;;
  *)
    echo "rehearsal: systemctl $* is not stood in" >&2
    exit 1;;
esac
"""
