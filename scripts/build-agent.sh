#!/usr/bin/env bash
# Builds the guest agent as a static executable (no libc needed in the guest):
#   target/x86_64-unknown-linux-gnu/agent/kiln-agent
# With an explicit --target, RUSTFLAGS reach only the target crates, not build scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --quiet --profile agent --target x86_64-unknown-linux-gnu -p kiln-agent
echo "target/x86_64-unknown-linux-gnu/agent/kiln-agent"
