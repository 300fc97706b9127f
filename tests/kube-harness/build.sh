#!/usr/bin/env bash
# Builds the real Kubernetes control plane for the tests from Go modules (no downloads of
# release binaries): kube-apiserver, kubectl and kube-harness (which embeds etcd) into
# .cache/go-bin/k8s-<version>/ at the repo root. docs/testing-kubernetes.md explains it.
#
#   tests/kube-harness/build.sh           build unless the cache is current
#   tests/kube-harness/build.sh --check   exit 0 if current, 3 if a build is needed
#   tests/kube-harness/build.sh --print-dir
#
# The cache is keyed by the Kubernetes version (the directory name) and a hash of this
# module's go.mod, go.sum, the harness sources and this script (the .key file in it): a
# changed module graph or harness rebuilds, anything else is a no-op.
set -euo pipefail
# All in one block: bash parses it whole, so editing this file while a build runs is safe.
{
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"
# GO_BIN_CACHE moves the cache out of the checkout (CI clones afresh each run; a cache in
# $HOME survives between runs on the same machine). Default: .cache/go-bin at the repo root.
cache=${GO_BIN_CACHE:-$root/.cache/go-bin}

version=$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[0-9.]*\).*/\1/p' go.mod | head -n1)
[ -n "$version" ] || { echo "build.sh: no k8s.io/kubernetes version in go.mod" >&2; exit 1; }
out="$cache/k8s-$version"
key=$(cat go.mod go.sum build.sh $(find cmd -name '*.go' | LC_ALL=C sort) | sha256sum | cut -c1-16)
bins=(kube-apiserver kubectl kube-harness)

current() {
  [ "$(cat "$out/.key" 2>/dev/null)" = "$key" ] || return 1
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
}

case "${1:-}" in
  --check) current && exit 0; echo "build needed: $here/build.sh" >&2; exit 3 ;;
  --print-dir) echo "$out"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--check|--print-dir]" >&2; exit 2 ;;
esac

if current; then
  echo "kube-harness: $out is current (key $key), nothing to build"
  exit 0
fi

major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
# Without these /version and `kubectl version` say v0.0.0-master.
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"

tmp="$cache/.k8s-$version.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "kube-harness: building ${bins[*]} ($version, key $key) into $out"
start=$(date +%s)
# nice: this machine is shared with Rust builds; the Go build uses every core it can get.
CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 \
  go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./cmd/kube-harness
mkdir -p "$out"
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$out/$b"; done
echo "$key" > "$out/.key"
echo "kube-harness: built in $(( $(date +%s) - start ))s:"
ls -l "$out"
exit 0
}
