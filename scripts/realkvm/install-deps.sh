#!/bin/bash
# Install what the real-KVM test stage needs on a Debian 12 host: libvirtd with its QEMU driver,
# virsh, QEMU, and the assembler and linker for the guest. Idempotent and quiet when all is there.
# libvirt's QEMU driver refuses to start without its default user and group (libvirt-qemu), which
# Debian's libvirt-daemon-system would make: we make them instead of installing that package
# (its services and default network are not wanted here; start-libvirtd.sh runs QEMU as root).
set -euo pipefail

PKGS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 binutils gcc"
need=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ] || ! getent passwd libvirt-qemu >/dev/null || ! getent group libvirt-qemu >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "realkvm: packages or the libvirt-qemu user missing and not root: run this as root" >&2
    exit 1
  fi
fi
if [ -n "$need" ]; then
  echo "[realkvm install] apt-get install$need" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
