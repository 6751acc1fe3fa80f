#!/usr/bin/env bash
# Build the release binaries and run the benchmarks (bench/bench.py); prints Markdown tables.
#   bench/run.sh [--runs N] [--only latency,scale,reaction,footprint] [--json FILE] ...
# Not part of the test suite: an engineer runs it, as root (the test servers need it), on an
# otherwise quiet machine. Results and how to read them: docs/benchmarks.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
# Help needs no build.
for arg in "$@"; do
  case "$arg" in -h | --help) exec python3 "$repo/bench/bench.py" --help ;; esac
done
# Two builds: with the example, dev-dependencies' features would leak into the agent measured.
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin hbr-source-agent \
  --bin hbr-source-agent-smb-probe
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --example bench-hbr
exec python3 "$repo/bench/bench.py" "$@"
