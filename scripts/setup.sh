#!/usr/bin/env bash
# Installs what building and testing hbr-source-agent needs on Debian 12: system packages,
# the official Alibaba Cloud Python SDK signer the signature cross-check test compares against,
# and cargo-deb for the package check. Idempotent; run as root (or with sudo available). Reaches
# only Debian's, PyPI's and crates.io's registries.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages (keep in sync with docs/development/testing.md).
APT_PACKAGES=(
  build-essential pkg-config  # C toolchain for -sys crates
  ca-certificates             # system trust store for the HBR client's TLS
  python3 python3-pip         # the SDK signature cross-check
  python3-venv                # the S3 test server (moto) runs in its own venv
  util-linux                  # setpriv: tests drop root to check permission errors
  systemd                     # systemd-analyze for the unit checks
  libsmbclient-dev            # pavao (SMB probe) links libsmbclient; smbclient.pc for pavao-sys
  samba smbclient             # test server smbd, and smbclient for comparison benchmarks
  rpcbind nfs-common          # portmapper for the NFS test server; rpcinfo/showmount
  nfs-ganesha nfs-ganesha-vfs # user-space NFSv3 test server
  libnfs-utils                # nfs-ls: the user-space NFS client operators compare with
  openjdk-17-jre-headless     # the real Hadoop NameNode/DataNode used by the HDFS tests
  libjersey1-server-java libjersey1-servlet-java libjersey1-core-java  # Hadoop's WebHDFS jars
  openssl                     # test CA and certificates for the TLS tests
  curl                        # readiness checks of the test servers
  etcd-server                 # fleet strict mode: the tests start their own etcd on loopback
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The package enables a system etcd; the tests start their own on random loopback ports.
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

# The official SDK's signer, pinned; the test fails (not skips) without it.
PY_SDK="alibabacloud-tea-openapi==0.4.6"
if ! python3 -c "import alibabacloud_tea_openapi" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "$PY_SDK" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$PY_SDK"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is not installed; install Rust (1.88 or newer) first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# cargo-deb for scripts/package.sh, built once into the cache (about 5 min on 2 cores), pinned.
TOOLS="${HBR_CACHE:-/var/cache/hbr-source-agent}/tools"
CARGO_DEB_VERSION="3.8.0"
if ! "$TOOLS/bin/cargo-deb" --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  $SUDO mkdir -p "$TOOLS"
  $SUDO env "PATH=$PATH" cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet \
    --root "$TOOLS" --target-dir "$TOOLS/build"
fi
echo "setup: ok"
