#!/usr/bin/env bash
# Sets up what is missing on this host, builds kiln, boots a VM, runs a command in it and
# prints the result, then removes the VM.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-agent.sh >/dev/null
cargo build --quiet --release -p kiln-cli
kiln=target/release/kiln

"$kiln" rm --force demo >/dev/null 2>&1 || true
"$kiln" up demo
echo "\$ kiln exec demo -- uname -a"
"$kiln" exec demo -- uname -a
"$kiln" rm --force demo
