#!/usr/bin/env bash
# The SMB test servers: three Samba smbd on 127.0.0.1 from one template (smb/smb.conf).
#   strict  port 4455  map to guest = never: wrong passwords and unknown users are refused
#   guest   port 4456  map to guest = bad password: a wrong password becomes a guest session
#   smb1    port 4457  SMB1 (NT1) only
#   signed  port 4458  map to guest = never, server signing = mandatory, and accounts in states
#                      a session setup refuses (see ACCOUNTS below)
#   smb21   port 4459  at most SMB 2.1 (the agent signs with HMAC-SHA256)
#   smb30   port 4460  at most SMB 3.0 (AES-CMAC with the 3.0 key derivation)
# Users (all servers): smbtest / S3cretPass (the only one allowed on [share]) and
# smbother / 0therPass (logs on, but [share] refuses it). [share] holds hello.txt and sub/.
# The first three render exactly from the template (other worktrees share the servers: a
# changed rendering would restart them); "signed" appends its lines after the template.
#   scripts/servers/smb.sh up     start, or reuse healthy ones we started; prints the root
#   scripts/servers/smb.sh down   stop what `up` started (by PID)
# Working files under ${HBR_TEST_RUN:-/tmp/hbr-test-servers}/smb. Safe to run concurrently.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base="${HBR_TEST_RUN:-/tmp/hbr-test-servers}"
root="$base/smb"
mkdir -p "$root"
exec 9>"$root/lock"
flock 9
PATH="$PATH:/usr/sbin:/sbin"

INSTANCES="strict:4455:never:SMB2_02:SMB3 guest:4456:bad_password:SMB2_02:SMB3 smb1:4457:never:NT1:NT1 signed:4458:never:SMB2_02:SMB3:signed smb21:4459:never:SMB2_02:SMB2_10 smb30:4460:never:SMB2_02:SMB3_00"

# Accounts on "signed", each with the password Acct0untPass and the pdbedit/smbpasswd arguments
# that put it in the state whose NT status the tests expect.
ACCOUNT_PASSWORD=Acct0untPass
# (A per-user PASSWORD_EXPIRED needs the domain-wide "maximum password age": not made here.)
ACCOUNTS=(
    "smbdisabled:pdbedit -c [D]"
    "smblocked:pdbedit -c [L]"
    "smbkicked:pdbedit -K 946684800"
    "smbnewpw:net sam set pwdmustchangenow USER yes"
    "smbws:net sam set workstations USER NOTTHISHOST"
)

alive() { [ -f "$root/$1/smbd.pid" ] && kill -0 "$(cat "$root/$1/smbd.pid")" 2>/dev/null; }

ready() {
    local name=$1 port=$2
    smbclient -s "$root/$name/smb.conf" -p "$port" --option='client min protocol = NT1' \
        //127.0.0.1/share -U 'smbtest%S3cretPass' -c ls >/dev/null 2>&1
}

stop_one() {
    local name=$1
    if alive "$name"; then
        kill "$(cat "$root/$name/smbd.pid")" 2>/dev/null || true
        for _ in $(seq 50); do alive "$name" || break; sleep 0.1; done
        alive "$name" && kill -9 "$(cat "$root/$name/smbd.pid")" 2>/dev/null || true
    fi
    rm -f "$root/$name/smbd.pid"
}

start_one() {
    local name=$1 port=$2 map=$3 min=$4 max=$5 extra=${6:-} dir="$root/$1"
    mkdir -p "$dir"
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@MAP@|${map/_/ }|g" \
        -e "s|@MIN@|$min|g" -e "s|@MAX@|$max|g" \
        -e "s|@NAME@|HBRTEST${name^^}|g" "$here/smb/smb.conf" >"$dir/smb.conf.want"
    if [ "$extra" = signed ]; then
        # smb.conf allows [global] options again at the end; the later value wins.
        printf '[global]\n    server signing = mandatory\n' >>"$dir/smb.conf.want"
    fi
    # Reuse a healthy server started from the same config.
    if alive "$name" && cmp -s "$dir/smb.conf.want" "$dir/smb.conf" && ready "$name" "$port"; then
        return 0
    fi
    stop_one "$name"
    # Something else (not ours) on the port would answer in our place.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "smb.sh: another server listens on 127.0.0.1:$port; stop it first" >&2
        exit 1
    fi
    mkdir -p "$dir"/{share/sub,private,lock,state,cache,pid,log}
    chmod 700 "$dir/private"
    echo hello >"$dir/share/hello.txt"
    chmod -R a+rX "$dir/share"
    mv "$dir/smb.conf.want" "$dir/smb.conf"
    for u in smbtest:S3cretPass smbother:0therPass; do
        id "${u%%:*}" >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin "${u%%:*}"
        printf '%s\n%s\n' "${u#*:}" "${u#*:}" |
            smbpasswd -c "$dir/smb.conf" -s -a "${u%%:*}" >/dev/null
    done
    if [ "$extra" = signed ]; then
        local a user cmd
        for a in "${ACCOUNTS[@]}"; do
            user=${a%%:*} cmd=${a#*:}
            id "$user" >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin "$user"
            printf '%s\n%s\n' "$ACCOUNT_PASSWORD" "$ACCOUNT_PASSWORD" |
                smbpasswd -c "$dir/smb.conf" -s -a "$user" >/dev/null
            set -f # [D] and [L] are not globs
            case "$cmd" in
                pdbedit*) ${cmd} --configfile="$dir/smb.conf" -u "$user" >/dev/null ;;
                net*) ${cmd//USER/$user} --configfile="$dir/smb.conf" >/dev/null ;;
            esac
            set +f
        done
    fi
    setsid smbd --foreground --no-process-group --debug-stdout --configfile="$dir/smb.conf" \
        >"$dir/smbd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$dir/smbd.pid"
    for _ in $(seq 100); do
        ready "$name" "$port" && return 0
        if ! alive "$name"; then
            echo "smb.sh: smbd ($name) exited:" >&2
            tail -n 30 "$dir/smbd.log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "smb.sh: smbd ($name) not ready on 127.0.0.1:$port after 10s:" >&2
    tail -n 30 "$dir/smbd.log" >&2 || true
    exit 1
}

up() {
    for cmd in smbd smbpasswd smbclient pdbedit net; do
        command -v "$cmd" >/dev/null || { echo "smb.sh: $cmd not found (run scripts/setup.sh)" >&2; exit 1; }
    done
    if [ "$(id -u)" != 0 ]; then
        echo "smb.sh: smbd and useradd need root here" >&2
        exit 1
    fi
    local i
    for i in $INSTANCES; do
        IFS=: read -r name port map min max extra <<<"$i"
        start_one "$name" "$port" "$map" "$min" "$max" "$extra"
    done
    echo "$root"
}

down() {
    local i
    for i in $INSTANCES; do stop_one "${i%%:*}"; done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 64 ;;
esac
