#!/usr/bin/env bash
# Proves the hardened units work under a real systemd, with TLS, the way
# docs/deploy.md deploys them: boots a debootstrap'd Debian (bookworm, what
# Raspberry Pi OS is built on) with systemd-nspawn, and from inside the
# container runs scripts/install.sh live and checks that
#   - install.sh --server makes the user monitor-server and the group
#     monitor; the server starts (Type=notify: READY=1 arrived) with
#     LimitNOFILE=65536, its TLS directory under its StateDirectory, keys and
#     database 0600, admin.cred 0640 group monitor: root and a member of the
#     group run monitorctl, another user is refused (exit 3);
#   - an agent installed without a join token exits 78 and systemd does not
#     restart it (RestartPreventExitStatus=78);
#   - `monitorctl enrol` + install.sh --agent --join: the agent enrols over
#     TLS (identity.pem 0600 in its StateDirectory) with the default
#     hostname and the token's URL, reports all six metrics and runs an
#     allowlisted command (`uname -m`) inside its sandbox;
#   - both stay active past a short watchdog (WATCHDOG=1 keeps arriving);
#   - the sandbox is in force: non-root uid, no capabilities, no_new_privs,
#     a seccomp filter;
#   - after `kill -9` of the agent, Restart=on-failure brings it back, it
#     reports again and does not spend the used token again;
#   - `monitorctl revoke` keeps it offline; a new token brings it back;
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
# checks, default 420), DEBIAN_MIRROR (default http://deb.debian.org/debian).
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
timeout_s=${NSPAWN_TIMEOUT:-420}
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

# --- 3. A throwaway copy, with what an operator would copy to the box ------
root="$work/root"
log "copying the base tree"
cp -a --reflink=auto "$base" "$root"
# What docs/deploy.md has the operator rsync to a box: the binaries,
# scripts/, systemd/ and docs/. install.sh runs inside the container, live
# (systemd-sysusers, daemon-reload), as it does on a Pi.
kit="$root/root/monitor"
mkdir -p "$kit/bin"
cp -a scripts systemd docs "$kit/"
for bin in monitor-agent monitor-server monitorctl; do
    install -m 0755 "$from/$bin" "$kit/bin/$bin"
done
# debootstrap copied this machine's /etc/hostname; the agent must report
# under the container's own name (its default: the kernel hostname). The
# server's certificate and the URL in its join tokens name it too, so it
# resolves as on a Debian install (127.0.1.1).
echo pi-nspawn >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 pi-nspawn\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"

# A short watchdog for the test only: the unit's 30 s would make "the
# daemon keeps pinging" a slow check. Both daemons must ping every 1.5 s.
# (Drop-ins before the units: install.sh's daemon-reload picks them up.)
for unit in monitor-agent monitor-server; do
    mkdir -p "$root/etc/systemd/system/$unit.service.d"
    printf '[Service]\nWatchdogSec=3s\n' >"$root/etc/systemd/system/$unit.service.d/nspawn-check.conf"
done

cat >"$root/usr/local/sbin/monitor-nspawn-test" <<'EOF'
#!/bin/bash
# Runs inside the container as a oneshot unit; writes its findings to
# /var/log/monitor-nspawn-test.log and powers the container off. Follows
# docs/deploy.md: server install, its credential for the group monitor, an
# agent without a token (refused, not restarted), `monitorctl enrol`, the
# agent installed with --join, then the units' behaviour, revoke, re-enrol.
set -uo pipefail
out=/var/log/monitor-nspawn-test.log
exec >"$out" 2>&1
host=$(hostname)
kit=/root/monitor
# A oneshot unit has no HOME: root, the operator here, keeps its signing key
# where monitorctl looks by default (~/.config/monitor/signing.key).
export HOME=/root
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
online() { monitorctl hosts --json 2>/dev/null | grep -qF "{\"hostname\":\"$host\",\"online\":$1"; }
# mode_group PATH: "MODE GROUP".
mode_group() { stat -c '%a %G' "$1"; }

say "booted: $(systemctl is-system-running), host '$host', $(systemd --version | head -n 1)"
[[ $host == pi-nspawn ]] || finish "FAIL: container hostname is '$host', expected pi-nspawn"

# --- The server: install.sh --server, enable --now --------------------------
"$kit/scripts/install.sh" --server --from "$kit/bin" >/tmp/install-server.log 2>&1 ||
    finish "FAIL: install.sh --server: $(cat /tmp/install-server.log)"
grep -q "monitorctl enrol HOSTNAME" /tmp/install-server.log ||
    finish "FAIL: install.sh --server does not say how to make a join token"
