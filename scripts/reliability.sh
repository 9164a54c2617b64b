#!/usr/bin/env bash
# Reproduces the figures of docs/reliability.md: the kill loops (SIGKILL at random points of
# `kiln up`, `kiln rm`, `kiln snapshot save` and an apply), the races, the 30-VM load loop, the bad-input table,
# the authentication checks, and a longer fuzz run. Iterations: KILN_FAULT_ITERATIONS
# (default 50); fuzzing: FUZZ_SECONDS per target (default: 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-agent.sh >/dev/null
export KILN_FAULT_ITERATIONS=${KILN_FAULT_ITERATIONS:-50}

# One test at a time (--no-capture), so the timings are not shared with other tests.
cargo nextest run --workspace --no-capture --no-fail-fast \
  -E 'binary(reliability) | binary(crash_apply) | binary(cleanup_load) | binary(bad_input) | binary(auth)' \
  2>&1 | tee target/reliability.log | grep -E '^(figure:|.*KILN_FAULT_SEED|\s+(PASS|FAIL) )'
status=${PIPESTATUS[0]}
scripts/fuzz.sh "${FUZZ_SECONDS:-long}"
exit "$status"
