#!/usr/bin/env bash
# Builds the real Kubernetes control plane, etcd and CoreDNS the Kubernetes-mode lab runs, from
# their official Go modules at the pins in versions.env (wrapper modules kubernetes/, etcd/ and
# coredns/; their go.mod files are made by the gen.sh beside them). The binaries are cached outside the source
# tree, in $FABRIC_K8S_CACHE (default ~/.cache/fabric/k8s/<pin>/bin), and the build is skipped
# when the cache was built from exactly these go.mod/go.sum files and this Go.
#
#   deploy/lab/k8s/build.sh            build if needed; prints the bin directory last
#   deploy/lab/k8s/build.sh --bin-dir  print the bin directory only
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.env"

cache="${FABRIC_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabric/k8s}"
bin="$cache/$KUBERNETES_VERSION-etcd-$ETCD_VERSION/bin"
if [ "${1:-}" = --bin-dir ]; then echo "$bin"; exit 0; fi

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
command -v go >/dev/null || { echo "go is missing: the lab's Kubernetes control plane is built with Go (1.26)" >&2; exit 1; }

stamp="$( (go version; cat "$here/versions.env" "$here"/{kubernetes,etcd,coredns}/go.{mod,sum} "$0") | sha256sum | cut -d' ' -f1)"
tools=(etcd etcdctl kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl coredns)
up_to_date=1
[ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ] || up_to_date=0
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || up_to_date=0; done
if [ "$up_to_date" = 1 ]; then
  step "Kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION and CoreDNS $COREDNS_VERSION are built ($bin)"
  echo "$bin"; exit 0
fi

mkdir -p "$bin"
rm -f "$bin/.stamp"
export GOFLAGS="-mod=mod -trimpath -buildvcs=false" CGO_ENABLED=0

minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kver=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kver+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  kver+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
done

build() { # module-dir output package ldflags
  local t0=$SECONDS
  step "building $2 (cold builds take minutes)"
  (cd "$here/$1" && go build -ldflags "-s -w $4" -o "$bin/$2.new" "$3")
  mv "$bin/$2.new" "$bin/$2"
  printf '    %s built in %ds\n' "$2" $((SECONDS - t0)) >&2
}
build etcd etcd go.etcd.io/etcd/server/v3 ""
build etcd etcdctl go.etcd.io/etcd/etcdctl/v3 ""
for t in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do
  build kubernetes "$t" "k8s.io/kubernetes/cmd/$t" "$kver"
done
build coredns coredns github.com/coredns/coredns "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
echo "$stamp" > "$bin/.stamp"
step "Kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION and CoreDNS $COREDNS_VERSION built ($bin)"
echo "$bin"
