#!/usr/bin/env bash
# Proves the hardened units work under a real systemd: boots a debootstrap'd
# Debian (bookworm, what Raspberry Pi OS is built on) with systemd-nspawn,
# with monitor-server and monitor-agent installed by scripts/install.sh and
# enabled, and checks from inside the container that
#   - both Type=notify units become active (so READY=1 arrived) and stay
#     active past a short watchdog (so WATCHDOG=1 keeps arriving);
#   - the sandbox is in force: non-root uid, no capabilities, no_new_privs,
#     a seccomp filter;
#   - the agent, with the default hostname, reports all six metrics to the
#     server and runs an allowlisted command (`uname -m`) inside its sandbox;
#   - after `kill -9` of the agent, Restart=on-failure brings it back and it
#     reports again;
#   - `systemctl stop` ends both cleanly (no SIGKILL needed).
# The container has its own network namespace with only a loopback
# (--private-network): nothing it does leaves the machine.
#
# systemd is not PID 1 on the machines this runs on, so nspawn runs with
# --register=no --keep-unit (no machined, no D-Bus on the host) and the
# check itself runs as a oneshot unit inside the container that powers it
# off when done. The base tree is cached in NSPAWN_CACHE (default
# /var/cache/monitor-nspawn); each run boots a throwaway copy.
#
# Usage: scripts/nspawn-check.sh [--from DIR]
#   --from DIR   x86_64 binaries to install (default: builds target/release)
# Environment: NSPAWN_CACHE, NSPAWN_TIMEOUT (seconds for the boot and all
# checks, default 300), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"

from=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --from) from=${2:?--from needs a directory}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "nspawn-check: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

cache=${NSPAWN_CACHE:-/var/cache/monitor-nspawn}
timeout_s=${NSPAWN_TIMEOUT:-300}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
export DEBIAN_FRONTEND=noninteractive

