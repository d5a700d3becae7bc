#!/bin/sh
# A first session with nothing but curl: Xen-API is XML-RPC over HTTP POST.
#   sh first_session.sh http://127.0.0.1:9363/
set -eu
URL=${1:-http://127.0.0.1:9363/}

call() {  # call METHOD PARAM... : every param is sent as a string
    params=""
    for p in "$@"; do
        params="$params<param><value><string>$p</string></value></param>"
    done
    curl -sS -H 'Content-Type: text/xml' --data-binary \
        "<?xml version='1.0'?><methodCall><methodName>$METHOD</methodName><params>$params</params></methodCall>" "$URL"
}

value() {  # the text of the Value member (typed <string> or untyped, both are strings)
    sed -En 's:.*<name>Value</name>[^<]*<value>(<string>)?([^<]*)<.*:\2:p' | head -n 1
}

METHOD=session.login_with_password
SESSION=$(call root "" | tr -d '\n' | value)
echo "session: $SESSION"
METHOD=host.get_all
HOST=$(call "$SESSION" | tr -d '\n' | sed -En 's:.*<data>[^<]*<value>(<string>)?([^<]*)<.*:\2:p')
echo "host: $HOST"
METHOD=host.get_name_label
echo "name_label: $(call "$SESSION" "$HOST" | tr -d '\n' | value)"
METHOD=host.get_free_cpus
echo "free_cpus: $(call "$SESSION" "$HOST" | tr -d '\n' | value)"
METHOD=session.logout
call "$SESSION" > /dev/null
