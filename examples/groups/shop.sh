#!/bin/sh
# A group of domains with xm (seed 004): create it from a group config, see the order in which its
# members start, save the whole group and restore it.
#
#     sh shop.sh http://127.0.0.1:9363/     (or a Unix socket path such as ./var/state/xen-api.sock)
#
# `xm grp-create shop.grp` defines shop-db and shop-web from db.cfg and web.cfg (the domain configs
# shop.grp names), the group "shop" with both, and starts them in ascending order: shop-db (order 0)
# first, then shop-web (order 1). The domain IDs show that order: a domain gets the next free ID
# when it starts. `xm grp-save` then saves both (in descending order) to a directory and halts
# them; `xm grp-restore` brings the group back, in ascending order again. The directory is a path
# in the server's image directory (xend-ext serve --image-dir, default <state dir>/images): this
# script names it shop-<pid> there and lists it through IMAGES (default ./var/state/images), so run
# it on the server's host. Everything it makes is removed at the end, also when a step fails. XM (default xm) and PYTHON (default python3) say which programs to run; on a
# real Xen host (--backend xl) set KERNEL to a PV guest kernel the domains can boot.
set -eu

URL=${1:?usage: shop.sh SERVER-URL}
XM=${XM:-xm}
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGES=${IMAGES:-./var/state/images}
SAVED=shop-$$
CONFIGS=$HERE
if [ -n "${KERNEL:-}" ]; then  # the configs with the kernel added, beside the saved images
    CONFIGS=$(mktemp -d)
    cp "$HERE/shop.grp" "$CONFIGS/"
    for cfg in db web; do
        { cat "$HERE/$cfg.cfg"; printf 'kernel = "%s"\n' "$KERNEL"; } > "$CONFIGS/$cfg.cfg"
    done
fi

xm() { $XM --url "$URL" "$@"; }
step() { printf '\n== %s\n' "$*"; }

cleanup() {
    set +e
    xm grp-destroy shop >/dev/null 2>&1
    xm grp-delete shop >/dev/null 2>&1
    for vm in shop-db shop-web; do
        xm destroy "$vm" 2>/dev/null
        xm delete "$vm" 2>/dev/null
    done
    rm -rf "${IMAGES:?}/$SAVED"
    [ "$CONFIGS" = "$HERE" ] || rm -rf "$CONFIGS"
}
trap cleanup EXIT

# The members of a group in the order they started (by domain ID), from `xm grp-list --json`.
start_order() {
    xm grp-list --json "$1" | $PYTHON -c '
import json, sys
(group,) = json.load(sys.stdin)
live = sorted((m for m in group["members"] if m["domid"] >= 0), key=lambda m: m["domid"])
print("started in this order: " + ", ".join("%s (order %d, id %d)" % (m["name_label"], m["order"], m["domid"])
                                              for m in live))
'
}

step "xm grp-create shop.grp: define shop-db and shop-web, the group, and start it"
xm grp-create "$CONFIGS/shop.grp"
xm grp-list shop
start_order shop

step "xm grp-list -l shop"
xm grp-list -l shop

step "xm grp-save shop: both saved to a directory on the server host, in descending order"
xm grp-save shop "$SAVED"
# (on Xen, xl's images have their VM records beside them: *.img.xend-ext.json)
ls "$IMAGES/$SAVED" | grep -v '\.xend-ext\.json$' | sed 's/^[0-9a-f-]*\.img$/<uuid>.img/' | sort
xm grp-list shop

step "xm grp-restore: the group back, in ascending order"
xm grp-restore "$SAVED"
xm grp-list shop
start_order shop
