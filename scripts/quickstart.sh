#!/usr/bin/env bash
# Quick start: build the agent, start the fake HBR on loopback, and run the agent's main job
# on the bundled example config (config/agent.toml + config/conf.d/): validate, probe, plan,
# apply, then plan again to show everything in sync. Nothing leaves this machine: the example's
# control-plane endpoint is overridden by a drop-in that points at the fake.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
echo "== building (first time: a few minutes)"
cargo build --quiet --locked --bin hbr-source-agent --example fake-hbr
target="${CARGO_TARGET_DIR:-target}"
agent="$target/debug/hbr-source-agent"
fake="$target/debug/examples/fake-hbr"

work="$(mktemp -d /tmp/hbr-quickstart.XXXXXX)"
demo=/dev/shm/hbr-quickstart-demo
cleanup() {
  [ -n "${fake_pid:-}" ] && kill "$fake_pid" 2>/dev/null || true
  rm -rf "$work" "$demo"
}
trap cleanup EXIT

# The fake HBR on a free loopback port; its first stdout line names the endpoint.
"$fake" --listen 127.0.0.1:0 >"$work/fake.out" 2>"$work/fake.log" &
fake_pid=$!
for _ in $(seq 50); do
  endpoint="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/fake.out" | head -n1 || true)"
  [ -n "$endpoint" ] && break
  sleep 0.1
done
[ -n "$endpoint" ] || { echo "fake HBR did not start:"; cat "$work/fake.log"; exit 1; }
echo "== fake HBR listening at $endpoint"

# The bundled example, plus a drop-in that points it at the fake and adds three demo sources:
# one that passes on any Linux host (a tmpfs under /dev/shm, standing in for a mounted large
# file system) and two that fail, to show what a failure report looks like. Every address is
# on loopback.
cp -r config "$work/"
mkdir -p "$demo" "$work/credentials"
echo "demo data" >"$demo/README"
cat >"$work/config/conf.d/99-quickstart.toml" <<TOML
# Written by scripts/quickstart.sh: stage the example against the local fake HBR.
[agent]
state_dir = "$work/state"
probe_timeout = "5s"

[control_plane]
endpoint = "$endpoint"

[filesystem.quickstart-demo]
path = "$demo"

[filesystem.not-mounted]
path = "/mnt/hbr-quickstart-not-mounted"

[nas.nfs-demo]
protocol = "nfs"
servers = ["127.0.0.1:2049"]
share_path = "/export"
TOML
# Secrets the example refers to ({ credential = ... }, { env = ... }); dummy values.
for name in finance-smb archive-s3-secret; do
  printf 'example-%s\n' "$name" >"$work/credentials/$name"
done
chmod 600 "$work/credentials/"*
export CREDENTIALS_DIRECTORY="$work/credentials"
export ARCHIVE_S3_SECRET=example-archive-s3-secret
# The fake's credentials (not real ones), and never the real ECS metadata service.
export ALIBABA_CLOUD_ACCESS_KEY_ID=fake-access-key-id
export ALIBABA_CLOUD_ACCESS_KEY_SECRET=fake-access-key-secret
export ALIBABA_CLOUD_ECS_METADATA_DISABLED=true
cfg="$work/config/agent.toml"

step() { echo; echo "== hbr-source-agent $*"; "$agent" --config "$cfg" "$@" && rc=0 || rc=$?; echo "   (exit $rc)"; }
step validate
step probe
step plan
step apply
step plan
step status
echo
echo "The fake HBR saw:"
sed 's/^/   /' "$work/fake.log" | tail -n 20
