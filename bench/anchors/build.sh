#!/usr/bin/env bash
# Builds the upstream programs fabric-bench measures beside fabric (its anchors) from their
# official Go modules at the pins in versions.env, one wrapper module per tool (<tool>/go.mod and
# go.sum, made by the gen.sh beside them). The binaries are cached outside the source tree, in
# $FABRIC_ANCHORS_CACHE (default ~/.cache/fabric/anchors)/<tool>-<pin>/bin, never committed; a
# tool's build is skipped when its cache was built from exactly these go.mod/go.sum files, this
# script and this Go. fabric-bench runs this script itself when a binary is missing.
#
#   bench/anchors/build.sh TOOL...            build if needed; prints each bin directory
#   bench/anchors/build.sh --bin-dir TOOL     print TOOL's bin directory only
#
# Tools: wireguard-go (golang.zx2c4.com/wireguard), kube-network-policies
# (sigs.k8s.io/kube-network-policies; its upstream install.yaml, whose RBAC the benchmark
# applies, is copied beside the binary).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.env"
cache="${FABRIC_ANCHORS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabric/anchors}"

# tool -> "version binary=package ..." (the version names the cache directory).
spec() {
  case "$1" in
    wireguard-go) echo "$WIREGUARD_GO_VERSION wireguard-go=golang.zx2c4.com/wireguard" ;;
    kube-network-policies)
      echo "$KUBE_NETWORK_POLICIES_VERSION kube-network-policies=sigs.k8s.io/kube-network-policies/cmd" ;;
    *) echo "unknown tool '$1' (known: wireguard-go, kube-network-policies)" >&2; return 1 ;;
  esac
}

bin_dir() { # tool
  local s; s="$(spec "$1")"
  echo "$cache/$1-${s%% *}/bin"
}

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

build_tool() { # tool
  local tool=$1 s version bin stamp up_to_date pair t0
  s="$(spec "$tool")"; version="${s%% *}"; bin="$(bin_dir "$tool")"
  [ -f "$here/$tool/go.mod" ] || { echo "$here/$tool/go.mod is missing: run $here/$tool/gen.sh" >&2; return 1; }
  stamp="$( (go version; echo "$s"; cat "$here/$tool"/go.{mod,sum} "$0") | sha256sum | cut -d' ' -f1)"
  up_to_date=1
  [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ] || up_to_date=0
  for pair in ${s#* }; do [ -x "$bin/${pair%%=*}" ] || up_to_date=0; done
  if [ "$up_to_date" = 1 ]; then
    step "$tool $version is built ($bin)"
    echo "$bin"; return 0
  fi
  mkdir -p "$bin"
  rm -f "$bin/.stamp"
  for pair in ${s#* }; do
    t0=$SECONDS
    step "building ${pair%%=*} from ${pair#*=}@$version"
    (cd "$here/$tool" && go build -ldflags "-s -w" -o "$bin/${pair%%=*}.new" "${pair#*=}")
    mv "$bin/${pair%%=*}.new" "$bin/${pair%%=*}"
    printf '    %s built in %ds\n' "${pair%%=*}" $((SECONDS - t0)) >&2
  done
  if [ "$tool" = kube-network-policies ]; then
    local dir
    dir="$(cd "$here/$tool" && go list -m -f '{{.Dir}}' sigs.k8s.io/kube-network-policies)"
    cp "$dir/install.yaml" "$bin/kube-network-policies-install.yaml"
  fi
  echo "$stamp" > "$bin/.stamp"
  step "$tool $version built ($bin)"
  echo "$bin"
}

if [ "${1:-}" = --bin-dir ]; then
  [ $# = 2 ] || { echo "usage: $0 --bin-dir TOOL" >&2; exit 2; }
  bin_dir "$2"; exit 0
fi
[ $# -ge 1 ] || { echo "usage: $0 TOOL... | --bin-dir TOOL" >&2; exit 2; }
command -v go >/dev/null || { echo "go is missing: the benchmark anchors are built with Go (1.26)" >&2; exit 1; }
# The pins' go.sum files are complete: a build never changes them.
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false" CGO_ENABLED=0
for tool in "$@"; do build_tool "$tool"; done
