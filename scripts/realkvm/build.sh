#!/bin/bash
# Build the KVM/QEMU test guest (tiny-kvm.S, a multiboot kernel) into the cache. Rebuilt only when
# this script or the guest changes.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${XEND_REALKVM_CACHE:-/var/cache/xend-ext-realkvm}
stamp=$(cat "$HERE/build.sh" "$HERE/tiny-kvm.S" | sha256sum | cut -c1-16)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$OUT"
chmod 755 "$OUT"
tmp=$(mktemp -d)
gcc -m32 -c -o "$tmp/tiny-kvm.o" "$HERE/tiny-kvm.S"
ld -m elf_i386 -nostdlib -N --no-warn-rwx-segments -Ttext=0x100000 -e _start -o "$tmp/tiny-kvm" "$tmp/tiny-kvm.o"
install -m 644 "$tmp/tiny-kvm" "$OUT/tiny-kvm"
rm -rf "$tmp"
echo "$stamp" > "$OUT/stamp"
