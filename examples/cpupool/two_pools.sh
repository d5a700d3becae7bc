#!/bin/sh
# Two CPU pools on one host with xm, and what they do to the domains' CPU shares.
#
#     sh two_pools.sh http://127.0.0.1:9363/     (or a Unix socket path such as ./var/state/xen-api.sock)
#
# It frees CPUs 2-5 from Pool-0, creates and starts pool "web" from web.pool (CPUs 2 and 3) and a
# second pool "batch" from the same file with overrides (any 2 free CPUs), starts two domains in
# web and one in batch, then moves one web domain to batch with 'xm cpupool-migrate'. Before and
# after the move it prints each domain's VM_metrics.VCPUs_utilisation: the share of a pCPU the
# server's scheduler model gives each vCPU when every vCPU is busy. A pool's CPUs are shared by
# its domains only, so the move halves the shares in batch and doubles them in web.
# Everything it makes is removed again at the end (also when a step fails), and the CPUs go back
# to Pool-0. XM (default xm) and PYTHON (default python3) say which programs to run; on a real Xen
# host (--backend xl) set KERNEL to a PV guest kernel the domains can boot.
set -eu

URL=${1:?usage: two_pools.sh SERVER-URL}
XM=${XM:-xm}
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)

xm() { $XM --url "$URL" "$@"; }
step() { printf '\n== %s\n' "$*"; }

cleanup() {
    set +e
    for vm in web1 web2 job1; do
        xm destroy "$vm" 2>/dev/null
        xm delete "$vm" 2>/dev/null
    done
    for pool in web batch; do
        xm cpupool-destroy "$pool" 2>/dev/null
        xm cpupool-delete "$pool" 2>/dev/null
    done
    for cpu in 2 3 4 5; do
        xm cpupool-cpu-add Pool-0 "$cpu" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# One line per domain: its pool and each vCPU's share of a pCPU (VM_metrics.VCPUs_utilisation).
shares() {
    xm list --json "$@" | $PYTHON -c '
import json, sys
for d in json.load(sys.stdin):
    use = d["metrics_record"].get("VCPUs_utilisation", {})
    cells = "  ".join("vCPU %s: %.2f" % (v, float(use[v])) for v in sorted(use, key=int))
    print("%-6s pool=%-7s %s" % (d["name_label"], d["pool_name"], cells))
'
}

step "Free CPUs 2-5 from Pool-0 (at boot it holds every CPU)"
for cpu in 2 3 4 5; do
    xm cpupool-cpu-remove Pool-0 "$cpu"
done
xm info | grep free_cpus

step "Pool web from web.pool (proposes CPUs 2 and 3), and pool batch (any 2 free CPUs)"
xm cpupool-create "$HERE/web.pool"
xm cpupool-new "$HERE/web.pool" name=batch cpus=2 description="batch jobs" 'other_config=["tier=batch"]'
xm cpupool-start batch
xm cpupool-list
xm cpupool-list -c

step "Domains: web1 and web2 in web, job1 in batch, 2 vCPUs each"
for vm in web1:web web2:web job1:batch; do
    name=${vm%%:*}
    printf 'name = "%s"\nmemory = 128\nvcpus = 2\npool = "%s"\n' "$name" "${vm#*:}" > "$WORK/$name.cfg"
    [ -z "${KERNEL:-}" ] || printf 'kernel = "%s"\n' "$KERNEL" >> "$WORK/$name.cfg"
    xm create "$WORK/$name.cfg"
done
xm list --pool=web
xm list --pool=batch

step "Before: 4 vCPUs share web's 2 CPUs, job1 has batch's 2 CPUs to itself"
shares web1 web2 job1

step "xm cpupool-migrate web2 batch"
xm cpupool-migrate web2 batch
xm cpupool-list

step "After: web1 has web to itself, web2 and job1 share batch"
shares web1 web2 job1
