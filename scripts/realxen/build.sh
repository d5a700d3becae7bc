#!/bin/bash
# Build the emulated Xen machine's boot files into the cache (after install-deps.sh):
#   xen               the hypervisor, gunzipped (QEMU's multiboot loader cannot read the .gz)
#   vmlinuz           the Linux kernel of dom0
#   dom0-initrd.gz    dom0's whole root filesystem: busybox, the xl tools and their libraries,
#                     the xen/virtio/9p modules and our /init (dom0-init.sh)
#   tiny-guest        the test guest (tiny-guest.c): created in 0.7 s, answers Xen's requests
#   xl-shim           the host-side xl (xl-shim.c)
# Rebuilt only when these scripts or the kernel change (a stamp records what was built).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${XEND_REALXEN_CACHE:-/var/cache/xend-ext-realxen}
XENVER=4.17
XENBIN=/usr/lib/xen-$XENVER/bin
KVER=$(cat "$CACHE/kernel-version" 2>/dev/null) || { echo "realxen: run $HERE/install-deps.sh first" >&2; exit 1; }
KROOT=$CACHE/kernel-$KVER
KMODS=$KROOT/lib/modules/$KVER/kernel
OUT=$CACHE/machine

stamp=$(cat "$HERE/build.sh" "$HERE/dom0-init.sh" "$HERE/tiny-guest.s" \
  "$HERE/tiny-guest.c" "$HERE/tiny-guest.lds" "$HERE/xl-shim.c" /boot/xen-$XENVER-amd64.gz | sha256sum | cut -c1-16)-$KVER
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ]; then
  exit 0
fi
echo "[realxen build] building $OUT" >&2
rm -rf "$OUT.new"
mkdir -p "$OUT.new"
cd "$OUT.new"

gunzip -c /boot/xen-$XENVER-amd64.gz > xen
cp "$KROOT/boot/vmlinuz-$KVER" vmlinuz

copy_with_libs() {   # ROOT FILE: the file and its shared-library closure, at the same paths
  local root=$1 f=$2
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
  ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    if [ ! -f "$root$lib" ]; then
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    fi
  done
}
base_tree() {        # ROOT: directories and busybox with its applet links made now (not at boot)
  local r=$1
  mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,run,tmp,root,var/lib,var/log,usr/bin,usr/sbin,lib/modules}
  cp /bin/busybox "$r/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"
  done
  for applet in init poweroff reboot halt modprobe insmod; do ln -sf /bin/busybox "$r/sbin/$applet"; done
  ln -sfn /run "$r/var/run"
}

# ---- the guest, and the host-side xl
# a kernel: no libc, no red zone (Xen may push frames on our stack), no SSE (no FPU state set up)
as -o tiny-head.o "$HERE/tiny-guest.s"
gcc -O2 -Wall -Wextra -ffreestanding -fno-builtin -fno-pic -fno-pie -mno-red-zone -mgeneral-regs-only \
  -fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none -c -o tiny-main.o "$HERE/tiny-guest.c"
ld -nostdlib -T "$HERE/tiny-guest.lds" -o tiny-guest tiny-head.o tiny-main.o
rm tiny-head.o tiny-main.o
gcc -O2 -Wall -o xl-shim "$HERE/xl-shim.c"

# ---- dom0
R=dom0-root
base_tree "$R"
for b in xl libxl-save-helper xenstored xen-init-dom0 xenconsoled xenstore-control; do
  copy_with_libs "$R" "$XENBIN/$b"
done
ln -sf "$XENBIN/xl" "$R/usr/sbin/xl"
# glibc dlopen()s libgcc_s for pthread_cancel on libxl's error paths; without it xl aborts
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$R/lib/x86_64-linux-gnu/"
mkdir -p "$R/etc/xen" "$R/var/lib/xen" "$R/var/lib/xenstored" "$R/var/log/xen"
[ -f /etc/xen/xl.conf ] && cp /etc/xen/xl.conf "$R/etc/xen/"
# Modules with their dependencies (read from each module's .modinfo: the .deb has no modules.dep
# and this host may have no kmod). dom0-init.sh loads lib/modules/ORDER's list with insmod.
python3 - "$KMODS" "$R/lib/modules" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs \
    virtio_pci virtio_console 9pnet_virtio 9p <<'PY'
import pathlib, re, shutil, sys
kmods, dest, wanted = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
files = {p.name[:-3].replace("-", "_"): p for p in kmods.rglob("*.ko")}
order = []
def need(name):
    key = name.replace("-", "_")
    if key in order:
        return
    if key not in files:
        sys.exit(f"realxen build: no module {name} under {kmods}")
    m = re.search(rb"(?:^|\0)depends=([^\0]*)", files[key].read_bytes())
    for dep in filter(None, (m.group(1).decode() if m else "").split(",")):
        need(dep)
    order.append(key)
for name in wanted:
    need(name)
for key in order:
    shutil.copy(files[key], dest / files[key].name)
(dest / "ORDER").write_text("".join(files[k].name + "\n" for k in order))
PY
cp "$HERE/dom0-init.sh" "$R/init"
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > dom0-initrd.gz
rm -rf "$R"
echo "$stamp" > stamp
cd "$CACHE"
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
echo "[realxen build] done: $(du -sh "$OUT" | cut -f1)" >&2
