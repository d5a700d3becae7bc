#!/bin/sh
# The "nemesis" demonstration of scheduling domains (seed 001) with xm:
#
#     sh ten_percent.sh http://127.0.0.1:9363/     (or a Unix socket path such as ./var/state/xen-api.sock)
#
# "Cap one domain at 10% (or a similarly small number), then add a second domain to the capped
# domain [...]. Both domains together will only be allocated 10% of the master's available
# timeslices, which they will share."
#
# It starts two domains, nemesis-guest and nemesis-stub (the seed's first use: an HVM guest and the
# stub domain that emulates its devices), both with one vCPU pinned to pCPU 0 so that they compete
# for it, caps the guest at 10 % of a pCPU, puts the stub into the guest's scheduling domain, and
# takes it out again. After each step it prints each domain's VM_metrics.VCPUs_utilisation: the
# share of a pCPU the server's scheduler model gives it when every vCPU is busy (0.10 + 0.90, then
# 0.05 + 0.05, then 0.10 + 0.90 again). Everything it makes is removed at the end, also when a step
# fails. XM (default xm) and PYTHON (default python3) say which programs to run.
set -eu

URL=${1:?usage: ten_percent.sh SERVER-URL}
XM=${XM:-xm}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
GUEST=nemesis-guest
STUB=nemesis-stub

xm() { $XM --url "$URL" "$@"; }
step() { printf '\n== %s\n' "$*"; }

cleanup() {
    set +e
    xm sdom-destroy "$GUEST" 2>/dev/null
    for vm in "$GUEST" "$STUB"; do
        xm destroy "$vm" 2>/dev/null
        xm delete "$vm" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# One line per domain with its share of pCPU 0, then their sum.
shares() {
    xm list --json "$GUEST" "$STUB" | $PYTHON -c '
import json, sys
total = 0.0
for d in json.load(sys.stdin):
    share = sum(float(u) for u in d["metrics_record"].get("VCPUs_utilisation", {}).values())
    total += share
    print("%-14s %.2f of a pCPU" % (d["name_label"], share))
print("%-14s %.2f" % ("together", total))
'
}

step "Two domains, one vCPU each, both pinned to pCPU 0"
for vm in "$GUEST" "$STUB"; do
    printf 'name = "%s"\nmemory = 128\nvcpus = 1\ncpus = "0"\n' "$vm" > "$WORK/$vm.cfg"
    xm create "$WORK/$vm.cfg"
done
shares

step "Cap $GUEST at 10 % of one pCPU: $STUB gets the rest"
xm sched-credit -d "$GUEST" -c 10
xm sched-credit -d "$GUEST"
shares

step "$STUB joins $GUEST's scheduling domain: both share $GUEST's 10 %"
xm sdom-create "$GUEST"
xm sdom-add "$GUEST" "$STUB"
xm sdom-list
shares
xm sdom-list -l "$GUEST"

step "$STUB leaves the scheduling domain: it is free again"
xm sdom-remove "$STUB"
xm sdom-list
shares
