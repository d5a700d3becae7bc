#!/bin/busybox sh
# /init of the emulated dom0 (the whole root filesystem is this initramfs).
# Brings up what xl needs (xen modules, xenfs, xenstored, xenconsoled), mounts the host's shared
# directories over 9p at the SAME paths as on the host (so the config files and save images the
# backend names mean the same on both sides), then serves xl commands on a virtio-serial port.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run && mkdir -p /run/lock /run/xen /run/xenstored
say() { echo "@@REALXEN $* uptime=$(cut -d' ' -f1 /proc/uptime)"; }
fail() { say "FAILED $*"; poweroff -f; sleep 30; }
say INIT
# the modules in dependency order (build.sh wrote ORDER)
for m in $(cat /lib/modules/ORDER); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done
mount -t xenfs xenfs /proc/xen || fail "mount xenfs"
# The shares: realxen.share=TAG:PATH on the kernel command line, one per host directory; and
# realxen.consoles=DIR, a shared directory where xenconsoled logs each guest's console (the host
# reads there whether a guest has booted).
consoles=/var/log/xen/console
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    realxen.share=*)
      spec=${arg#realxen.share=}; tag=${spec%%:*}; path=${spec#*:}
      mkdir -p "$path"
      mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none "$tag" "$path" || fail "mount 9p $tag at $path"
      ;;
    realxen.consoles=*) consoles=${arg#realxen.consoles=} ;;
  esac
done
xenstored --pid-file /run/xenstored.pid
i=0; while [ ! -S /run/xenstored/socket ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
xen-init-dom0 >/dev/null || fail "xen-init-dom0"
mkdir -p "$consoles"
# xl create waits for the guest console; without xenconsoled it times out and fails
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir="$consoles" || fail "xenconsoled"
dev=""; i=0
while [ -z "$dev" ] && [ $i -lt 100 ]; do
  for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name" 2>/dev/null)" = xlctl ] && dev=/dev/${p##*/}; done
  [ -z "$dev" ] && { sleep 0.1; i=$((i+1)); }
done
[ -n "$dev" ] || fail "no xlctl virtio port"
exec 3<>"$dev"
# a FIFO nobody writes: `read -t` on it waits without forking (a forked `sleep` 20 times a second
# kept half a host core busy under emulation while no host client was connected)
mkfifo /run/idle && exec 4<>/run/idle
say READY
# Protocol: the host sends "ID COMMAND-LINE" (ID: a token of its choosing, COMMAND-LINE shell-quoted);
# we answer with the command's stdout lines prefixed "O ", its stderr lines prefixed "E ", then
# "@@RC ID <exit status>". The ID lets a host client skip the late answer of a client that gave up.
# "@@POWEROFF" ends. Every xl call of the backend pays this loop's overhead, so it runs the command
# in a subshell (a fork, not sh's fork and exec) and runs sed only on output there is.
while :; do
  if IFS= read -r line <&3; then
    [ "$line" = "@@POWEROFF" ] && break
    id=${line%% *}
    ( eval "${line#* }" ) >/run/o 2>/run/e </dev/null; rc=$?
    { [ -s /run/o ] && sed 's/^/O /' /run/o; [ -s /run/e ] && sed 's/^/E /' /run/e; echo "@@RC $id $rc"; } >&3
  else
    read -t 0.05 _ <&4   # no host client connected: the port reads as end of file
  fi
done
say POWEROFF
sync
poweroff -f
sleep 30
