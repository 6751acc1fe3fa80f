#!/usr/bin/env bash
# A real S3 server for the S3 probe's tests: moto_server (PyPI, pinned) on loopback with
# authentication on, plus the users, keys, policies and buckets the tests expect.
#
#   scripts/servers/s3.sh up     start (or reuse a healthy running one); prints the keys file
#   scripts/servers/s3.sh down   stop it by PID
#
# moto checks nothing until INITIAL_NO_AUTH_ACTION_COUNT requests have been served; after that
# every request needs a valid SigV4 signature from an IAM key moto made, and IAM policies apply.
# The bootstrap (scripts/servers/s3/bootstrap.py) spends the unauthenticated requests on one
# admin user and its key, then creates everything else signed with that key. moto picks the
# keys itself, so they are written to $RUN/keys.json (mode 0600) for the tests to read.
#
# The venv is installed once under ${HBR_CACHE:-/var/cache/hbr-source-agent}/moto-$VERSION;
# working files (log, PID, keys) live under ${HBR_TEST_RUN:-/tmp/hbr-test-servers}/s3. Safe to
# run concurrently: everything happens under a flock. Listens on 127.0.0.1:$HBR_S3_PORT only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=5.2.5
VENV=${HBR_CACHE:-/var/cache/hbr-source-agent}/moto-$VERSION
RUN=${HBR_TEST_RUN:-/tmp/hbr-test-servers}/s3
# Below the ephemeral range, so a test's own client sockets never take it first.
PORT=${HBR_S3_PORT:-29555}
URL=http://127.0.0.1:$PORT

say() { echo "s3.sh: $*" >&2; }
die() { say "$*"; [ -f "$RUN/moto.log" ] && tail -n 30 "$RUN/moto.log" >&2; exit 1; }

install() {
  [ -f "$VENV/.complete" ] && return 0
  command -v python3 >/dev/null || die "python3 is missing (scripts/setup.sh installs it)"
  rm -rf "$VENV"
  say "installing moto[server]==$VERSION into $VENV (about a minute, once)"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$VERSION" >&2 \
    || { rm -rf "$VENV"; die "pip install moto[server]==$VERSION failed (is PyPI reachable?)"; }
  touch "$VENV/.complete"
}

healthy() {
  [ -f "$RUN/moto.pid" ] && kill -0 "$(cat "$RUN/moto.pid")" 2>/dev/null \
    && [ -s "$RUN/keys.json" ] && curl -sf -o /dev/null "$URL/moto-api/"
}

stop() {
  if [ -f "$RUN/moto.pid" ]; then
    local pid
    pid=$(cat "$RUN/moto.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$RUN/moto.pid"
  fi
  rm -f "$RUN/keys.json"
}

up() {
  if healthy; then
    say "reusing moto_server pid $(cat "$RUN/moto.pid") on $URL"
    echo "$RUN/keys.json"
    return 0
  fi
  stop
  install
  if curl -s -o /dev/null "$URL/"; then
    die "something else already listens on $URL (set HBR_S3_PORT to another port)"
  fi
  : >"$RUN/moto.log"
  # 3 = the bootstrap's CreateUser, PutUserPolicy and CreateAccessKey. 9>&-: the server must
  # not inherit the flock's descriptor, or it would hold the lock for as long as it runs.
  INITIAL_NO_AUTH_ACTION_COUNT=3 setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" \
    >"$RUN/moto.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/moto.pid"
  local ok=
  for _ in $(seq 200); do
    if curl -sf -o /dev/null "$URL/moto-api/"; then ok=1; break; fi
    kill -0 "$(cat "$RUN/moto.pid")" 2>/dev/null || die "moto_server exited at start"
    sleep 0.1
  done
  [ -n "$ok" ] || die "moto_server did not answer on $URL within 20s"
  (umask 077; "$VENV/bin/python" "$HERE/s3/bootstrap.py" "$URL" >"$RUN/keys.json.tmp") \
    || { stop; die "bootstrap failed"; }
  mv "$RUN/keys.json.tmp" "$RUN/keys.json"
  say "moto_server $VERSION pid $(cat "$RUN/moto.pid") ready on $URL"
  echo "$RUN/keys.json"
}

mkdir -p "$RUN"
exec 9>"$RUN/lock"
flock 9
case "${1:-}" in
  up) up ;;
  down) stop; say "stopped" ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
