#!/usr/bin/env bash
# The project's test command (README): prerequisites, formatting, lints, then every test.
# Tests reach loopback addresses only and start the servers they need themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Never the real ECS metadata service, whatever a test forgets to configure.
export ALIBABA_CLOUD_ECS_METADATA_DISABLED=true

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --all-targets --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s; exit (p == 0 || f > 0) }' "$log"
