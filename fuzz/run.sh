#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), one after another, each as one
# libFuzzer process running one job; exits non-zero on the first crash, leak, timeout or
# failed invariant (the input is saved under fuzz/artifacts/<target>/).
#
# Usage: fuzz/run.sh [SECONDS]
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take them. Targets are built once (`cargo fuzz build`), without a sanitizer (the code
# under test forbids `unsafe`, so coverage-guided search gets the CPU ASan would take) but
# with debug assertions, so an integer overflow is a crash, and with 16 codegen units
# (a cold build in CI is most of this script's cost). Each run starts from the
# committed seeds in fuzz/corpus/<target>/ and writes what it finds to
# fuzz/target/corpus/<target>/ (not committed).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  apt-get install -y -q g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

flags=(--sanitizer none --debug-assertions --codegen-units 16)
cargo fuzz build "${flags[@]}"
for target in $(cargo fuzz list); do
  echo "== fuzz ${target} for ${seconds} s"
  mkdir -p "target/corpus/${target}"
  log="target/fuzz-${target}.log"
  status=0
  cargo fuzz run "${flags[@]}" "${target}" "target/corpus/${target}" "corpus/${target}" -- \
    -max_total_time="${seconds}" -timeout=10 -print_final_stats=1 >"${log}" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec)' "${log}" || true
  if [ "${status}" -ne 0 ]; then
    tail -n 60 "${log}"
    echo "fuzz ${target}: FAILED (exit ${status}); the input is under fuzz/artifacts/${target}/"
    exit 1
  fi
done
echo "fuzz: every target ran ${seconds} s without a crash"