log() { echo "nspawn-check: $*"; }
fail() {
    echo "nspawn-check: FAIL: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || fail "must run as root (debootstrap, systemd-nspawn)"

work=$(mktemp -d /var/tmp/nspawn-check.XXXXXX)
nspawn_pid=""
cleanup() {
    local status=$?
    if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # One SIGTERM asks nspawn to halt the container; a second one (after
        # 10 s) ends it at once.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. Tools and the cached base tree --------------------------------------
missing=()
for p in debootstrap systemd-container; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$work/apt.log" 2>&1 ||
        fail "apt-get install ${missing[*]}: $(tail -n 5 "$work/apt.log")"
fi

base="$cache/$suite"
if [[ ! -x $base/lib/systemd/systemd ]]; then
    log "debootstrap $suite into $base (once; about 2 minutes)"
    mkdir -p "$cache"
    rm -rf "$base.tmp"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$suite" "$base.tmp" "$mirror" \
        >"$work/debootstrap.log" 2>&1 || fail "debootstrap: $(tail -n 5 "$work/debootstrap.log")"
    mv "$base.tmp" "$base"
fi

# --- 2. Binaries ------------------------------------------------------------
if [[ -z $from ]]; then
    log "building monitor-agent, monitor-server and monitorctl (release)"
    cargo build --release -p monitor-agent -p monitor-server -p monitorctl >"$work/build.log" 2>&1 ||
        fail "cargo build --release: $(grep -E '^error' -A 5 "$work/build.log" | head -n 20)"
    from="$repo_dir/target/release"
fi

# --- 3. A throwaway copy with everything installed and enabled -------------
root="$work/root"
log "copying the base tree"
cp -a --reflink=auto "$base" "$root"
DESTDIR=$root scripts/install.sh --agent --server --from "$from" \
    --server-url http://127.0.0.1:50051 >"$work/install.log" ||
    fail "install.sh: $(cat "$work/install.log")"
systemctl --root="$root" enable monitor-server.service monitor-agent.service >/dev/null 2>&1 ||
    fail "systemctl --root enable"
# debootstrap copied this machine's /etc/hostname; the agent must report
# under the container's own name (its default: the kernel hostname).
echo pi-nspawn >"$root/etc/hostname"
# The spool lives in the agent's StateDirectory, the one path it may write.
echo "MONITOR_SPOOL=/var/lib/monitor-agent/spool" >>"$root/etc/default/monitor-agent"

# A short watchdog for the test only: the unit's 30 s would make "the
# daemon keeps pinging" a slow check. Both daemons must ping every 1.5 s.
for unit in monitor-agent monitor-server; do
    mkdir -p "$root/etc/systemd/system/$unit.service.d"
    printf '[Service]\nWatchdogSec=3s\n' >"$root/etc/systemd/system/$unit.service.d/nspawn-check.conf"
done

cat >"$root/usr/local/sbin/monitor-nspawn-test" <<'EOF'
#!/bin/bash
# Runs inside the container as a oneshot unit; writes its findings to
# /var/log/monitor-nspawn-test.log and powers the container off.
set -uo pipefail
out=/var/log/monitor-nspawn-test.log
exec >"$out" 2>&1
host=$(hostname)
say() { echo "$(date +%T) $*"; }
finish() {
    say "RESULT: $1"
    if [[ $1 != PASS ]]; then
        systemctl status --no-pager monitor-server monitor-agent 2>&1 | head -n 40
        journalctl --no-pager -n 60 -u monitor-server -u monitor-agent
    fi
    systemctl poweroff --no-block
    exit 0
}
# until_ok SECONDS WHAT CMD...: polls CMD every 0.25 s until it succeeds.
until_ok() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || finish "FAIL: timed out after ${limit}s waiting for $what"
        sleep 0.25
    done
}
prop() { systemctl show -p "$2" --value "$1"; }
six_metrics() {
    local n
    n=$(monitorctl query "$host" --since 10m --json 2>/dev/null |
        grep -oE '(cpu_percent|mem_percent|disk_read_kbps|disk_write_kbps|net_in_kbps|net_out_kbps)' | sort -u | wc -l)
    [[ $n == 6 ]]
}
sample_count() {
    monitorctl query "$host" --since 10m --json 2>/dev/null | grep -oE '"(metric)"' | wc -l
}

say "booted: $(systemctl is-system-running), host '$host', $(systemd --version | head -n 1)"
for unit in monitor-server monitor-agent; do
    until_ok 60 "$unit to become active (READY=1)" systemctl is-active --quiet "$unit"
    say "$unit active, Type=$(prop $unit Type), WatchdogUSec=$(prop $unit WatchdogUSec)"
done

for unit in monitor-server monitor-agent; do
    pid=$(prop $unit MainPID)
    uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
    cap=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
    nnp=$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$pid/status")
    seccomp=$(awk '/^Seccomp:/ { print $2 }' "/proc/$pid/status")
    say "$unit pid $pid: uid $uid, CapEff $cap, NoNewPrivs $nnp, Seccomp $seccomp"
    [[ $uid != 0 ]] || finish "FAIL: $unit runs as root"
    [[ $cap == 0000000000000000 ]] || finish "FAIL: $unit has capabilities $cap"
    [[ $nnp == 1 ]] || finish "FAIL: $unit lacks no_new_privs"
    [[ $seccomp == 2 ]] || finish "FAIL: $unit has no seccomp filter"
done
for unit in monitor-server monitor-agent; do
    say "$(systemd-analyze security --no-pager "$unit" | tail -n 1)"
done

[[ $host == pi-nspawn ]] || finish "FAIL: container hostname is '$host', expected pi-nspawn"
until_ok 60 "all six metrics from $host in the server" six_metrics
say "server has all six metrics from $host ($(sample_count) samples)"
for f in /var/lib/monitor-server/monitor.db /var/lib/monitor-agent/spool; do
    [[ -f $f ]] || finish "FAIL: $f missing (StateDirectory= not writable?)"
    say "$f: $(stat -L -c '%s bytes, owner uid %u, mode %a' "$f")"
done

monitorctl hosts
ping_out=$(monitorctl exec --host "$host" -- ping 2>&1) || finish "FAIL: exec ping: $ping_out"
say "exec ping: $(tr '\n' ' ' <<<"$ping_out")"
uname_out=$(monitorctl exec --host "$host" -- uname -m 2>&1) || finish "FAIL: exec uname -m: $uname_out"
grep -qw "$(uname -m)" <<<"$uname_out" || finish "FAIL: exec uname -m printed '$uname_out'"
say "exec uname -m (allowlisted, inside the sandbox): $(tr '\n' ' ' <<<"$uname_out")"

# Watchdog: the test drop-in sets WatchdogSec=3s, so a daemon that does
# not ping is killed within 3 s. 8 s later both must still be the same
# process.
agent_pid=$(prop monitor-agent MainPID)
server_pid=$(prop monitor-server MainPID)
sleep 8
[[ $(prop monitor-agent MainPID) == "$agent_pid" && $(prop monitor-agent NRestarts) == 0 ]] ||
    finish "FAIL: monitor-agent was restarted within 8 s (watchdog not pinged?)"
[[ $(prop monitor-server MainPID) == "$server_pid" && $(prop monitor-server NRestarts) == 0 ]] ||
    finish "FAIL: monitor-server was restarted within 8 s (watchdog not pinged?)"
say "both daemons kept their pid for 8 s under WatchdogSec=3s"

before=$(sample_count)
kill -9 "$agent_pid"
say "sent SIGKILL to monitor-agent pid $agent_pid"
new_pid_up() {
    local p
    p=$(prop monitor-agent MainPID)
    [[ $p != 0 && $p != "$agent_pid" ]] && systemctl is-active --quiet monitor-agent
}
# RestartSec=5s, then the start itself.
until_ok 30 "monitor-agent to be restarted after kill -9" new_pid_up
say "monitor-agent restarted: pid $(prop monitor-agent MainPID), NRestarts=$(prop monitor-agent NRestarts)"
more_samples() { [[ $(sample_count) -gt $before ]]; }
until_ok 30 "new samples after the restart" more_samples
say "samples after the restart: $before -> $(sample_count)"

for unit in monitor-agent monitor-server; do
    systemctl stop "$unit"
    result=$(prop $unit Result)
    [[ $result == success ]] || finish "FAIL: systemctl stop $unit ended with Result=$result"
    say "$unit stopped cleanly (Result=$result)"
done
finish PASS
EOF
chmod 0755 "$root/usr/local/sbin/monitor-nspawn-test"
cat >"$root/etc/systemd/system/monitor-nspawn-test.service" <<'EOF'
[Unit]
Description=monitor nspawn check
After=monitor-server.service monitor-agent.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/monitor-nspawn-test

[Install]
WantedBy=multi-user.target
EOF
systemctl --root="$root" enable monitor-nspawn-test.service >/dev/null 2>&1 ||
    fail "systemctl --root enable monitor-nspawn-test"

# --- 4. Boot ----------------------------------------------------------------
log "booting the container (systemd-nspawn -b, private network, up to ${timeout_s}s)"
systemd-nspawn -q -D "$root" -b --register=no --keep-unit --private-network \
    --hostname=pi-nspawn --console=pipe </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!
deadline=$((SECONDS + timeout_s))
while kill -0 "$nspawn_pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        [[ -f $root/var/log/monitor-nspawn-test.log ]] && cat "$root/var/log/monitor-nspawn-test.log"
        fail "the container did not finish within ${timeout_s}s"
    fi
    sleep 0.5
done
wait "$nspawn_pid" || true
nspawn_pid=""

result_log="$root/var/log/monitor-nspawn-test.log"
[[ -f $result_log ]] || fail "the check never ran inside the container: $(tail -n 20 "$work/console.log")"
sed 's/^/  | /' "$result_log"
grep -q '^[0-9:]* RESULT: PASS$' "$result_log" || fail "checks inside the container failed (see above)"
log "all checks passed"
