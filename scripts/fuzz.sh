#!/usr/bin/env bash
# Builds and runs the fuzz targets (fuzz/fuzz_targets/: receive, packet, datastore, cni) with
# libFuzzer on stable Rust: no nightly, no cargo-fuzz. The targets are instrumented for
# coverage (SanitizerCoverage, stable -C flags) and built with debug assertions and overflow
# checks; without a sanitizer runtime, an oversized allocation is caught by the targets' own
# allocator cap (fuzz/src/lib.rs).
#
#   scripts/fuzz.sh --smoke            every target for FUZZ_SMOKE_SECS (25) seconds each
#   scripts/fuzz.sh --long [RUNS]      every target for RUNS executions each (10^7)
#   scripts/fuzz.sh --build            build only
#   scripts/fuzz.sh TARGET [-- ARGS]   one target, with libFuzzer ARGS (e.g. -max_total_time=60,
#                                      or a crash file to replay)
#
# One worker at a time (no -jobs/-fork). Build outputs, the growing corpora, crash artifacts
# and logs live under FUZZ_DIR (default target/fuzz, gitignored); the seeds in fuzz/seeds/
# (text; binary inputs as hex, *.hex) are read, never written. A crash, a timeout
# (FUZZ_TIMEOUT, 10 s) or an input exceeding the RSS limit fails the script (exit non-zero,
# after the other targets ran) and leaves the input in FUZZ_DIR/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

TARGETS=(receive packet datastore cni)
FUZZ_DIR=${FUZZ_DIR:-$root/target/fuzz}
SMOKE_SECS=${FUZZ_SMOKE_SECS:-25}
TIMEOUT=${FUZZ_TIMEOUT:-10}

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -gt 0 ] || usage
mode=$1
shift

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) and re-run" >&2
  exit 1
fi
# libfuzzer-sys compiles libFuzzer (C++); etcd-client, a dependency, needs protoc.
if ! command -v c++ >/dev/null || ! command -v protoc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing g++ and protobuf-compiler"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends g++ protobuf-compiler >/dev/null
  else
    echo "the fuzz build needs a C++ compiler and protoc (apt-get install g++ protobuf-compiler)" >&2
    exit 1
  fi
fi

host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$FUZZ_DIR/$host/release

build() {
  step "building the fuzz targets (${TARGETS[*]}) into $FUZZ_DIR"
  # The same dependency versions as the product: start from the workspace's lock file
  # (again whenever it changes; cargo then adds libFuzzer's few crates).
  [ fuzz/Cargo.lock -nt Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
  # --target: build scripts and proc macros are not instrumented (they run on the host).
  (
    cd fuzz
    RUSTFLAGS="-Cpasses=sancov-module \
      -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
      -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares \
      -Cllvm-args=-sanitizer-coverage-stack-depth \
      -Cdebug-assertions -Coverflow-checks ${FUZZ_RUSTFLAGS:-}" \
      CARGO_TARGET_DIR=$FUZZ_DIR \
      cargo build --release --target "$host" --bins
  )
}

# run TARGET LIBFUZZER-ARGS...: runs one target on its corpus (seeded from fuzz/seeds/TARGET).
run() {
  local target=$1
  shift
  local corpus=$FUZZ_DIR/corpus/$target artifacts=$FUZZ_DIR/artifacts/$target
  local seeds=$FUZZ_DIR/seeds/$target seed
  mkdir -p "$corpus" "$artifacts" "$FUZZ_DIR/logs"
  # The seeds: text as it is; binary inputs are kept as hex text (*.hex) and unpacked here.
  rm -rf "$seeds"
  mkdir -p "$seeds"
  for seed in fuzz/seeds/"$target"/*; do
    [ -f "$seed" ] || continue
    case $seed in
      *.hex) perl -ne 'print pack("H*", join("", /[0-9a-fA-F]+/g))' "$seed" >"$seeds/$(basename "$seed" .hex)" ;;
      *) cp "$seed" "$seeds/" ;;
    esac
  done
  "$bin_dir/$target" -artifact_prefix="$artifacts/" -timeout="$TIMEOUT" -rss_limit_mb=2048 \
    -print_final_stats=1 "$@" "$corpus" "$seeds"
}

# all LABEL LIBFUZZER-ARGS...: every target in turn, one line of results each; fails (after
# running the others) if any target crashed.
all() {
  local label=$1
  shift
  local target log start failed=()
  for target in "${TARGETS[@]}"; do
    log=$FUZZ_DIR/logs/$target.$label.log
    step "fuzzing $target ($*), log in $log"
    start=$(date +%s)
    mkdir -p "$FUZZ_DIR/logs"
    if ! run "$target" "$@" >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "fuzz target $target failed: the input is in $FUZZ_DIR/artifacts/$target/" >&2
      failed+=("$target")
      continue
    fi
    summary "$target" "$log" "$(($(date +%s) - start))"
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]} (replay: scripts/fuzz.sh TARGET -- ARTIFACT)" >&2
    return 1
  fi
}

# summary TARGET LOG SECONDS: executions, speed, coverage and corpus of a finished run.
summary() {
  local execs speed status
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$2" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$2" | tail -1)
  status=$(grep -E '^#[0-9]+' "$2" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' || true)
  printf '%-10s %12s execs in %5ss (%s/s)  %s  crashes: 0\n' "$1" "$execs" "$3" "$speed" "$status"
}

case $mode in
  --build) build ;;
  --smoke)
    build
    all smoke -max_total_time="$SMOKE_SECS"
    ;;
  --long)
    runs=${1:-10000000}
    build
    all long -runs="$runs"
    ;;
  -h | --help) usage ;;
  -*) usage ;;
  *)
    target=$mode
    [[ " ${TARGETS[*]} " == *" $target "* ]] || { echo "unknown target $target (${TARGETS[*]})" >&2; exit 2; }
    [ "${1:-}" = "--" ] && shift
    build
    for arg in "$@"; do
      # Replaying inputs (crash files): libFuzzer runs them once each, no corpus.
      if [ -f "$arg" ]; then exec "$bin_dir/$target" "$@"; fi
    done
    run "$target" "$@"
    ;;
esac
