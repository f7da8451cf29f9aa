#!/bin/sh
# Check the unit files: `systemd-analyze verify` (clean = no output) and the
# `systemd-analyze security` exposure score. The units name /usr/local/bin/syncd; to verify
# on a machine where syncd lives elsewhere, the copies checked here use `command -v syncd`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exe=$(readlink -f "$(command -v syncd)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in syncd.service syncd@.service; do
    sed "s|^ExecStart=/usr/local/bin/syncd|ExecStart=$exe|" "$here/$unit" >"$tmp/$unit"
done
cp "$tmp/syncd@.service" "$tmp/syncd@daemon.service"
echo "== verify"
systemd-analyze verify "$tmp/syncd.service" "$tmp/syncd@daemon.service"
echo "== security (system template, instance daemon)"
systemd-analyze security --offline=true --no-pager "$tmp/syncd@daemon.service" | tail -n 1
echo "== security (user unit, checked as a system unit)"
systemd-analyze security --offline=true --no-pager "$tmp/syncd.service" | tail -n 1
