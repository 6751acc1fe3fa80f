#!/usr/bin/env bash
# Builds the .deb (cargo-deb, release profile), unpacks it into a scratch root and checks what
# an operator relies on: the exact file list, the conffiles, the libsmbclient dependency (and
# that only the SMB probe's helper links it), that the packaged binary runs and accepts the
# packaged example config, and that the packaged unit verifies. Prints the .deb's path last. Needs cargo-deb (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${HBR_CACHE:-/var/cache/hbr-source-agent}/tools"
export PATH="$TOOLS/bin:$PATH"
if ! command -v cargo-deb >/dev/null; then
  echo "package: cargo-deb is not installed (run scripts/setup.sh)" >&2
  exit 1
fi

target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target/debian"
deb="$(cargo deb --locked --output "$target/debian" | tail -n 1)"
[ -f "$deb" ] || { echo "package: cargo deb did not name a .deb (got: $deb)" >&2; exit 1; }

fail() { echo "package: $*" >&2; exit 1; }

# Files (directories left out), exactly.
expected="$(cat <<'LIST'
./etc/hbr-source-agent/agent.toml
./etc/hbr-source-agent/conf.d/10-sources.toml
./usr/bin/hbr-source-agent
./usr/lib/systemd/system/hbr-source-agent.service
./usr/lib/sysusers.d/hbr-source-agent.conf
./usr/lib/tmpfiles.d/hbr-source-agent.conf
./usr/libexec/hbr-source-agent/hbr-source-agent-smb-probe
./usr/share/doc/hbr-source-agent/README.md
./usr/share/doc/hbr-source-agent/configuration.md
./usr/share/doc/hbr-source-agent/copyright
./usr/share/doc/hbr-source-agent/failure-codes.md
./usr/share/doc/hbr-source-agent/operations.md
LIST
)"
actual="$(dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -v '/$' | sort)"
if [ "$actual" != "$expected" ]; then
  diff <(echo "$expected") <(echo "$actual") >&2 || true
  fail "file list differs from the expected one (< expected, > actual)"
fi

depends="$(dpkg-deb -f "$deb" Depends)"
case "$depends" in
  *libsmbclient*) ;;
  *) fail "Depends lacks libsmbclient: $depends" ;;
esac

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
dpkg-deb -e "$deb" "$scratch/DEBIAN"
for f in /etc/hbr-source-agent/agent.toml /etc/hbr-source-agent/conf.d/10-sources.toml; do
  grep -qx "$f" "$scratch/DEBIAN/conffiles" || fail "$f is not a conffile"
done
for s in postinst prerm postrm; do
  [ -x "$scratch/DEBIAN/$s" ] || fail "maintainer script $s missing"
done

dpkg -x "$deb" "$scratch/root"
bin="$scratch/root/usr/bin/hbr-source-agent"
"$bin" --version >/dev/null || fail "the packaged binary does not run"
# Only the SMB probe's child links libsmbclient: the agent would otherwise pay for its ~110
# shared libraries at every start (docs/benchmarks.md).
helper="$scratch/root/usr/libexec/hbr-source-agent/hbr-source-agent-smb-probe"
[ -x "$helper" ] || fail "the SMB probe helper is missing or not executable"
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
if needed "$bin" | grep -q '^libsmbclient'; then
  fail "usr/bin/hbr-source-agent links libsmbclient (NEEDED: $(needed "$bin" | tr '\n' ' '))"
fi
needed "$helper" | grep -q '^libsmbclient' || fail "the SMB probe helper does not link libsmbclient"
"$bin" --config "$scratch/root/etc/hbr-source-agent/agent.toml" validate >/dev/null \
  || fail "the packaged example config does not validate"
[ "$(stat -c %a "$scratch/root/etc/hbr-source-agent/agent.toml")" = 640 ] || fail "agent.toml is not 0640"

unit="$scratch/hbr-source-agent.service"
sed "s#/usr/bin/hbr-source-agent#$bin#g" "$scratch/root/usr/lib/systemd/system/hbr-source-agent.service" > "$unit"
verify="$(systemd-analyze verify "$unit" 2>&1)" || fail "systemd-analyze verify: $verify"

echo "package: ok ($(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version), $(du -h "$deb" | cut -f1), Depends: $depends)"
echo "$deb"
