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
cargo test --all-targets --locked
# Doc tests are not covered by --all-targets.
cargo test --doc --locked
