#!/usr/bin/env bash
# Lints what packaging/build-packages.sh built: lintian on every .deb, rpmlint on every .rpm
# (no errors allowed; the warnings left are explained in packaging/README.md and suppressed
# here by name only, so a new warning fails too), and `systemd-analyze verify` on every unit
# in packaging/systemd. Installs lintian, rpmlint and systemd when missing (as root, Debian).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out=$target_dir/packages

missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v rpmlint >/dev/null || missing+=(rpmlint)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

shopt -s nullglob
debs=("$out"/*.deb)
rpms=("$out"/*.rpm)
if [ ${#debs[@]} -eq 0 ] || [ ${#rpms[@]} -eq 0 ]; then
    echo "lint-packages: no packages in $out; run packaging/build-packages.sh first" >&2
    exit 1
fi

status=0
# Each suppressed tag is explained in packaging/README.md ("Lint warnings").
lintian_suppress=(
    no-manual-page
    shared-library-lacks-prerequisites
    initial-upload-closes-no-bugs
)
for deb in "${debs[@]}"; do
    echo "== lintian $(basename "$deb")"
    # --fail-on error,warning: a warning not in the list above fails the build.
    if ! lintian --fail-on error,warning --suppress-tags "$(IFS=,; echo "${lintian_suppress[*]}")" "$deb"; then
        status=1
    fi
done

for rpm in "${rpms[@]}"; do
    echo "== rpmlint $(basename "$rpm")"
    if ! rpmlint -c packaging/rpmlint.toml "$rpm"; then
        status=1
    fi
done

for unit in packaging/systemd/*.service; do
    echo "== systemd-analyze verify $unit"
    # verify wants the ExecStart binaries; the units name /usr/bin/onboarding-*, which a build
    # machine need not have, so check them in a root that has them.
    root=$(mktemp -d)
    mkdir -p "$root/usr/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
    # The targets and slices the units hang off (sysinit.target, multi-user.target, ...).
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    for b in onboarding-agent onboarding-endpoint; do
        printf '#!/bin/sh\n' > "$root/usr/bin/$b"
        chmod 755 "$root/usr/bin/$b"
    done
    cp "$unit" "$root/etc/systemd/system/"
    if ! out_text=$(systemd-analyze verify --root="$root" "/etc/systemd/system/$(basename "$unit")" 2>&1) \
        || [ -n "$out_text" ]; then
        echo "$out_text"
        status=1
    fi
    rm -rf "$root"
done

if [ $status -ne 0 ]; then
    echo "lint-packages: FAILED" >&2
else
    echo "lint-packages: lintian, rpmlint and systemd-analyze verify clean"
fi
exit $status
