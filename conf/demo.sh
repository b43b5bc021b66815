#!/usr/bin/env bash
# glvm demo: the white paper's RPV runbook on one machine, two sites on loopback.
#
#   site A  Philadelphia  (production, node nodeA)  127.0.0.1
#   site B  Poughkeepsie  (DR,         node nodeB)  127.0.0.2
#
# Walks through: RPV server configuration at B (two disks, PV3/PV4), RPV client
# configuration at A, a 32 MiB copy through A's hdisk3 that lands in B's disk file,
# an unplanned RPV failure (site B frozen: io_timeout, RPVC_IO_TIMEOUT, resume=yes) and a
# planned outage (server_addr=none, no error log entry, server_addr=IP again).
#
# Run with `make demo` (puts .venv/bin on PATH), or `PATH=.venv/bin:$PATH bash conf/demo.sh`.
# Environment: GLVM_DEMO_PORT   RPV TCP port for both daemons (default 6192; when it is not
#                               set and 6192 is taken, a free port is picked)
#              GLVM_DEMO_KEEP=1 keep the temp dir (state dirs, logs, disk files) at the end
# Exits non-zero if any check fails; always stops both daemons and removes the temp dir.
set -euo pipefail

A_IP=127.0.0.1
B_IP=127.0.0.2
IO_TIMEOUT=5
DATA_MIB=32
CONF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECONDS=0

die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

for tool in rpvd glvmctl nbdcopy nbdinfo qemu-io sha256sum python3 mkfifo; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH (run 'make demo', or 'bash .ci/run' to install the Debian tools)"
done

# -- the port ------------------------------------------------------------------------------
port_in_use() {  # something accepts connections on PORT at either site address
    (exec 3<>"/dev/tcp/$A_IP/$1") 2>/dev/null || (exec 3<>"/dev/tcp/$B_IP/$1") 2>/dev/null
}
if [[ -n ${GLVM_DEMO_PORT:-} ]]; then
    PORT=$GLVM_DEMO_PORT
    [[ $PORT =~ ^[0-9]+$ ]] && ((PORT >= 1 && PORT <= 65535)) || die "GLVM_DEMO_PORT=$PORT is not a port"
else
    PORT=6192
    if port_in_use "$PORT"; then
        for p in $(seq 26192 26291); do
            port_in_use "$p" || { PORT=$p; break; }
        done
        echo "demo: port 6192 is in use; using $PORT (set GLVM_DEMO_PORT to choose)"
    fi
fi

# -- temp dir, daemons, cleanup ------------------------------------------------------------
WORK=$(mktemp -d /tmp/glvm-demo.XXXXXX)
A_PID=""
B_PID=""

stop_daemon() {  # PID: SIGCONT (it may be stopped), SIGTERM, then SIGKILL after 10 s
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_daemon "$A_PID"
    stop_daemon "$B_PID"
    if ((rc != 0)); then
        for s in b a; do
            if [[ -s $WORK/rpvd-$s.stderr ]]; then
                echo "--- last lines of site ${s^^} rpvd log ($WORK/$s/rpvd.log) ---" >&2
                tail -n 15 "$WORK/rpvd-$s.stderr" >&2
            fi
        done
    fi
    if [[ ${GLVM_DEMO_KEEP:-0} == 1 ]]; then
        echo "demo: kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_site() {  # s (a|b) IP NODE: start rpvd with conf/site-s.toml and wait for READY
    local s=$1 ip=$2 node=$3 line="" pid
    mkfifo "$WORK/ready-$s"
    printf 'site%s# rpvd --config conf/site-%s.toml --state-dir %s --listen %s --node %s --ready-fd 3 3>%s &\n' \
        "${s^^}" "$s" "$WORK/$s" "$ip:$PORT" "$node" "$WORK/ready-$s"
    rpvd --config "$CONF_DIR/site-$s.toml" --state-dir "$WORK/$s" --listen "$ip:$PORT" \
        --node "$node" --ready-fd 3 3>"$WORK/ready-$s" 2>"$WORK/rpvd-$s.stderr" </dev/null &
    pid=$!
    if [[ $s == a ]]; then A_PID=$pid; else B_PID=$pid; fi
    read -r -t 20 line <"$WORK/ready-$s" || true
    [[ $line == READY ]] || die "rpvd for site ${s^^} did not become ready on $ip:$PORT"
    echo "    rpvd $pid ready: RPV on $ip:$PORT, control socket $WORK/$s/control.sock"
}

