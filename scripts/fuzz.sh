#!/usr/bin/env bash
# Fuzzes what a guest, QEMU or a libvirt daemon can send the host (fuzz/fuzz_targets: the
# agent's frame decoder and messages, tar placement, a session's file list, QMP answers,
# libvirt domain XML) with cargo-fuzz, each target for SECONDS (default 30; the test command
# runs 20). `scripts/fuzz.sh long` runs each for 10 minutes. Installs cargo-fuzz if missing. Uses a nightly
# toolchain when there is one, else the stable one with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
# unstable flags). A crash leaves its input under fuzz/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
[ "$seconds" = long ] && seconds=600

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  toolchain=()
  export RUSTC_BOOTSTRAP=1
fi

for target in $(cargo "${toolchain[@]}" fuzz list); do
  mkdir -p "corpus/$target"
  echo "== fuzz $target for ${seconds}s" >&2
  # -rss_limit_mb: an input that makes the host side allocate without bound fails the run.
  log="target/fuzz-$target.log"
  mkdir -p target
  if ! cargo "${toolchain[@]}" fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=512 -max_len=1100000 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz.sh: $target failed; a crashing input is under fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" >&2 || true
done
