#!/usr/bin/env bash
# Sets up what is missing on this host, then runs the whole test suite: formatting, lints,
# unit tests, and the integration tests that boot real VMs under QEMU (TCG where KVM cannot
# run stock guests).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-agent.sh >/dev/null
# The libvirt tests talk to a real libvirtd, locally and as a remote host over SSH: start
# what is not running, and stop only what this script started (a watchdog does it too if
# this script is killed).
started=$(scripts/libvirtd.sh start $$)
trap 'scripts/libvirtd.sh stop $started' EXIT

echo "== cargo fmt" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --quiet --workspace --all-targets -- -D warnings
echo "== docs (rustdoc warnings, doctests)" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps -p kiln --features kiln/cli,kiln/bench
cargo test --quiet --doc -p kiln --features cli,bench
echo "== cargo deny (licences, duplicate versions, sources)" >&2
if ! cargo deny --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-deny" >&2
  cargo install --locked --quiet cargo-deny
fi
cargo deny --log-level error check licenses bans sources
echo "== tests" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
echo "== fuzz (short; 10 minutes per target: scripts/fuzz.sh long)" >&2
scripts/fuzz.sh 20
