#!/usr/bin/env bash
# glvm demo: the white paper's GLVM runbooks on one machine, two sites on loopback.
#
#   site A  Philadelphia  (production, node nodeA)  127.0.0.1
#   site B  Poughkeepsie  (DR,         node nodeB)  127.0.0.2
#
# Walks through, with every glvmctl command printed before it runs:
#   1. configuration of the seed's airline example: RPV servers at B, datavg with datafslv and
#      dataloglv at A, RPV clients, super strict LVs, gmvg add-rpvs / add-mirror / verify, and
#      the application's ext4 filesystem: as root, datafslv is attached as a block device at A
#      (glvmctl attach), made with mkfs, mounted and filled; otherwise an image made with
#      mke2fs -d is copied onto datafslv with nbdcopy;
#   4. a remote physical volume failure: site B frozen (SIGSTOP), writes at A continue on the
#      local copy after io_timeout with stale partitions, RPVC_IO_TIMEOUT and LVM_SA_STALEPP in
#      errpt, then resume=yes, varyonvg and syncvg back to zero stale partitions;
#   2. a production site outage: site A's rpvd killed with SIGKILL while the filesystem is
#      mounted and being written, B takes the volume group (rmdev of its RPV servers,
#      importvg -f), attaches datafslv, fsck -f, mounts it, and every synced file checks out;
#      production writes at B;
#   3. failback: A restarts, B gives the volume group back, A's varyonvg -n -s / chpv -v a /
#      varyonvg resyncs A's stale copy from B, and A reads every byte B wrote.
#
# Run with `make demo` (puts .venv/bin on PATH), or `PATH=.venv/bin:$PATH bash conf/demo.sh`.
# Environment: GLVM_DEMO_PORT   RPV TCP port for both daemons (default 6192; when it is not
#                               set and 6192 is taken, a free port is picked)
#              GLVM_DEMO_KEEP=1 keep the temp dir (state dirs, logs, disk files) at the end
# Exits non-zero if any check fails; always stops both daemons and removes the temp dir.
set -euo pipefail

A_IP=127.0.0.1
B_IP=127.0.0.2
IO_TIMEOUT=3     # seconds (AIX's default is 180; short here to keep the demo quick)
DISK_SIZE=128M   # each file disk: 30 physical partitions of 4 MiB after the 8 MiB metadata area
FS_LPS=32        # datafslv: 32 logical partitions = 128 MiB, so it spans hdisk1 and hdisk2
LOG_WRITES=20000 # 64 KiB writes cycling over dataloglv while site A is killed
FS_MIB=24        # the ext4 filesystem image at the start of datafslv
CONF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECONDS=0

die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

for tool in rpvd glvmctl nbdcopy nbdinfo qemu-io sha256sum python3 mkfifo mke2fs e2fsck debugfs stdbuf; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH (bash .ci/deps.sh installs the Debian tools; make install the rest)"
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
WRITER_PID=""

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
    for m in "$WORK"/mnt-*; do  # a mount left by a failed step (demo run as root)
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    gone_host_mounts
    if [[ -n $WRITER_PID ]]; then
        kill -KILL "$WRITER_PID" 2>/dev/null || true
        wait "$WRITER_PID" 2>/dev/null || true
    fi
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
    rm -f "$WORK/ready-$s"
    mkfifo "$WORK/ready-$s"
    printf 'site%s# rpvd --config conf/site-%s.toml --state-dir %s --listen %s --node %s --ready-fd 3 3>%s &\n' \
        "${s^^}" "$s" "$WORK/$s" "$ip:$PORT" "$node" "$WORK/ready-$s"
    rpvd --config "$CONF_DIR/site-$s.toml" --state-dir "$WORK/$s" --listen "$ip:$PORT" \
        --node "$node" --ready-fd 3 3>"$WORK/ready-$s" 2>>"$WORK/rpvd-$s.stderr" </dev/null &
    pid=$!
    if [[ $s == a ]]; then A_PID=$pid; else B_PID=$pid; fi
    read -r -t 20 line <"$WORK/ready-$s" || true
    [[ $line == READY ]] || die "rpvd for site ${s^^} did not become ready on $ip:$PORT"
    echo "    rpvd $pid ready: RPV on $ip:$PORT, control socket $WORK/$s/control.sock"
}

