#!/usr/bin/env bash
# Installs what fabric needs on Debian (bookworm) (curl and dnsutils for the Kubernetes demo's
# client pod), builds the pinned etcd, Kubernetes control plane and CoreDNS the Kubernetes-mode
# lab runs (deploy/lab/k8s/build.sh; cached, skipped when up to date)
# and the release binaries. Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(etcd-server etcd-client iperf3 protobuf-compiler iptables nftables iproute2
          iputils-ping netcat-openbsd wireguard-tools containernetworking-plugins tcpdump conntrack procps
          openssl curl dnsutils)

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "fabric's lab and tests create network namespaces: run as root (sudo $0)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) and re-run" >&2
  exit 1
fi
step "building the Kubernetes-mode lab's etcd and control plane (deploy/lab/k8s/build.sh)"
./deploy/lab/k8s/build.sh >/dev/null

step "building release binaries (cargo build --release)"
cargo build --release --workspace --bins
