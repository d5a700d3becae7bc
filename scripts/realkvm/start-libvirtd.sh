#!/bin/bash
# Start a private libvirtd (and its virtlogd) for the KVM/QEMU test stage, without systemd:
#   start-libvirtd.sh DIR [CACHE [PORT]]
# The daemons run as root in their own mount namespace, where DIR's etc, lib, run, log and cache
# are mounted over /etc/libvirt, /var/lib/libvirt, /run/libvirt, /var/log/libvirt and
# /var/cache/libvirt: the host's libvirt configuration and domains are never seen or touched, and
# everything the daemons keep is under DIR, but for libvirt's cache (what it learnt of the QEMU
# binaries, ~5 s to learn again), which is CACHE when given, to be kept across runs. Their pid files are DIR/libvirtd.pid and
# DIR/virtlogd.pid; the socket is DIR/sock/libvirt-sock (URI qemu+unix:///system?socket=...).
# QEMU runs as root without a security driver (the test guest's kernel may be anywhere), and the
# cpu and cpuacct cgroup controllers are the only ones libvirt manages (the scheduler needs no
# others). Each daemon gets a host uuid of its own (libvirt refuses to migrate a domain to a host
# of the same uuid) and listens for QEMU's migration streams on 127.0.0.1, ports PORT..PORT+63
# (default 49152): two daemons side by side migrate to each other with distinct PORTs. Returns
# once the socket answers.
set -euo pipefail

DIR=$(realpath "$1")
CACHEDIR=${2:-$DIR/cache}
PORT=${3:-49152}
mkdir -p "$DIR"/{etc/qemu,lib,run,log,sock} "$CACHEDIR"
cat > "$DIR/etc/libvirtd.conf" <<CONF
unix_sock_dir = "$DIR/sock"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$DIR/libvirtd.log"
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
CONF
cat > "$DIR/etc/virtlogd.conf" <<CONF
log_outputs = "3:file:$DIR/virtlogd.log"
CONF
cat > "$DIR/etc/qemu.conf" <<CONF
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
namespaces = []
cgroup_controllers = [ "cpu", "cpuacct" ]
stdio_handler = "logd"
migration_port_min = $PORT
migration_port_max = $((PORT + 63))
CONF
for d in /etc/libvirt /var/lib/libvirt /run/libvirt /var/log/libvirt /var/cache/libvirt; do
  mkdir -p "$d"
done
unshare --mount --propagation private -- /bin/sh -ec "
  mount --bind '$DIR/etc' /etc/libvirt
  mount --bind '$DIR/lib' /var/lib/libvirt
  mount --bind '$DIR/run' /run/libvirt
  mount --bind '$DIR/log' /var/log/libvirt
  mount --bind '$CACHEDIR' /var/cache/libvirt
  virtlogd --daemon --pid-file '$DIR/virtlogd.pid' --config /etc/libvirt/virtlogd.conf
  exec libvirtd --daemon --pid-file '$DIR/libvirtd.pid' --config /etc/libvirt/libvirtd.conf
"
for _ in $(seq 100); do
  if virsh -c "qemu+unix:///system?socket=$DIR/sock/libvirt-sock" version >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.1
done
echo "realkvm: libvirtd did not answer on $DIR/sock/libvirt-sock within 10 s (see $DIR/libvirtd.log)" >&2
exit 1