# gone_host_mounts: what a dead host leaves behind in this one-machine demo (on a real power
# loss it vanishes with the host): loop devices on attach files under $WORK, their FUSE
# mounts and nbdfuse processes.
gone_host_mounts() {
    local dev
    for dev in $(losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 {print $1}'); do
        losetup -d "$dev" 2>/dev/null || true
    done
    awk -v w="$WORK/" 'index($5, w) == 1 && $0 ~ /fuse/ {print $5}' /proc/self/mountinfo 2>/dev/null |
        while read -r m; do fusermount3 -uz "$m" 2>/dev/null || true; done
    pkill -f "nbdfuse .*$WORK/" 2>/dev/null || true
}

# mount_check SITE [rw]: the administrator's view of the filesystem on datafslv at SITE:
# attach the LV as a block device, fsck it, mount it (read-only unless rw), read a file and
# check every file in files.sha256; with rw, production writes a file (synced, added to
# files.sha256); unmount, detach. Needs root (mount); skipped otherwise.
mount_check() {
    local site=$1 mode=${2:-ro} dev mnt="$WORK/mnt-${1,,}"
    if ((EUID != 0)); then
        note "(not root: skipping the mount of datafslv at $site)"
        return
    fi
    at "$site" glvmctl attach datafslv
    dev=$OUT
    at "$site" e2fsck -fn "$dev"
    mkdir -p "$mnt"
    at "$site" mount -o "$mode,noatime" "$dev" "$mnt"
    at "$site" cat "$mnt/flights/schedule.csv"
    [[ $OUT == *"GL101,POU,PHL"* ]] || die "the file read from the mounted filesystem at $site is wrong"
    if [[ -s $WORK/files.sha256 ]]; then
        show_cmd "$site" sh -c "cd $mnt && sha256sum --quiet -c $WORK/files.sha256"
        (cd "$mnt" && sha256sum --quiet -c "$WORK/files.sha256") || die "a synced file differs at $site"
        echo "    $(wc -l <"$WORK/files.sha256") files synced before: every sha256 matches"
    fi
    if [[ $mode == rw ]]; then
        note "production at $site: the reservation system rebooks a flight"
        show_cmd "$site" sh -c "echo GL102,POU,PHL >> $mnt/flights/rebooked.csv && sync -f $mnt/flights/rebooked.csv"
        echo "GL102,POU,PHL" >>"$mnt/flights/rebooked.csv"
        sync -f "$mnt/flights/rebooked.csv"
        (cd "$mnt" && sha256sum ./flights/rebooked.csv) >>"$WORK/files.sha256"
    fi
    at_fails "$site" glvmctl varyoffvg datavg
    at "$site" umount "$mnt"
    at "$site" glvmctl detach datafslv
    ok "datafslv at $site: attached as $dev, fsck clean, mounted, the schedule reads back"
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
# output (indented) and keep it in $OUT; $ELAPSED is its run time in seconds. Fails the demo
# if the command fails.
at() {
    local site=$1 rc=0 t0
    shift
    show_cmd "$site" "$@"
    t0=${EPOCHREALTIME/[.,]/}
    OUT=$(GLVM_SOCKET=$(site_socket "$site") "$@" 2>&1) || rc=$?
    t0=$(((${EPOCHREALTIME/[.,]/} - t0) / 100000))
    ELAPSED=$((t0 / 10)).$((t0 % 10))
    OUT=${OUT//$'\r'/}
    [[ -z $OUT ]] || printf '%s\n' "$OUT" | sed 's/^/    /'
    ((rc == 0)) || die "'$*' at $site exited $rc"
}

# at_fails SITE CMD...: like at, but the command must fail.
at_fails() {
    local site=$1 rc=0
    shift
    show_cmd "$site" "$@"
    OUT=$(GLVM_SOCKET=$(site_socket "$site") "$@" 2>&1) || rc=$?
    [[ -z $OUT ]] || printf '%s\n' "$OUT" | sed 's/^/    /'
    ((rc != 0)) || die "'$*' at $site succeeded, but it should have failed"
}

# quiet SITE CMD...: run a glvmctl listing for a check without printing it; sets $OUT.
quiet() {
    local site=$1
    shift
    OUT=$(GLVM_SOCKET=$(site_socket "$site") "$@") || die "'$*' at $site failed"
}

json() {  # EXPR [ARG...]: print a Python expression of the JSON document in $OUT (d; args)
    python3 -c 'import json, sys; d, args = json.loads(sys.argv[1]), sys.argv[3:]; print(eval(sys.argv[2]))' "$OUT" "$@"
}

check() {  # EXPR MESSAGE [ARG...]: fail the demo unless the Python expression over $OUT is true
    local expr=$1 msg=$2
    shift 2
    [[ $(json "bool($expr)" "$@") == True ]] || die "$msg"
}

lt() { python3 -c 'import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))' "$1" "$2"; }

nbd() { echo "nbd+unix:///$2?socket=$WORK/${1,,}/nbd.sock"; }  # SITE (A|B) EXPORT
disk_a() { echo "$WORK/a/disks/$1.img"; }
disk_b() { echo "$WORK/b/disks/$1.img"; }

# lv_sum SITE LV: copy the whole LV out through the site's NBD export and print its sha256
# (kept in $SUM; the copy stays in $WORK/SITE-LV.bin).
lv_sum() {
    local site=$1 lv=$2 file="$WORK/${1,,}-$2.bin"
    at "$site" nbdcopy "$(nbd "${site#site}" "$lv")" "$file"
    at "$site" sha256sum "$file"
    SUM=${OUT%% *}
}

# fs_sum SITE: sha256 of the filesystem region (the first FS_MIB MiB) of the last lv_sum copy.
fs_sum() {
    local file="$WORK/${1,,}-datafslv.bin"
    echo "$1# head -c ${FS_MIB}M $file | sha256sum"
    FSUM=$(head -c $((FS_MIB << 20)) "$file" | sha256sum)
    FSUM=${FSUM%% *}
    echo "    $FSUM  -"
}

# copy_sums LV: at site A, read each mirror copy of LV straight from the disk files at both
# sites (located with lslv -m --json) and print their sha256; fails unless all are equal.
copy_sums() {
    local lv=$1
    quiet siteA glvmctl lslv -m "$lv" --json
    note "each copy of $lv read straight from the disk files, using the map of lslv -m $lv --json"
    python3 - "$OUT" "$lv" "$WORK" <<'EOF' || die "the mirror copies of $lv differ"
import hashlib, json, sys
m, lv, work = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
files = {"hdisk1": ("A", f"{work}/a/disks/hdisk1.img"), "hdisk2": ("A", f"{work}/a/disks/hdisk2.img"),
         "hdisk3": ("B", f"{work}/b/disks/hdisk2.img"), "hdisk4": ("B", f"{work}/b/disks/hdisk3.img")}
pp = m["pp_size_mb"] << 20
sums = []
for copy in range(m["copies"]):
    h, where = hashlib.sha256(), set()
    for row in m["map"]:
        c = row["copies"][copy]
        site, path = files[c["pv"]]
        where.add(f"site {site} {path.rsplit('/', 1)[1]}")
        with open(path, "rb") as f:
            f.seek((8 << 20) + (c["pp"] - 1) * pp)
            h.update(f.read(pp))
    sums.append(h.hexdigest())
    print(f"    copy {copy + 1} ({', '.join(sorted(where))}): sha256 {sums[-1]}")
sys.exit(len(set(sums)) != 1)
EOF
    ok "all copies of $lv hold the same bytes at both sites"
}

# check_log FILE ACKED: FILE (a copy of dataloglv) must hold, in each 64 KiB block, the pattern of
# the last of the first ACKED log writes to that block (zeros if none); the block of the write
# that was in flight at the kill may hold the old or the new pattern in each 512-byte sector.
check_log() {
    python3 - "$1" "$2" <<'EOF' || die "dataloglv lost an acknowledged write"
import sys
data, acked = open(sys.argv[1], "rb").read(), int(sys.argv[2])
expect = [0] * 64
for i in range(acked):
    expect[i % 64] = i % 255 + 1
fly_block, fly_pattern = acked % 64, acked % 255 + 1
for b in range(64):
    allowed = {expect[b]} | ({fly_pattern} if b == fly_block else set())
    for s in range(128):
        sector = data[b * 65536 + s * 512:b * 65536 + (s + 1) * 512]
        if not any(sector == bytes([p]) * 512 for p in allowed):
            sys.exit(f"    block {b} sector {s} holds {sector[0]:#04x}, expected {expect[b]:#04x}")
held = data[fly_block * 65536]
print(f"    64 blocks checked: each holds its last acknowledged pattern; block {fly_block} "
      f"(write {acked}, in flight at the kill) holds {held:#04x} "
      f"({'the new' if held == fly_pattern else 'the old'} pattern)")
EOF
}

echo "glvm demo: two sites on loopback walk the white paper's GLVM runbooks (RPV port $PORT)"
echo "temp dir: $WORK"

step "Start the two site daemons (each rpvd writes READY to --ready-fd once it serves)"
mkdir -p "$WORK/a/disks" "$WORK/b/disks"
start_site b "$B_IP" nodeB
start_site a "$A_IP" nodeA
note "glvmctl finds its rpvd through GLVM_SOCKET (siteA# uses $WORK/a/control.sock, siteB# $WORK/b/control.sock)"

# ==========================================================================================
step "Runbook 1: configure GLVM for the airline example"
note "the starting point: an ordinary volume group datavg at Philadelphia (site A) on PV1/PV2"
at siteA glvmctl rpvserver site Philadelphia
at siteA glvmctl mkdev -c disk -t file -a "path=$(disk_a hdisk1)" -a size=$DISK_SIZE -l hdisk1
at siteA glvmctl mkdev -c disk -t file -a "path=$(disk_a hdisk2)" -a size=$DISK_SIZE -l hdisk2
at siteA glvmctl mkvg -y datavg hdisk1 hdisk2
at siteA glvmctl mklv -y datafslv datavg $FS_LPS
at siteA glvmctl mklv -y dataloglv datavg 1
note "keep datavg from being varied on at daemon start"
at siteA glvmctl chvg -a n datavg

note "RPV server configuration at Poughkeepsie (site B): two unused disks, PV3 and PV4"
at siteB glvmctl rpvserver site Poughkeepsie
at siteB glvmctl mkdev -c disk -t file -a "path=$(disk_b hdisk2)" -a size=$DISK_SIZE -l hdisk2
at siteB glvmctl mkdev -c disk -t file -a "path=$(disk_b hdisk3)" -a size=$DISK_SIZE -l hdisk3
at siteB glvmctl lspv --json
PV3=$(json 'next(p["pvid"] for p in d if p["name"] == "hdisk2")')
PV4=$(json 'next(p["pvid"] for p in d if p["name"] == "hdisk3")')
[[ $PV3 =~ ^[0-9a-f]{32}$ && $PV4 =~ ^[0-9a-f]{32}$ ]] || die "unexpected PVIDs '$PV3' '$PV4'"
note "one RPV server per disk, accepting only site A's address ($A_IP)"
at siteB glvmctl rpvserver add --client-addr "$A_IP" --auto-online y "$PV3" "$PV4"
[[ $OUT == $'rpvserver0 Available\nrpvserver1 Available' ]] || die "expected rpvserver0 and rpvserver1 Available"
at siteB glvmctl lsdev -C -c rpvserver

note "RPV client configuration at Philadelphia (site A)"
note "discover without --local-addr lists this host's addresses that reach B (the seed's SMIT pick list)"
at siteA glvmctl rpvclient discover --server-addr "$B_IP" --port "$PORT"
[[ $OUT == *"$A_IP"*"reaches it (2 disks offered)"* ]] || die "discover did not list $A_IP as reaching B"
[[ $OUT == *"available at site Poughkeepsie"* && $OUT == *"$PV3"* && $OUT == *"$PV4"* ]] \
    || die "discover did not list PV3 and PV4 at site Poughkeepsie"
at siteA glvmctl mkdev -c disk -t rpvclient -a "pvid=$PV3" -a "server_addr=$B_IP" -a "local_addr=$A_IP" \
    -a "io_timeout=$IO_TIMEOUT" -a "server_port=$PORT" -l hdisk3
[[ $OUT == "hdisk3 Available" ]] || die "expected 'hdisk3 Available'"
at siteA glvmctl mkdev -c disk -t rpvclient -a "pvid=$PV4" -a "server_addr=$B_IP" -a "local_addr=$A_IP" \
    -a "io_timeout=$IO_TIMEOUT" -a "server_port=$PORT" -l hdisk4
[[ $OUT == "hdisk4 Available" ]] || die "expected 'hdisk4 Available'"
at siteA glvmctl lsdev -C -c disk -t rpvclient

note "volume group configuration at Philadelphia: super strict LVs, then the remote disks and a copy on them"
at siteA glvmctl chlv -s s -u 2 datafslv
at siteA glvmctl chlv -s s -u 2 dataloglv
at siteA glvmctl gmvg add-rpvs datavg --site Poughkeepsie
[[ $OUT == *"hdisk3 hdisk4"* ]] || die "add-rpvs did not add hdisk3 and hdisk4"
at siteA glvmctl gmvg add-mirror datavg --site Poughkeepsie
[[ $OUT == *"0516-1125 mirrorvg: Quorum requirement turned off"* ]] || die "add-mirror did not turn quorum off"
note "vary the group off and on for the quorum change to take effect"
at siteA glvmctl varyoffvg datavg
at siteA glvmctl varyonvg datavg
at siteA glvmctl gmvg verify datavg
[[ $OUT == "Checking Volume Group datavg."* && $OUT == *"Checking Logical Volume datafslv."* \
    && $OUT == *"Checking Logical Volume dataloglv."* && $OUT != *ERROR* ]] || die "gmvg verify"
[[ $(printf '%s\n' "$OUT" | awk '$2 == "PV1" {print $1} $2 == "PV2" {print $1}' | tr '\n' ' ') == "Philadelphia Poughkeepsie " ]] \
    || die "gmvg verify should show copy PV1 at Philadelphia and PV2 at Poughkeepsie"
at siteA glvmctl lsvg datavg
quiet siteA glvmctl lsvg datavg --json
check 'd["state"] == "active" and d["quorum"] is False and d["stale_pps"] == 0 and len(d["pvs"]) == 4' \
    "datavg should be active, quorum off, 4 PVs, no stale PPs"
at siteA glvmctl lsvg -p datavg
at siteA glvmctl lslv -m dataloglv
quiet siteA glvmctl lslv -m dataloglv --json
check 'all(len(r["copies"]) == 2 and not any(c["stale"] for c in r["copies"]) for r in d["map"])' \
    "dataloglv should have two fresh copies"
at siteA glvmctl gmvg list
ok "datavg is geographically mirrored: copy 1 at Philadelphia, copy 2 at Poughkeepsie, quorum off"

mkdir -p "$WORK/data/flights"
printf 'flight,from,to\nGL100,PHL,POU\nGL101,POU,PHL\n' >"$WORK/data/flights/schedule.csv"
printf 'seat map for GL100\n' >"$WORK/data/flights/GL100.seats"
head -c $((3 << 20)) /dev/urandom >"$WORK/data/reservations.db"
echo "glvm demo data" >"$WORK/data/README"
if ((EUID == 0)); then
    MOUNTED=1
    note "the application's filesystem: datafslv attached as a block device at A, mkfs, mount, files"
    at siteA glvmctl attach datafslv
    DEV_A=$OUT
    at siteA mkfs.ext4 -q -F -L datafs -E lazy_itable_init=0,lazy_journal_init=0 "$DEV_A" ${FS_MIB}M
    mkdir -p "$WORK/mnt-a"
    at siteA mount -o noatime "$DEV_A" "$WORK/mnt-a"
    at siteA cp -a "$WORK/data/." "$WORK/mnt-a/"
    at siteA sync -f "$WORK/mnt-a"
    (cd "$WORK/mnt-a" && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) >"$WORK/files.sha256"
    echo "siteA# (cd $WORK/mnt-a && sha256sum \$(find . -type f)) > $WORK/files.sha256"
    sed 's/^/    /' "$WORK/files.sha256"
    at siteA df -h "$WORK/mnt-a"
    at_fails siteA glvmctl varyoffvg datavg
    ok "ext4 on datafslv mounted at site A; varyoffvg refuses while it is open"
else
    MOUNTED=0
    note "the application's data: an ext4 filesystem made with mke2fs -d, copied onto datafslv over NBD"
    note "(not root: no block device or mount; run as root to mkfs and mount the attached LV)"
    at siteA mke2fs -q -t ext4 -d "$WORK/data" -F "$WORK/fs.img" ${FS_MIB}M
    at siteA sha256sum "$WORK/fs.img"
    SUM_IMG=${OUT%% *}
    at siteA nbdinfo "$(nbd A datafslv)"
    at siteA nbdcopy --flush "$WORK/fs.img" "$(nbd A datafslv)"
    lv_sum siteA datafslv
    fs_sum siteA
    [[ $FSUM == "$SUM_IMG" ]] || die "the filesystem region of datafslv at site A differs from fs.img"
    ok "the filesystem region of datafslv at site A matches fs.img (sha256 $SUM_IMG)"
    copy_sums datafslv
fi

# ==========================================================================================
step "Runbook 4: a remote physical volume failure (site B stops answering)"
show_cmd siteB kill -STOP "$B_PID"
kill -STOP "$B_PID"
note "a write through datafslv at A: the remote copy gets no reply; after io_timeout=$IO_TIMEOUT s"
note "the RPV clients fail, LVM marks the remote partitions stale and the local copy takes the write"
at siteA qemu-io -f raw -c "write -P 0x61 28M 256k" -c "read -P 0x61 28M 256k" "$(nbd A datafslv)"
[[ $OUT == *"wrote 262144/262144"* && $OUT == *"read 262144/262144"* ]] || die "the write at A should succeed"
lt $((IO_TIMEOUT - 1)) "$ELAPSED" || die "the write finished after ${ELAPSED}s, before io_timeout"
lt "$ELAPSED" $((IO_TIMEOUT * 2 + 5)) || die "the write took ${ELAPSED}s; I/O should continue soon after io_timeout"
ok "the write was acknowledged after ${ELAPSED}s (io_timeout $IO_TIMEOUT s) from the local copy"
at siteA glvmctl lsvg datavg
quiet siteA glvmctl lsvg datavg --json
STALE=$(json 'd["stale_pps"]')
check 'd["state"] == "active" and d["stale_pps"] > 0' "datavg should stay active with stale PPs"
at siteA glvmctl lsvg -p datavg
at siteA glvmctl errpt
quiet siteA glvmctl errpt --json
check '{"RPVC_IO_TIMEOUT", "LVM_SA_STALEPP"} <= {e["label"] for e in d}' \
    "errpt should show RPVC_IO_TIMEOUT and LVM_SA_STALEPP"
ok "$STALE stale PPs; errpt shows RPVC_IO_TIMEOUT and LVM_SA_STALEPP"
note "correct the problem (site B runs again), resume the RPV clients, tell LVM to use them again"
show_cmd siteB kill -CONT "$B_PID"
kill -CONT "$B_PID"
at siteA glvmctl chdev -l hdisk3 -a resume=yes
at siteA glvmctl chdev -l hdisk4 -a resume=yes
note "varyonvg on the varied-on group takes the PVs back and starts resynchronizing their stale"
note "partitions in the background (only the 64 KiB chunks that changed); syncvg -v waits for it"
note "and copies whatever is left"
at siteA glvmctl varyonvg datavg
at siteA glvmctl syncvg -v datavg
at siteA glvmctl lsvg -p datavg
quiet siteA glvmctl lsvg datavg --json
check 'd["stale_pps"] == 0 and all(p["state"] == "active" for p in d["pvs"])' \
    "after resume, varyonvg and syncvg every PV should be active with no stale PPs"
ok "stale PPs back to 0"
copy_sums datafslv

# ==========================================================================================
step "Runbook 2: production site outage and failover to Poughkeepsie"
if ((MOUNTED)); then
    note "the reservation system keeps writing files into the mounted filesystem at A, each synced"
    note "(sync -f) before its sha256 goes to $WORK/synced.sha256"
    mkdir -p "$WORK/mnt-a/incoming"
    echo "siteA# for N in 1..1500; do head -c 8k /dev/urandom > incoming/rN; sync -f incoming/rN; sha256sum incoming/rN >> $WORK/synced.sha256; done &"
    (
        cd "$WORK/mnt-a" || exit 1
        for ((n = 1; n <= 1500; n++)); do
            head -c 8192 /dev/urandom >"incoming/r$n" && sync -f "incoming/r$n" \
                && sha256sum "incoming/r$n" >>"$WORK/synced.sha256" || exit 0
        done
    ) 2>"$WORK/fs-writer.err" &  # its last sync fails with EIO at the kill, as expected
    FS_WRITER_PID=$!
else
    note "the data at Philadelphia just before the outage"
    lv_sum siteA datafslv
    SUM_A=$SUM
fi
note "the application keeps writing its log (dataloglv) while site A dies: $LOG_WRITES sequential"
note "64 KiB writes cycling over its 64 blocks, write i (from 0) with pattern i % 255 + 1; qemu-io prints"
note "one 'wrote' line per acknowledged write"
WCMDS=()
for ((i = 0; i < LOG_WRITES; i++)); do
    WCMDS+=(-c "write -P $((i % 255 + 1)) $(((i % 64) * 65536)) 64k")
done
echo "siteA# qemu-io -f raw -c 'write -P 1 0 64k' -c 'write -P 2 64k 64k' ... (${LOG_WRITES} writes) '$(nbd A dataloglv)' > $WORK/writer.out &"
: >"$WORK/writer.out"
stdbuf -oL qemu-io -f raw "${WCMDS[@]}" "$(nbd A dataloglv)" >"$WORK/writer.out" 2>&1 &
WRITER_PID=$!
synced_files() { if [[ -s $WORK/synced.sha256 ]]; then grep -c 'incoming/r' "$WORK/synced.sha256"; else echo 0; fi; }
for ((i = 0; i < 400; i++)); do
    (($(grep -c '^wrote' "$WORK/writer.out" || true) >= 300 && (!MOUNTED || $(synced_files) >= 10))) && break
    kill -0 "$WRITER_PID" 2>/dev/null || break
    sleep 0.05
done
kill -0 "$WRITER_PID" 2>/dev/null || die "the log writer ended before site A was killed: $(tail -n 3 "$WORK/writer.out")"
((!MOUNTED)) || kill -0 "$FS_WRITER_PID" 2>/dev/null || die "the file writer at A ended before site A was killed"
show_cmd siteA kill -9 "$A_PID"
kill -KILL "$A_PID"
wait "$A_PID" 2>/dev/null || true
A_PID=""
wait "$WRITER_PID" 2>/dev/null || true
WRITER_PID=""
if ((MOUNTED)); then
    kill -KILL "$FS_WRITER_PID" 2>/dev/null || true
    wait "$FS_WRITER_PID" 2>/dev/null || true
    head -n "$(synced_files)" "$WORK/synced.sha256" >"$WORK/synced.ok"  # whole lines only
    echo "    (the file writer had synced $(wc -l <"$WORK/synced.ok") files at the kill)"
    note "the host at Philadelphia is gone, and its mount with it (here, on one machine:"
    note "umount -l, losetup -d and fusermount3 -uz stand in for the power going out)"
    umount -l "$WORK/mnt-a" 2>/dev/null || true
    gone_host_mounts
fi
ACKED=$(grep -c '^wrote' "$WORK/writer.out" || true)
echo "    (qemu-io: $ACKED writes acknowledged, then: $(grep -v '^wrote\|^64 KiB' "$WORK/writer.out" | head -n 1))"
((ACKED < LOG_WRITES)) || die "the log writer finished before the kill"
note "site A is gone (no varyoffvg, no clean shutdown); site B takes over"
at siteB glvmctl chdev -l rpvserver0 -a auto_online=n
at siteB glvmctl chdev -l rpvserver1 -a auto_online=n
at siteB glvmctl rmdev -l rpvserver0
at siteB glvmctl rmdev -l rpvserver1
at siteB glvmctl importvg -f -y datavg hdisk2
[[ $(grep -c PVACTIVE <<<"$OUT") == 2 && $(grep -c NONAME <<<"$OUT") == 2 ]] \
    || die "importvg should show 2 PVACTIVE and 2 NONAME physical volumes"
at siteB glvmctl chvg -a n -Q n datavg
at siteB glvmctl lsvg datavg
at siteB glvmctl lsvg -p datavg
quiet siteB glvmctl lsvg datavg --json
check 'd["state"] == "active" and d["quorum"] is False and not d["auto_on"]' \
    "datavg at B should be active, quorum off, auto-on off"
if ((MOUNTED)); then
    note "the filesystem was mounted and busy at the kill: attach it at B, let fsck replay the"
    note "journal (e2fsck -f -y; exit 1 means it was replayed), then it must check clean"
    at siteB glvmctl attach datafslv
    dev=$OUT
    show_cmd siteB e2fsck -f -y "$dev"
    rc=0
    e2fsck -f -y "$dev" >"$WORK/fsck-b.out" 2>&1 || rc=$?
    sed 's/^/    /' "$WORK/fsck-b.out"
    ((rc <= 1)) || die "e2fsck -f -y at B exited $rc"
    at siteB glvmctl detach datafslv
    note "mount it at B: the files synced at A before the kill are all there, byte for byte"
    note "(varyoffvg is refused while the LV is open)"
    cat "$WORK/synced.ok" >>"$WORK/files.sha256"
    mount_check siteB rw
else
    lv_sum siteB datafslv
    [[ $SUM == "$SUM_A" ]] || die "datafslv at site B differs from what site A acknowledged"
    ok "datafslv at B equals datafslv at A before the outage (sha256 $SUM_A)"
    head -c $((FS_MIB << 20)) "$WORK/siteb-datafslv.bin" >"$WORK/fs-at-b.img"
    echo "siteB# head -c ${FS_MIB}M $WORK/siteb-datafslv.bin > $WORK/fs-at-b.img"
    at siteB e2fsck -fn "$WORK/fs-at-b.img"
    at siteB debugfs -R "cat /flights/schedule.csv" "$WORK/fs-at-b.img"
    [[ $OUT == *"GL101,POU,PHL"* ]] || die "the file read from the filesystem at B is wrong"
    ok "the ext4 filesystem passes e2fsck -fn at site B"
fi
note "the log writes: every write site A acknowledged before the kill must be in dataloglv at B"
lv_sum siteB dataloglv
check_log "$WORK/siteb-dataloglv.bin" "$ACKED"
ok "all $ACKED writes acknowledged at A before the kill read back at B"
note "the airline runs at Poughkeepsie for a while: new writes at B, past the filesystem"
at siteB qemu-io -f raw -c "write -P 0x63 32M 1M" -c "read -P 0x63 32M 1M" "$(nbd B datafslv)"
[[ $OUT == *"wrote 1048576/1048576"* ]] || die "the write at B failed"
lv_sum siteB datafslv
SUM_B=$SUM
lv_sum siteB dataloglv
SUM_LOG_B=$SUM

# ==========================================================================================
step "Runbook 3: failback to Philadelphia"
note "site A comes back; nothing is varied on at start and its RPV clients stay Defined"
start_site a "$A_IP" nodeA
at siteA glvmctl lsvg datavg --json
check 'd["state"] == "inactive"' "datavg should not be varied on at daemon start"
at siteA glvmctl lsdev -C -c disk -t rpvclient
note "Poughkeepsie gives up the volume group and serves its disks again"
at siteB glvmctl varyoffvg datavg
at siteB glvmctl chdev -l rpvserver0 -a auto_online=y
at siteB glvmctl chdev -l rpvserver1 -a auto_online=y
at siteB glvmctl mkdev -l rpvserver0
at siteB glvmctl mkdev -l rpvserver1
note "Philadelphia: RPV clients first, so LVM can see that its own copy is stale"
at siteA glvmctl mkdev -l hdisk3
at siteA glvmctl mkdev -l hdisk4
at siteA glvmctl varyonvg -n -s datavg
[[ $(awk '$1 == "hdisk1" || $1 == "hdisk2" {print $1, $3}' <<<"$OUT" | tr '\n' ' ') == "hdisk1 PVREMOVED hdisk2 PVREMOVED " ]] \
    || die "varyonvg -n -s should show hdisk1 and hdisk2 PVREMOVED"
[[ $(awk '$1 == "hdisk3" || $1 == "hdisk4" {print $1, $3}' <<<"$OUT" | tr '\n' ' ') == "hdisk3 PVACTIVE hdisk4 PVACTIVE " ]] \
    || die "varyonvg -n -s should show hdisk3 and hdisk4 PVACTIVE"
at siteA glvmctl chpv -v a hdisk1
at siteA glvmctl chpv -v a hdisk2
at siteA glvmctl lsvg -p datavg
quiet siteA glvmctl lsvg datavg --json
check 'sum(p["stale_pps"] for p in d["pvs"] if p["name"] in ("hdisk1", "hdisk2")) > 0' \
    "A's own copy should be stale after the outage"
ok "Philadelphia's copy is back in the group and marked stale where it missed B's writes"
note "the normal varyonvg resyncs the stale copy at Philadelphia from Poughkeepsie (in the background;"
note "syncvg -v waits for it)"
at siteA glvmctl varyoffvg datavg
at siteA glvmctl varyonvg datavg
at siteA glvmctl syncvg -v datavg
at siteA glvmctl lsvg -p datavg
quiet siteA glvmctl lsvg datavg --json
check 'd["stale_pps"] == 0 and all(p["state"] == "active" for p in d["pvs"])' \
    "after failback every PV should be active with no stale PPs"
at siteA glvmctl errpt -N hdisk1
at siteA glvmctl gmvg verify datavg
lv_sum siteA datafslv
[[ $SUM == "$SUM_B" ]] || die "datafslv at site A differs from what site B wrote during the outage"
ok "datafslv at A equals datafslv at B after the outage (sha256 $SUM_B)"
lv_sum siteA dataloglv
[[ $SUM == "$SUM_LOG_B" ]] || die "dataloglv at site A differs from dataloglv at site B"
ok "dataloglv at A equals dataloglv at B (sha256 $SUM_LOG_B)"
copy_sums datafslv
copy_sums dataloglv
if ((!MOUNTED)); then
    fs_sum siteA
    [[ $FSUM == "$SUM_IMG" ]] || die "the filesystem region at A changed"
    head -c $((FS_MIB << 20)) "$WORK/sitea-datafslv.bin" >"$WORK/fs-at-a.img"
    echo "siteA# head -c ${FS_MIB}M $WORK/sitea-datafslv.bin > $WORK/fs-at-a.img"
    at siteA e2fsck -fn "$WORK/fs-at-a.img"
fi
mount_check siteA
ok "back in the original direction: production at Philadelphia, mirror at Poughkeepsie"

echo
echo "demo: all checks passed in ${SECONDS}s (GLVM_DEMO_KEEP=1 keeps the state dirs, disk files and rpvd.log files)"
echo "demo: failover and failback kept every acknowledged byte"
