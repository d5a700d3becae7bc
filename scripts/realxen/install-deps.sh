#!/bin/bash
# Install what the real-Xen test stage needs on a Debian 12 host, and fetch the Linux kernel that
# runs as dom0 and as the tiny PV guest. Idempotent and quiet when everything is already there.
#
# The host only uses these packages as a file source: QEMU runs the machine, the hypervisor image
# and the xl tools are copied into the emulated dom0. The kernel .deb is downloaded and only the
# files we need are unpacked into the cache (never installed: no initramfs/bootloader hooks here).
set -euo pipefail

CACHE=${XEND_REALXEN_CACHE:-/var/cache/xend-ext-realxen}
XENVER=4.17
PKGS="qemu-system-x86 xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER busybox-static cpio gzip python3 gcc libc6-dev binutils"

log() { echo "[realxen install] $*" >&2; }

need=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "realxen: packages missing ($need) and not root: install them with apt-get as root" >&2
    exit 1
  fi
  log "apt-get install$need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# linux-image-amd64 is a metapackage; the versioned image it depends on carries the files.
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
KPKG=$(kpkg)
if [ -z "$KPKG" ]; then
  apt-get update -qq
  KPKG=$(kpkg)
fi
[ -n "$KPKG" ] || { echo "realxen: apt knows no linux-image-amd64 (is a Debian archive configured?)" >&2; exit 1; }
KVER=${KPKG#linux-image-}
KROOT=$CACHE/kernel-$KVER
if [ ! -f "$KROOT/.complete" ]; then
  log "downloading $KPKG into $KROOT (unpacked, not installed)"
  rm -rf "$KROOT"
  mkdir -p "$KROOT"
  dl=$(mktemp -d)
  chmod 777 "$dl"   # apt-get download runs as the _apt user and must write there
  (cd "$dl" && apt-get download -qq "$KPKG")
  # Only the kernel and the driver directories dom0 loads (about 15 MB of 400).
  dpkg-deb --fsys-tarfile "$dl"/"$KPKG"_*.deb | tar -x -C "$KROOT" --wildcards \
    "./boot/vmlinuz-$KVER" \
    "./lib/modules/$KVER/kernel/drivers/xen/*" "./lib/modules/$KVER/kernel/drivers/virtio/*" \
    "./lib/modules/$KVER/kernel/drivers/char/virtio_console.ko" \
    "./lib/modules/$KVER/kernel/fs/9p/*" "./lib/modules/$KVER/kernel/net/9p/*" \
    "./lib/modules/$KVER/kernel/fs/netfs/*" "./lib/modules/$KVER/kernel/fs/fscache/*"
  rm -rf "$dl"
  touch "$KROOT/.complete"
fi
ln -sfn "kernel-$KVER" "$CACHE/kernel"
echo "$KVER" > "$CACHE/kernel-version"
log "ready: Xen $XENVER packages, kernel $KVER in $CACHE"
