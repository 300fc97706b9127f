#!/usr/bin/env bash
# Builds the real Istio control plane and agent for the tests from the istio.io/istio Go
# module (its own module graph: Istio pins older k8s.io modules than tests/kube-harness):
# pilot-discovery (istiod), pilot-agent and istioctl into .cache/go-bin/istio-<commit>/ at
# the repo root, next to two files taken from the same module: Istio's CRD bundle
# (crd-all.gen.yaml) and the istio-sidecar package's istio-start.sh.
#
#   tests/istio-harness/build.sh           build unless the cache is current
#   tests/istio-harness/build.sh --check   exit 0 if current, 3 if a build is needed
#   tests/istio-harness/build.sh --print-dir
#
# Keyed like tests/kube-harness/build.sh: the directory names the istio commit, .key holds
# a hash of go.mod, go.sum and this script.
set -euo pipefail
# All in one block: bash parses it whole, so editing this file while a build runs is safe.
{
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"
# GO_BIN_CACHE moves the cache out of the checkout (CI clones afresh each run; a cache in
# $HOME survives between runs on the same machine). Default: .cache/go-bin at the repo root.
cache=${GO_BIN_CACHE:-$root/.cache/go-bin}

pseudo=$(sed -n 's/^[[:space:]]*istio.io\/istio \(v[^ ]*\).*/\1/p' go.mod | head -n1)
[ -n "$pseudo" ] || { echo "build.sh: no istio.io/istio version in go.mod" >&2; exit 1; }
commit=${pseudo##*-}          # v0.0.0-20260827124520-eed52ebb66ad -> eed52ebb66ad
out="$cache/istio-$commit"
key=$(cat go.mod go.sum build.sh | sha256sum | cut -c1-16)
bins=(pilot-discovery pilot-agent istioctl)
files=(crd-all.gen.yaml istio-start.sh)

current() {
  [ "$(cat "$out/.key" 2>/dev/null)" = "$key" ] || return 1
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
  for f in "${files[@]}"; do [ -s "$out/$f" ] || return 1; done
}

case "${1:-}" in
  --check) current && exit 0; echo "build needed: $here/build.sh" >&2; exit 3 ;;
  --print-dir) echo "$out"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--check|--print-dir]" >&2; exit 2 ;;
esac

if current; then
  echo "istio-harness: $out is current (key $key), nothing to build"
  exit 0
fi

moddir=$(go list -m -f '{{.Dir}}' istio.io/istio)
[ -d "$moddir" ] || go mod download istio.io/istio
moddir=$(go list -m -f '{{.Dir}}' istio.io/istio)
# Istio's own dev builds say "<VERSION>-dev" (Makefile.core.mk); do the same so istioctl
# and istiod report a version rather than "unknown".
ver="$(cat "$moddir/VERSION")-dev"
p=istio.io/istio/pkg/version
ldflags="-s -w -X $p.buildVersion=$ver -X $p.buildGitRevision=$commit -X $p.buildStatus=Clean -X $p.buildTag=$ver -X $p.buildHub=local"

tmp="$cache/.istio-$commit.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "istio-harness: building ${bins[*]} ($pseudo, key $key) into $out"
start=$(date +%s)
CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 \
  go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  istio.io/istio/pilot/cmd/pilot-discovery istio.io/istio/pilot/cmd/pilot-agent istio.io/istio/istioctl/cmd/istioctl
# The module cache is read-only; copies get ordinary modes.
install -m 0644 "$moddir/manifests/charts/base/files/crd-all.gen.yaml" "$tmp/crd-all.gen.yaml"
install -m 0755 "$moddir/tools/packaging/common/istio-start.sh" "$tmp/istio-start.sh"
mkdir -p "$out"
for f in "${bins[@]}" "${files[@]}"; do mv -f "$tmp/$f" "$out/$f"; done
echo "$key" > "$out/.key"
echo "istio-harness: built in $(( $(date +%s) - start ))s:"
ls -l "$out"
exit 0
}