systemctl enable --now monitor-server || finish "FAIL: systemctl enable --now monitor-server"
until_ok 60 "monitor-server to become active (READY=1)" systemctl is-active --quiet monitor-server
say "monitor-server active, Type=$(prop monitor-server Type), WatchdogUSec=$(prop monitor-server WatchdogUSec), LimitNOFILE=$(prop monitor-server LimitNOFILE), MemoryMax=$(prop monitor-server MemoryMax)"
[[ $(prop monitor-server LimitNOFILE) == 65536 ]] || finish "FAIL: LimitNOFILE is $(prop monitor-server LimitNOFILE)"
# LimitNOFILE=65536 reaches the process, unless the machine the container
# runs on caps it lower: systemd cannot raise it past PID 1's hard limit.
pid=$(prop monitor-server MainPID)
cap=$(awk '/^Max open files/ { print $5 }' /proc/1/limits)
want=65536
[[ $cap == unlimited ]] || ((cap >= want)) || want=$cap
[[ $(awk '/^Max open files/ { print $4 }' "/proc/$pid/limits") == "$want" ]] ||
    finish "FAIL: the server's open-file limit is not $want: $(grep 'open files' "/proc/$pid/limits")"
say "monitor-server open-file limit: $want (LimitNOFILE=65536; PID 1's hard limit here: $cap)"

# Its files: the TLS directory under its StateDirectory, group monitor, the
# keys private, admin.cred readable by the group.
tls=/var/lib/monitor-server/tls
until_ok 30 "$tls/admin.cred" test -f "$tls/admin.cred"
[[ ! -L /var/lib/monitor-server ]] || finish "FAIL: /var/lib/monitor-server is a symlink (DynamicUser= still on?)"
for f in /var/lib/monitor-server "$tls" "$tls/admin.cred" "$tls/ca.key" "$tls/server.key" "$tls/ca.pem" /var/lib/monitor-server/monitor.db; do
    say "$f: $(stat -c '%A %U:%G' "$f")"
done
[[ $(mode_group /var/lib/monitor-server) == "750 monitor" ]] || finish "FAIL: /var/lib/monitor-server is $(mode_group /var/lib/monitor-server), expected 750 monitor"
[[ $(mode_group "$tls") == "750 monitor" ]] || finish "FAIL: $tls is $(mode_group "$tls"), expected 750 monitor"
[[ $(mode_group "$tls/admin.cred") == "640 monitor" ]] || finish "FAIL: admin.cred is $(mode_group "$tls/admin.cred"), expected 640 monitor"
for f in "$tls/ca.key" "$tls/server.key" /var/lib/monitor-server/monitor.db; do
    [[ $(stat -c %a "$f") == 600 ]] || finish "FAIL: $f has mode $(stat -c %a "$f"), expected 600"
done

# monitorctl: root finds the server's credential by itself; a member of the
# group monitor too; anyone else is refused (exit 3, no usable credential).
until_ok 30 "monitorctl hosts (as root)" monitorctl hosts
useradd --create-home --groups monitor alice || finish "FAIL: useradd alice"
useradd --create-home bob || finish "FAIL: useradd bob"
alice_out=$(runuser -u alice -- env HOME=/home/alice monitorctl hosts 2>&1) ||
    finish "FAIL: alice (group monitor) cannot run monitorctl hosts: $alice_out"
say "alice (group monitor): monitorctl hosts works"
bob_status=0
bob_out=$(runuser -u bob -- env HOME=/home/bob monitorctl hosts 2>&1) || bob_status=$?
[[ $bob_status == 3 ]] || finish "FAIL: bob (not in group monitor) ran monitorctl hosts: exit $bob_status: $bob_out"
say "bob (not in group monitor): refused, exit 3: $bob_out"

# --- The agent without a token: exits 78, and is not restarted -------------
"$kit/scripts/install.sh" --agent --from "$kit/bin" >/tmp/install-agent1.log 2>&1 ||
    finish "FAIL: install.sh --agent: $(cat /tmp/install-agent1.log)"
# The spool lives in the agent's StateDirectory, the one path it may write.
echo "MONITOR_SPOOL=/var/lib/monitor-agent/spool" >>/etc/default/monitor-agent
systemctl enable --now monitor-agent && finish "FAIL: monitor-agent started without being enrolled"
until_ok 30 "monitor-agent to fail" systemctl is-failed --quiet monitor-agent
sleep 8 # RestartSec=5s: a restart would have happened by now.
[[ $(prop monitor-agent ExecMainStatus) == 78 ]] || finish "FAIL: unenrolled agent exited with $(prop monitor-agent ExecMainStatus), expected 78"
[[ $(prop monitor-agent NRestarts) == 0 ]] && systemctl is-failed --quiet monitor-agent ||
    finish "FAIL: unenrolled agent was restarted (NRestarts=$(prop monitor-agent NRestarts))"
