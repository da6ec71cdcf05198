#!/usr/bin/env bash
# Command one: set up, then bring up a 3-node lab cluster with 2 pods per node on VXLAN and
# show pods talking across nodes. The lab stays up: look around, then tear it down.
# Extra arguments go to `fabric-lab up`: `--datastore kubernetes` runs the nodes against a real
# Kubernetes control plane in the lab (then `target/release/fabric-lab kubectl -- get nodes`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
lab=target/release/fabric-lab
if [ -e /run/fabric-lab/lab ]; then
  printf '\033[1m==> removing the previous lab\033[0m\n' >&2
  "$lab" down --name lab
fi
exec "$lab" up --nodes 3 --pods-per-node 2 --backend vxlan "$@"
