#!/usr/bin/env bash
# A real Apache Hadoop 2.7.3 NameNode + DataNode on 127.0.0.1 for the HDFS probe's tests.
#
#   scripts/servers/hdfs.sh up [spare]             start (or reuse a healthy running one)
#   scripts/servers/hdfs.sh down [spare]           stop it by PID
#   scripts/servers/hdfs.sh stop-datanode [spare]  stop only the DataNode (the NameNode keeps
#                                                  listing it as live for minutes)
#   scripts/servers/hdfs.sh safemode-enter [spare] put the NameNode into safe mode
#   scripts/servers/hdfs.sh fetch                  only download and trim the jars into the cache
#
# "spare" is a second, independent cluster (ports + 100, its own files) for tests that break
# it on purpose, so that they never disturb the tests sharing the main one.
#
# The jars come from the PyPI sdist pyspark==2.4.8 (it bundles the unshaded Hadoop 2.7.3 server
# jars), downloaded once into ${HBR_CACHE:-/var/cache/hbr-source-agent}/hadoop and trimmed to
# the 52 jars the NameNode and DataNode load (scripts/servers/hdfs/jars.txt). Needs java (17)
# and python3 -m pip (scripts/setup.sh installs both). Working files (config, data, logs, PIDs)
# live under ${HBR_TEST_RUN:-/tmp/hbr-test-servers}/hdfs, outside the clone. Each start formats
# a fresh NameNode. Safe to run concurrently: both steps hold a flock.
#
# Fixed loopback ports: RPC 8020, NameNode HTTP 9870, DataNode transfer 9866 (HTTP 9864, IPC
# 9867); the spare cluster 8120, 9970, 9966 (9964, 9967). Nothing listens on other addresses.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TPL=$HERE/hdfs
CACHE=${HBR_CACHE:-/var/cache/hbr-source-agent}/hadoop
LIB=$CACHE/hadoop-2.7.3-min/lib
PYSPARK=pyspark==2.4.8
JERSEY1=/usr/share/java/jersey1-core.jar:/usr/share/java/jersey1-server.jar:/usr/share/java/jersey1-servlet.jar:/usr/share/java/jsr311-api.jar

case "${2:-main}" in
  main) RUN=${HBR_TEST_RUN:-/tmp/hbr-test-servers}/hdfs; OFFSET=0 ;;
  spare) RUN=${HBR_TEST_RUN:-/tmp/hbr-test-servers}/hdfs-spare; OFFSET=100 ;;
  *) echo "unknown cluster ${2}: main or spare" >&2; exit 2 ;;
esac
RPC_PORT=$((8020 + OFFSET))
HTTP_PORT=$((9870 + OFFSET))
SNN_HTTP_PORT=$((9868 + OFFSET))
DN_PORT=$((9866 + OFFSET))
DN_HTTP_PORT=$((9864 + OFFSET))
DN_IPC_PORT=$((9867 + OFFSET))
CP="$RUN/conf:$RUN/res:$JERSEY1:$LIB/*"

JOPTS=(-Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1)