# -- narration helpers ---------------------------------------------------------------------
step() { printf '\n=== %s\n' "$*"; }
note() { printf -- '--- %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }

show_cmd() {  # PROMPT ARGS...: print the command as a shell would need it typed
    local prompt=$1 out="" a
    shift
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
            out+=" $a"
        else
            out+=" '${a//\'/\'\\\'\'}'"
        fi
    done
    printf '%s#%s\n' "$prompt" "$out"
}

site_socket() { local s=${1#site}; echo "$WORK/${s,,}/control.sock"; }

# at SITE CMD...: print "siteX# CMD", run it with that site's control socket, show its
# output (indented) and keep it in $OUT. Fails the demo if the command fails.
at() {
    local site=$1 rc=0
    shift
    show_cmd "$site" "$@"
    OUT=$(GLVM_SOCKET=$(site_socket "$site") "$@" 2>&1) || rc=$?
    OUT=${OUT//$'\r'/}
    [[ -z $OUT ]] || printf '%s\n' "$OUT" | sed 's/^/    /'
    ((rc == 0)) || die "'$*' at $site exited $rc"
}

# at_fails SITE CMD...: like at, but the command must fail; sets $OUT and $ELAPSED (seconds).
at_fails() {
    local site=$1 rc=0 t0
    shift
    show_cmd "$site" "$@"
    t0=$(date +%s.%N)
    OUT=$(GLVM_SOCKET=$(site_socket "$site") "$@" 2>&1) || rc=$?
    ELAPSED=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
        "$t0" "$(date +%s.%N)")
    [[ -z $OUT ]] || printf '%s\n' "$OUT" | sed 's/^/    /'
    ((rc != 0)) || die "'$*' at $site succeeded, but it should have failed"
    echo "    (failed with exit status $rc after ${ELAPSED}s)"
}

json() {  # EXPR [ARG...]: print a Python expression of the JSON document in $OUT (d; args)
    python3 -c 'import json, sys; d, args = json.loads(sys.argv[1]), sys.argv[3:]; print(eval(sys.argv[2]))' "$OUT" "$@"
}

lt() { python3 -c 'import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))' "$1" "$2"; }

nbd_a() { echo "nbd+unix:///$1?socket=$WORK/a/nbd.sock"; }
disk_b() { echo "$WORK/b/disks/$1.img"; }
b_bytes() { dd if="$(disk_b "$1")" bs=64K skip="$2" count="$3" status=none; }  # in 64 KiB units
pattern() { head -c "$2" /dev/zero | tr '\0' "\\$(printf '%03o' "$1")"; }

echo "glvm demo: two sites on loopback, the white paper's RPV runbook (RPV port $PORT)"
echo "temp dir: $WORK"

step "Start the two site daemons (each rpvd writes READY to --ready-fd once it serves)"
mkdir -p "$WORK/a" "$WORK/b/disks"
start_site b "$B_IP" nodeB
start_site a "$A_IP" nodeA
note "glvmctl finds its rpvd through GLVM_SOCKET (siteA# uses $WORK/a/control.sock, siteB# $WORK/b/control.sock)"

# ------------------------------------------------------------------------------------------
step "RPV server configuration at the disaster recovery site (Poughkeepsie, site B)"
note "two new disks, the white paper's PV3 and PV4, known at site B as hdisk2 and hdisk3"
at siteB glvmctl mkdev -c disk -t file -a "path=$(disk_b hdisk2)" -a size=64M -l hdisk2
at siteB glvmctl mkdev -c disk -t file -a "path=$(disk_b hdisk3)" -a size=64M -l hdisk3
at siteB glvmctl lspv
at siteB glvmctl lspv --json
PV3=$(json 'next(p["pvid"] for p in d if p["name"] == "hdisk2")')
PV4=$(json 'next(p["pvid"] for p in d if p["name"] == "hdisk3")')
[[ $PV3 =~ ^[0-9a-f]{32}$ && $PV4 =~ ^[0-9a-f]{32}$ ]] || die "unexpected PVIDs '$PV3' '$PV4'"
note "define the RPV server site name"
at siteB glvmctl rpvserver site Poughkeepsie
note "one RPV server per disk; each accepts only the RPV client address of site A"
at siteB glvmctl mkdev -c rpvserver -t rpvstype -a "rpvs_pvid=$PV3" -a "client_addr=$A_IP" -a auto_online=y
[[ $OUT == "rpvserver0 Available" ]] || die "expected 'rpvserver0 Available'"
at siteB glvmctl mkdev -c rpvserver -t rpvstype -a "rpvs_pvid=$PV4" -a "client_addr=$A_IP" -a auto_online=y
[[ $OUT == "rpvserver1 Available" ]] || die "expected 'rpvserver1 Available'"
at siteB glvmctl lsdev -C -c rpvserver
at siteB glvmctl lsattr -E -l rpvserver0

# ------------------------------------------------------------------------------------------
step "RPV client configuration at the production site (Philadelphia, site A)"
at siteA glvmctl rpvserver site Philadelphia
note "ask the RPV server at $B_IP which disks it serves to this address"
at siteA glvmctl rpvclient discover --server-addr "$B_IP" --local-addr "$A_IP" --port "$PORT"
at siteA glvmctl rpvclient discover --server-addr "$B_IP" --local-addr "$A_IP" --port "$PORT" --json
[[ $(json 'd["site"]') == Poughkeepsie ]] || die "discover did not report site Poughkeepsie"
[[ $(json 'sorted(x["pvid"] for x in d["disks"]) == sorted(args)' "$PV3" "$PV4") == True ]] \
    || die "discover did not list both PVIDs"
ok "site Poughkeepsie offers PV3 ($PV3) and PV4 ($PV4)"
note "one RPV client per remote disk (io_timeout=$IO_TIMEOUT s instead of the default 180, to keep the demo short)"
at siteA glvmctl mkdev -c disk -t rpvclient -a "pvid=$PV3" -a "server_addr=$B_IP" -a "local_addr=$A_IP" \
    -a "io_timeout=$IO_TIMEOUT" -a "server_port=$PORT" -l hdisk3
[[ $OUT == "hdisk3 Available" ]] || die "expected 'hdisk3 Available'"
at siteA glvmctl mkdev -c disk -t rpvclient -a "pvid=$PV4" -a "server_addr=$B_IP" -a "local_addr=$A_IP" \
    -a "io_timeout=$IO_TIMEOUT" -a "server_port=$PORT" -l hdisk4
[[ $OUT == "hdisk4 Available" ]] || die "expected 'hdisk4 Available'"
at siteA glvmctl lsdev -C -c disk -t rpvclient
at siteA glvmctl lsattr -E -l hdisk3
at siteA glvmctl lspv

# ------------------------------------------------------------------------------------------
step "Data written at site A through hdisk3 lands on PV3 at site B"
note "site A exports every Available disk over NBD: $(nbd_a hdisk3)"
at siteA nbdinfo "$(nbd_a hdisk3)"
head -c $((DATA_MIB << 20)) /dev/urandom >"$WORK/random.bin"
note "$DATA_MIB MiB of random data in $WORK/random.bin"
at siteA nbdcopy --flush "$WORK/random.bin" "$(nbd_a hdisk3)"
at siteA sha256sum "$WORK/random.bin"
SUM_SRC=${OUT%% *}
echo "siteB# head -c ${DATA_MIB}M $(disk_b hdisk2) | sha256sum"
SUM_B=$(head -c $((DATA_MIB << 20)) "$(disk_b hdisk2)" | sha256sum)
SUM_B=${SUM_B%% *}
echo "    $SUM_B  -"
[[ $SUM_SRC == "$SUM_B" ]] || die "site B's hdisk2 does not hold the bytes written at site A"
ok "the first $DATA_MIB MiB of site B's hdisk2 file match the source (sha256 $SUM_SRC)"
at siteA nbdcopy "$(nbd_a hdisk3)" "$WORK/readback.bin"
cmp -n $((DATA_MIB << 20)) "$WORK/random.bin" "$WORK/readback.bin" || die "read back through hdisk3 differs"
ok "reading hdisk3 back at site A returns the same $DATA_MIB MiB"

# ------------------------------------------------------------------------------------------
step "Handling remote physical volume failures: site B stops answering"
show_cmd siteB kill -STOP "$B_PID"
kill -STOP "$B_PID"
note "the next write through hdisk3 gets no reply; after io_timeout=$IO_TIMEOUT s it fails with EIO"
at_fails siteA qemu-io -f raw -c "write -P 0x77 0 64k" "$(nbd_a hdisk3)"
[[ $OUT == *"Input/output error"* ]] || die "expected an I/O error"
lt "$ELAPSED" $((IO_TIMEOUT + 2)) || die "the write took ${ELAPSED}s, more than io_timeout + 2"
lt $((IO_TIMEOUT - 1)) "$ELAPSED" || die "the write failed after ${ELAPSED}s, before io_timeout"
ok "write failed after ${ELAPSED}s (io_timeout $IO_TIMEOUT s)"
note "the client is now failed: new I/O fails at once, without waiting again"
at_fails siteA qemu-io -f raw -c "read 0 4k" "$(nbd_a hdisk3)"
lt "$ELAPSED" 2 || die "the read took ${ELAPSED}s on a failed client"
at siteA glvmctl lspv hdisk3
at siteA glvmctl errpt
at siteA glvmctl errpt --json
[[ $(json '[e["label"] for e in d]') == "['RPVC_IO_TIMEOUT']" ]] || die "expected one RPVC_IO_TIMEOUT entry"
[[ $(json 'd[0]["identifier"] + " " + d[0]["resource"]') == "D034B795 hdisk3" ]] || die "wrong errpt entry"
at siteA glvmctl errpt -a
[[ $OUT == *"LABEL:          RPVC_IO_TIMEOUT"* && $OUT == *"chdev -l <device> -a resume=yes"* ]] \
    || die "errpt -a does not show the RPVC_IO_TIMEOUT details"
ok "one RPVC_IO_TIMEOUT entry (D034B795) for hdisk3"
note "correct the problem (site B runs again), then tell the RPV client to resume"
show_cmd siteB kill -CONT "$B_PID"
kill -CONT "$B_PID"
at siteA glvmctl chdev -l hdisk3 -a resume=yes
at siteA qemu-io -f raw -c "write -P 0x5a 0 64k" -c "read -P 0x5a 0 64k" "$(nbd_a hdisk3)"
[[ $OUT == *"wrote 65536/65536"* && $OUT == *"read 65536/65536"* ]] || die "write/read after resume"
cmp <(b_bytes hdisk2 0 1) <(pattern 0x5a 65536) || die "site B's hdisk2 does not hold the new write"
ok "write and verified read through hdisk3 work again; site B's hdisk2 holds the 0x5a pattern"
at siteA glvmctl lspv hdisk3

# ------------------------------------------------------------------------------------------
step "Planned outage: tell hdisk4 it has no RPV server"
OUT=$(GLVM_SOCKET=$(site_socket siteA) glvmctl errpt --json)
ERRS_BEFORE=$(json 'len(d)')
at siteA glvmctl chdev -l hdisk4 -a server_addr=none
at_fails siteA qemu-io -f raw -c "write -P 0x44 0 64k" "$(nbd_a hdisk4)"
[[ $OUT == *"Input/output error"* ]] || die "expected an I/O error"
lt "$ELAPSED" 2 || die "the write took ${ELAPSED}s; with server_addr=none it should fail at once"
ok "write failed at once (${ELAPSED}s)"
at siteA glvmctl lspv hdisk4
[[ $OUT == *disabled* ]] || die "hdisk4 should show as disabled"
at siteA glvmctl errpt
OUT=$(GLVM_SOCKET=$(site_socket siteA) glvmctl errpt --json)
[[ $(json 'len(d)') == "$ERRS_BEFORE" ]] || die "server_addr=none wrote an error log entry"
at siteA glvmctl errpt -N hdisk4
[[ -z $OUT ]] || die "errpt -N hdisk4 should be empty"
ok "no error log entry for the planned outage"
note "the outage is over: give hdisk4 its server address again"
at siteA glvmctl chdev -l hdisk4 -a "server_addr=$B_IP"
at siteA qemu-io -f raw -c "write -P 0xa5 1M 64k" -c "read -P 0xa5 1M 64k" "$(nbd_a hdisk4)"
[[ $OUT == *"wrote 65536/65536"* && $OUT == *"read 65536/65536"* ]] || die "write/read after server_addr"
cmp <(b_bytes hdisk3 16 1) <(pattern 0xa5 65536) || die "site B's hdisk3 does not hold the new write"
ok "I/O through hdisk4 works again; site B's hdisk3 holds the 0xa5 pattern at 1 MiB"
at siteA glvmctl lspv

echo
echo "demo: all checks passed in ${SECONDS}s (GLVM_DEMO_KEEP=1 keeps the state dirs, disk files and rpvd.log files)"
