#!/usr/bin/env bash
# The NFS v3 test server: rpcbind + nfs-ganesha (VFS) on 127.0.0.1, fixed ports (portmapper
# 111, NFS 2049, MOUNT 20048), four exports (see nfs/ganesha.conf).
#   scripts/servers/nfs.sh up     start, or reuse a healthy one we started; prints the root
#   scripts/servers/nfs.sh down   stop what `up` started (by PID)
# Working files under ${HBR_TEST_RUN:-/tmp/hbr-test-servers}/nfs. Safe to run concurrently.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base="${HBR_TEST_RUN:-/tmp/hbr-test-servers}"
root="$base/nfs"
run="$root/run"
mkdir -p "$run"
exec 9>"$root/lock"
flock 9

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

ready() {
    rpcinfo -n 20048 -t 127.0.0.1 100005 3 >/dev/null 2>&1 &&
        rpcinfo -n 2049 -t 127.0.0.1 100003 3 >/dev/null 2>&1
}

stop() {
    local p
    for p in ganesha rpcbind; do
        if alive "$p"; then
            kill "$(cat "$run/$p.pid")" 2>/dev/null || true
            for _ in $(seq 50); do alive "$p" || break; sleep 0.1; done
            alive "$p" && kill -9 "$(cat "$run/$p.pid")" 2>/dev/null || true
        fi
        rm -f "$run/$p.pid"
    done
}

up() {
    if alive ganesha && ready; then
        echo "$root"
        return 0
    fi
    stop
    for cmd in rpcbind rpcinfo ganesha.nfsd; do
        command -v "$cmd" >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
        command -v "$cmd" >/dev/null || { echo "nfs.sh: $cmd not found (run scripts/setup.sh)" >&2; exit 1; }
    done
    if [ "$(id -u)" != 0 ]; then
        echo "nfs.sh: rpcbind and ganesha need root (port 111, 2049)" >&2
        exit 1
    fi
    # Export contents: one file in the open ones; a root-only directory behind all_squash.
    mkdir -p "$root/exports/open" "$root/exports/denied" "$root/exports/secure" "$root/exports/squashed"
    echo hello >"$root/exports/open/hello.txt"
    echo hello >"$root/exports/secure/hello.txt"
    echo hello >"$root/exports/squashed/hello.txt"
    chmod 0755 "$root/exports/open" "$root/exports/secure"
    chmod 0700 "$root/exports/squashed"
    sed "s|@ROOT@|$root|g" "$here/nfs/ganesha.conf" >"$root/ganesha.conf"

    # rpcbind cannot be limited to loopback (Debian 12's `rpcbind -h` crashes); reuse a running one.
    if ! rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then
        setsid rpcbind -f -w >"$run/rpcbind.log" 2>&1 </dev/null 9>&- &
        echo $! >"$run/rpcbind.pid"
        for _ in $(seq 50); do rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
        rpcinfo -p 127.0.0.1 >/dev/null 2>&1 || { echo "nfs.sh: rpcbind did not start:" >&2; cat "$run/rpcbind.log" >&2; exit 1; }
    fi
    # A ganesha left over from elsewhere (not ours) would hold the ports.
    if ready; then
        echo "nfs.sh: another NFS server answers on 127.0.0.1:2049/20048; stop it first" >&2
        exit 1
    fi
    setsid ganesha.nfsd -F -f "$root/ganesha.conf" -L "$run/ganesha.log" -p "$run/ganesha.pidfile" \
        -N NIV_EVENT >"$run/ganesha.out" 2>&1 </dev/null 9>&- &
    echo $! >"$run/ganesha.pid"
    for _ in $(seq 150); do
        if ready; then
            echo "$root"
            return 0
        fi
        if ! alive ganesha; then
            echo "nfs.sh: ganesha exited:" >&2
            tail -n 30 "$run/ganesha.log" "$run/ganesha.out" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "nfs.sh: ganesha not ready after 15s:" >&2
    tail -n 30 "$run/ganesha.log" >&2 || true
    stop
    exit 1
}

case "${1:-}" in
up) up ;;
down) stop ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