say() { echo "hdfs.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# Download pyspark's sdist once and keep only the jars Hadoop's NameNode and DataNode need.
fetch() {
  mkdir -p "$(dirname "$CACHE")"
  exec 8>"$CACHE.lock"
  flock 8
  if [ -f "$LIB/.complete" ]; then return 0; fi
  command -v python3 >/dev/null || die "python3 is missing (scripts/setup.sh installs it)"
  local tmp
  tmp=$(mktemp -d "$CACHE.tmp.XXXXXX")
  # pyspark's setup.py calls pypandoc.convert, which newer pypandoc removed.
  echo 'pypandoc==1.5' >"$tmp/constraints.txt"
  say "downloading $PYSPARK (220 MB, once) into $CACHE"
  PIP_CONSTRAINT="$tmp/constraints.txt" python3 -m pip download --quiet --no-deps \
    --disable-pip-version-check -d "$tmp/dl" "$PYSPARK" >&2 \
    || { rm -rf "$tmp"; die "pip download $PYSPARK failed (is PyPI reachable? python3 -m pip installed?)"; }
  local members=()
  while read -r jar; do
    [ -n "$jar" ] && members+=("pyspark-2.4.8/deps/jars/$jar")
  done <"$TPL/jars.txt"
  tar xzf "$tmp"/dl/pyspark-2.4.8.tar.gz -C "$tmp" "${members[@]}" \
    || { rm -rf "$tmp"; die "the sdist lacks some of the jars in $TPL/jars.txt"; }
  rm -rf "$LIB"
  mkdir -p "$(dirname "$LIB")"
  mv "$tmp/pyspark-2.4.8/deps/jars" "$LIB"
  touch "$LIB/.complete"
  rm -rf "$tmp"
  say "cached $(ls "$LIB" | wc -l) jars ($(du -sh "$LIB" | cut -f1)) in $LIB"
}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

jmx() {
  curl -sf --max-time 2 "http://127.0.0.1:$HTTP_PORT/jmx?qry=Hadoop:service=NameNode,name=$1"
}

# Ready: a DataNode is live and has reported its blocks, and the NameNode left safe mode.
ready() {
  alive namenode && alive datanode || return 1
  port_open "$RPC_PORT" && port_open "$DN_PORT" || return 1
  grep -q 'Successfully sent block report' "$RUN/logs/datanode.log" 2>/dev/null || return 1
  jmx FSNamesystemState | grep -q '"NumLiveDataNodes" : [1-9]' || return 1
  jmx NameNodeInfo | grep -q '"Safemode" : ""'
}

stop() {
  local p pid which=("$@")
  [ "${#which[@]}" -gt 0 ] || which=(datanode namenode)
  for p in "${which[@]}"; do
    if [ -f "$RUN/$p.pid" ]; then
      pid=$(cat "$RUN/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$RUN/$p.pid"
    fi
  done
}

render() {
  local f
  mkdir -p "$RUN/conf"
  for f in core-site.xml hdfs-site.xml log4j.properties; do
    sed -e "s|@RUN@|$RUN|g" -e "s|@RPC_PORT@|$RPC_PORT|g" -e "s|@HTTP_PORT@|$HTTP_PORT|g" \
      -e "s|@SNN_HTTP_PORT@|$SNN_HTTP_PORT|g" -e "s|@DN_PORT@|$DN_PORT|g" \
      -e "s|@DN_HTTP_PORT@|$DN_HTTP_PORT|g" -e "s|@DN_IPC_PORT@|$DN_IPC_PORT|g" \
      "$TPL/$f" >"$RUN/conf/$f"
  done
  # HttpServer2 wants webapps/NAME on the classpath; pyspark's jars do not carry them.
  for f in hdfs datanode secondary journal; do
    mkdir -p "$RUN/res/webapps/$f/WEB-INF"
    echo '<web-app xmlns="http://java.sun.com/xml/ns/javaee" version="2.5"></web-app>' \
      >"$RUN/res/webapps/$f/WEB-INF/web.xml"
  done
}

start_java() {
  local name=$1 class=$2
  # Close the lock fds: a server that inherits one would hold the lock for its lifetime.
  setsid java "${JOPTS[@]}" -cp "$CP" "$class" >"$RUN/logs/$name.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$RUN/$name.pid"
}

failed_start() {
  say "$1; last lines of $RUN/logs/$2.log:"
  tail -25 "$RUN/logs/$2.log" >&2 || true
  stop
  exit 1
}

up() {
  mkdir -p "$(dirname "$RUN")"
  exec 9>"$RUN.lock"
  flock 9
  if ready; then
    say "already up (RPC 127.0.0.1:$RPC_PORT, HTTP $HTTP_PORT, DataNode $DN_PORT)"
    return 0
  fi
  command -v java >/dev/null || die "java is missing (scripts/setup.sh installs openjdk-17-jre-headless)"
  command -v curl >/dev/null || die "curl is missing (scripts/setup.sh installs it)"
  fetch
  stop
  local t0=$SECONDS
  rm -rf "$RUN/data" "$RUN/logs"
  mkdir -p "$RUN/data" "$RUN/logs"
  render
  # The user who formats and starts the NameNode is its superuser.
  export HADOOP_USER_NAME=root
  java "${JOPTS[@]}" -cp "$CP" org.apache.hadoop.hdfs.server.namenode.NameNode \
    -format -force -nonInteractive >"$RUN/logs/format.log" 2>&1 \
    || failed_start "formatting the NameNode failed" format
  start_java namenode org.apache.hadoop.hdfs.server.namenode.NameNode
  for _ in $(seq 120); do
    port_open "$RPC_PORT" && break
    alive namenode || failed_start "the NameNode exited" namenode
    sleep 0.25
  done
  port_open "$RPC_PORT" || failed_start "the NameNode did not open port $RPC_PORT in 30 s" namenode
  start_java datanode org.apache.hadoop.hdfs.server.datanode.DataNode
  for _ in $(seq 240); do
    ready && { say "up after $((SECONDS - t0)) s (RPC 127.0.0.1:$RPC_PORT, HTTP $HTTP_PORT, DataNode $DN_PORT)"; return 0; }
    alive namenode || failed_start "the NameNode exited" namenode
    alive datanode || failed_start "the DataNode exited" datanode
    sleep 0.25
  done
  failed_start "the DataNode did not register within 60 s" datanode
}

down() {
  mkdir -p "$(dirname "$RUN")"
  exec 9>"$RUN.lock"
  flock 9
  stop
  say "down"
}

stop_datanode() {
  mkdir -p "$(dirname "$RUN")"
  exec 9>"$RUN.lock"
  flock 9
  stop datanode
  say "DataNode stopped; NameNode still up on $RPC_PORT"
}

safemode_enter() {
  alive namenode || die "the NameNode of $RUN is not running"
  HADOOP_USER_NAME=root java "${JOPTS[@]}" -cp "$CP" org.apache.hadoop.hdfs.tools.DFSAdmin \
    -fs "hdfs://127.0.0.1:$RPC_PORT" -safemode enter 2>"$RUN/logs/dfsadmin.log" >&2 \
    || { tail -20 "$RUN/logs/dfsadmin.log" >&2; die "dfsadmin -safemode enter failed"; }
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop-datanode) stop_datanode ;;
  safemode-enter) safemode_enter ;;
  fetch) fetch ;;
  *) echo "usage: $0 up|down|stop-datanode|safemode-enter [main|spare] | fetch" >&2; exit 2 ;;
esac
