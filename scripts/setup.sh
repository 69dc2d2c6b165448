#!/usr/bin/env bash
# Installs what mqttlab needs on a Debian or Ubuntu machine: the system tools (apt) and a
# virtualenv in .venv with the project. `--dev` adds what the tests need (real validators,
# the micro-VM for IPVS on kernels without it, headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (sudo): it installs packages with apt-get" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(mosquitto mosquitto-clients ipvsadm haproxy keepalived nftables iptables conntrack iproute2 procps kmod util-linux python3-venv python3-pip openssh-client)
if [ "$dev" = 1 ]; then
  # erlang-base and erlang-ssl run the emqtt-bench escript (found via EMQTT_BENCH or PATH) for the comparisons
  # openssh-server, sudo and locales: the rehearsal's hosts (their sshd, the steps' sudo, the image's locale)
  pkgs+=(docker-compose cloud-init qemu-system-x86 busybox-static chromium time erlang-base erlang-ssl openssh-server sudo locales)
fi
echo "== apt-get install ${pkgs[*]}"
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
if [ "$dev" = 1 ] && ! ls /lib/modules/*/kernel/net/netfilter/ipvs/ip_vs.ko* >/dev/null 2>&1; then
  # a stock kernel with IPVS modules for the micro-VM (not booted on this host)
  apt-get install -y -q --no-install-recommends linux-image-amd64 >/dev/null 2>&1 \
    || apt-get install -y -q --no-install-recommends linux-image-generic >/dev/null
fi
# the lab's brokers are started by the lab itself, in its namespaces; the packaged service is not used
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extra="analysis"
[ "$dev" = 1 ] && extra="dev"
echo "== pip install -e .[$extra] into .venv"
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[$extra]"
if [ "$dev" = 1 ]; then
  # Azurite, Microsoft's Blob service emulator (npm), for the results store's tests: .tools/azurite
  if ! command -v npm >/dev/null; then
    apt-get install -y -q --no-install-recommends nodejs npm >/dev/null
  fi
  echo "== npm install azurite into .tools/azurite"
  mkdir -p .tools/azurite
  npm install --prefix .tools/azurite --no-audit --no-fund --loglevel=error azurite@3 >/dev/null
fi
echo "== ready: $(.venv/bin/mqttlab --help | head -1)"
