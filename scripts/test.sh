#!/usr/bin/env bash
# Command two: install what the tests need and run the whole suite (unit tests and the
# end-to-end tests on lab clusters; the latter need root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The native nft queue test boots Debian's packaged kernel (which has CONFIG_NFT_QUEUE, unlike
# the running one) under QEMU with virtme-ng, on the host's filesystem.
vm_missing=()
for p in qemu-system-x86 busybox-static; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || vm_missing+=("$p")
done
if [ ${#vm_missing[@]} -gt 0 ]; then
  printf '\033[1m==> installing %s\033[0m\n' "${vm_missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${vm_missing[@]}" >/dev/null
fi
if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
  printf '\033[1m==> installing a Debian kernel image for the VM test\033[0m\n' >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-image-amd64 >/dev/null
fi
command -v vng >/dev/null || python3 -m pip install -q virtme-ng
printf '\033[1m==> fuzzing each target briefly (scripts/fuzz.sh --smoke)\033[0m\n' >&2
./scripts/fuzz.sh --smoke
printf '\033[1m==> running the tests\033[0m\n' >&2
# End-to-end tests each build a lab; two at a time keeps a 2-core machine responsive.
exec cargo test --release --workspace -- --test-threads 2 "$@"