why=$(journalctl --no-pager -u monitor-agent -o cat | grep -m 1 'not enrolled')
[[ -n $why ]] || finish "FAIL: the journal does not say the agent is not enrolled"
say "agent without a token: exit 78, not restarted after 8 s; journal: $why"

# --- Enrol: a token from the server, install.sh --agent --join ---------------
# The default TLS names start with the machine's hostname, so tokens carry
# https://pi-nspawn:50051, which the agent below uses (no --server-url).
grep -q "server certificate for $host, " <(journalctl --no-pager -u monitor-server -o cat) ||
    finish "FAIL: the server's certificate does not name $host: $(journalctl --no-pager -u monitor-server -o cat | grep -m 1 'server certificate for')"
token=$(monitorctl enrol "$host" 2>/tmp/enrol.err) || finish "FAIL: monitorctl enrol $host: $(cat /tmp/enrol.err)"
[[ $token == monitor-join-1.* ]] || finish "FAIL: monitorctl enrol printed '$token'"
say "monitorctl enrol $host: $(cat /tmp/enrol.err)"
"$kit/scripts/install.sh" --agent --from "$kit/bin" --join "$token" >/tmp/install-agent2.log 2>&1 ||
    finish "FAIL: install.sh --agent --join: $(cat /tmp/install-agent2.log)"
[[ $(stat -c %a /etc/default/monitor-agent) == 600 ]] || finish "FAIL: /etc/default/monitor-agent is not 0600"
systemctl restart monitor-agent || finish "FAIL: systemctl restart monitor-agent (enrolled with the token)"
until_ok 60 "monitor-agent to become active (READY=1)" systemctl is-active --quiet monitor-agent
say "monitor-agent active, Type=$(prop monitor-agent Type), WatchdogUSec=$(prop monitor-agent WatchdogUSec)"
say "agent: $(journalctl --no-pager -u monitor-agent -o cat | grep -m 1 'reporting to')"
until_ok 60 "the agent's identity.pem" test -f /var/lib/monitor-agent/identity.pem
identity=/var/lib/monitor-agent/identity.pem
say "$identity: $(stat -L -c '%A' "$identity"), in $(readlink -f /var/lib/monitor-agent)"
[[ $(stat -L -c %a "$identity") == 600 ]] || finish "FAIL: $identity has mode $(stat -L -c %a "$identity")"
identity_sum=$(md5sum <"$identity")

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

until_ok 60 "all six metrics from $host in the server" six_metrics
say "server has all six metrics from $host ($(sample_count) samples)"
for f in /var/lib/monitor-agent/spool; do
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

# kill -9: Restart=on-failure brings the agent back; the token still in
# /etc/default/monitor-agent is known as used, so it reconnects with the
# identity it has (no new enrolment, identity.pem unchanged).
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
[[ $(md5sum <"$identity") == "$identity_sum" ]] || finish "FAIL: the restart enrolled again with the used token"
say "the restart kept identity.pem (the used token in the settings was not spent again)"

# Revoke: the server closes the agent's streams and refuses its certificate;
# the agent stays offline until it enrols again with a new token.
revoke_out=$(monitorctl revoke "$host" 2>&1) || finish "FAIL: monitorctl revoke $host: $revoke_out"
say "monitorctl revoke $host: $revoke_out"
until_ok 30 "$host to be offline after revoke" online false
sleep 5
online false || finish "FAIL: $host came back online with a revoked certificate"
say "$host offline 5 s after the revoke"
token=$(monitorctl enrol "$host" 2>/dev/null) || finish "FAIL: monitorctl enrol $host (again)"
"$kit/scripts/install.sh" --agent --from "$kit/bin" --join "$token" >/tmp/install-agent3.log 2>&1 ||
    finish "FAIL: install.sh --agent --join (again): $(cat /tmp/install-agent3.log)"
systemctl restart monitor-agent || finish "FAIL: systemctl restart monitor-agent (new token)"
until_ok 60 "$host online again after enrolling anew" online true
[[ $(md5sum <"$identity") != "$identity_sum" ]] || finish "FAIL: the new token did not give a new identity"
say "$host enrolled again with a new token and is online"

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

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/monitor-nspawn-test
# The script bounds each of its waits; NSPAWN_TIMEOUT bounds the whole run.
TimeoutStartSec=infinity

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
