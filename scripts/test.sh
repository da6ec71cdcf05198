#!/usr/bin/env bash
# Command two: install what the tests need and run the whole suite (unit tests and the
# end-to-end tests on lab clusters; the latter need root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
printf '\033[1m==> running the tests\033[0m\n' >&2
# End-to-end tests each build a lab; two at a time keeps a 2-core machine responsive.
exec cargo test --release --workspace -- --test-threads 2 "$@"
