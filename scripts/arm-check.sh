#!/usr/bin/env bash
# Proves the Raspberry Pi builds work without a Pi and without a container
# engine (so without `cross`): cross-compiles monitor-agent for aarch64,
# armv7 and armv6 with Debian's packaged Rust and gcc cross compilers, runs
# each binary under qemu-user, and checks it end to end against a native
# monitor-server on loopback:
#   1. --stdout: the ARM agent reads this machine's /proc and prints all six
#      metrics (toolchain and collectors work on the target ABI);
#   2. the ARM agent enrols with a join token (`monitorctl enrol pi-<arch>`)
#      over TLS, keeps its identity in its state directory, and reports to
#      the server: `monitorctl query pi-<arch>` returns its samples under its
#      MONITOR_HOSTNAME;
#   3. commands reach it and come back: `monitorctl exec -- ping`, and an
#      allowlisted `uname -m` that runs an ARM busybox and prints aarch64 or
#      armv7l.
# It also prints the stripped release size of the agent for each target and
# fails when one is above ARM_CHECK_MAX_AGENT_BYTES (default 2.5 MiB, the
# budget for the agent with TLS).
#
# TLS comes from rustls on ring, whose C and assembly parts are compiled by
# the cc crate: the target's Debian cross gcc is named for it (CC_<target>,
# AR_<target>) as well as for the linker.
#
# armv6 (arm-unknown-linux-gnueabihf, Pi 1 and Zero): Debian has no ARMv6
# userland, so the agent's own code is compiled for ARMv6 (std built from
# source for that target) but linked against Debian's armhf (ARMv7) C
# library and run on qemu's default ARMv7 CPU. That proves our code and its
# build for the target; the binary for a real Pi Zero comes from `cross`,
# whose image links against an ARMv6 glibc.
#
# Idempotent: installs only what is missing (apt), reuses build caches in
# target/debian-cross (kept apart from rustup's target/ so the two
# toolchains never share artifacts). Every wait is bounded; every process it
# starts is stopped on exit. Exits non-zero on the first failure.
#
# Usage: scripts/arm-check.sh [--stdout-only] [--targets "aarch64 armv7 armv6"]
#   --stdout-only   build and run the agents with --stdout only (no server)
#   --targets LIST  which of aarch64, armv7, armv6 to check (default: all)
# Environment: ARM_CHECK_TIMEOUT (seconds per wait, default 90),
# ARM_CHECK_MAX_AGENT_BYTES (default 2621440).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"

stdout_only=0
targets="aarch64 armv7 armv6"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --stdout-only) stdout_only=1 ;;
        --targets) targets=${2:?--targets needs a list}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "arm-check: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

timeout_s=${ARM_CHECK_TIMEOUT:-90}
max_agent_bytes=${ARM_CHECK_MAX_AGENT_BYTES:-2621440}
cross_dir="$repo_dir/target/debian-cross"
export DEBIAN_FRONTEND=noninteractive

log() { echo "arm-check: $*"; }
fail() {
    echo "arm-check: FAIL: $*" >&2
    exit 1
}

# Per-target facts: Debian architecture, gcc triplet, qemu binary and what
# `uname -m` prints there.
declare -A triple deb_arch gcc_prefix qemu uname_m std_mode
triple[aarch64]=aarch64-unknown-linux-gnu
deb_arch[aarch64]=arm64
gcc_prefix[aarch64]=aarch64-linux-gnu
qemu[aarch64]=qemu-aarch64-static
uname_m[aarch64]=aarch64
triple[armv7]=armv7-unknown-linux-gnueabihf
deb_arch[armv7]=armhf
gcc_prefix[armv7]=arm-linux-gnueabihf
qemu[armv7]=qemu-arm-static
uname_m[armv7]=armv7l
# See the header: ARMv6 code, Debian's armhf libc, qemu's ARMv7 CPU.
triple[armv6]=arm-unknown-linux-gnueabihf
deb_arch[armv6]=armhf
gcc_prefix[armv6]=arm-linux-gnueabihf
qemu[armv6]=qemu-arm-static
uname_m[armv6]=armv7l
for t in $targets; do
    [[ -n ${triple[$t]:-} ]] || fail "--targets: unknown target '$t' (expected aarch64, armv7 or armv6)"
done

# ---------------------------------------------------------------------------
# Processes and temp files, cleaned up on any exit.
# ---------------------------------------------------------------------------
work=$(mktemp -d /tmp/arm-check.XXXXXX)
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # Bounded: a process that ignores SIGTERM for 5 s gets SIGKILL.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status != 0 ]]; then
        for f in "$work"/*.log; do
            [[ -f $f ]] || continue
            echo "----- last lines of $(basename "$f") -----" >&2
            tail -n 30 "$f" >&2
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until DESCRIPTION COMMAND...: polls COMMAND every 0.25 s until it
# succeeds or timeout_s passes.
wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + timeout_s))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${timeout_s}s waiting for: $what"
        sleep 0.25
    done
}

# ---------------------------------------------------------------------------
# 1. Toolchain: Debian's rustc-web (same Rust for every architecture), gcc
#    cross compilers, the target's libc, qemu-user.
# ---------------------------------------------------------------------------
installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }

apt_updated=0
apt_update() {
    [[ $apt_updated == 0 ]] || return 0
    log "apt-get update"
    # A mirror caught mid-sync fails one index and keeps the rest: go on with
    # what it got; a missing package then fails the install below by name.
    if ! apt-get update -qq >"$work/apt-update.log" 2>&1; then
        sleep 2
        apt-get update -qq >"$work/apt-update.log" 2>&1 ||
            log "warning: apt-get update: $(grep -m 1 -E '^E:' "$work/apt-update.log" || tail -n 1 "$work/apt-update.log")"
    fi
    apt_updated=1
}
apt_install() {
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >"$work/apt-install.log" 2>&1 ||
        fail "apt-get install $*: $(tail -n 5 "$work/apt-install.log")"
}

for t in $targets; do
    if ! grep -qx "${deb_arch[$t]}" <<<"$(dpkg --print-foreign-architectures)"; then
        log "dpkg --add-architecture ${deb_arch[$t]}"
        dpkg --add-architecture "${deb_arch[$t]}"
    fi
done
base_pkgs=(rustc-web cargo-web qemu-user-static python3 file)
for t in $targets; do
    base_pkgs+=("gcc-${gcc_prefix[$t]}" "libc6-dev-${deb_arch[$t]}-cross")
done
missing=()
for p in "${base_pkgs[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_update
    apt_install "${missing[@]}"
fi
rust_version=$(installed_version rustc-web)
[[ -n $rust_version ]] || fail "rustc-web is not installed"

# The target's std must be exactly the compiler's version. Debian ships it
# as libstd-rust-web-dev:ARCH; when the mirror offers another version for an
# architecture (an index caught mid-sync has served 1.85 for armhf while
# rustc-web was 1.96), build std from the same compiler's source instead
# (rust-web-src, -Zbuild-std), which gives the same result, only slower.
need_src=0
for t in $targets; do
    pkg="libstd-rust-web-dev:${deb_arch[$t]}"
    std_mode[$t]=build-std
    if [[ $t == armv6 ]]; then
        # Debian's armhf std is ARMv7 code: std for ARMv6 is always built.
        need_src=1
        continue
    fi
    if [[ $(installed_version "$pkg") == "$rust_version" ]]; then
        std_mode[$t]=prebuilt
        continue
    fi
    apt_update
    if [[ $(candidate_version "$pkg") == "$rust_version" ]]; then
        apt_install "$pkg"
        std_mode[$t]=prebuilt
        continue
    fi
    log "apt offers $pkg '$(candidate_version "$pkg")', not $rust_version: std for $t is built from rust-web-src"
    need_src=1
done
if [[ $need_src == 1 && $(installed_version rust-web-src) != "$rust_version" ]]; then
    apt_update
    [[ $(candidate_version rust-web-src) == "$rust_version" ]] ||
        fail "rust-web-src is not available at $rust_version (needed to build std for: $targets)"
    apt_install rust-web-src
fi
log "toolchain: $(/usr/bin/rustc --version), $(qemu-aarch64-static --version | head -n 1)"

# An ARM userland for the allowlisted command: Debian's static busybox,
# unpacked (not installed: it would replace the host's). Static, so qemu
# needs no library path to run it.
userland() {
    local t=$1 dir="$cross_dir/userland/$1"
    if [[ ! -x $dir/bin/busybox ]]; then
        apt_update
        mkdir -p "$dir/deb"
        (cd "$dir/deb" && apt-get download -qq "busybox-static:${deb_arch[$t]}") >"$work/apt-download.log" 2>&1 ||
            fail "apt-get download busybox-static:${deb_arch[$t]}: $(tail -n 3 "$work/apt-download.log")"
        dpkg-deb -x "$dir"/deb/busybox-static_*.deb "$dir/root"
        mkdir -p "$dir/bin"
        cp "$dir/root/bin/busybox" "$dir/bin/busybox"
        rm -rf "$dir/deb" "$dir/root"
    fi
    echo "$dir/bin/busybox"
}
for t in $targets; do
    userland "$t" >/dev/null
done

# A foreign architecture with no package installed is of no use, and while
# its index on the mirror is stale it makes every `apt-get update` on this
# machine fail: take it out again (the next run adds it back to look).
installed_pkgs=$(dpkg-query -W -f='${binary:Package}\n')
for t in $targets; do
    a=${deb_arch[$t]}
    if grep -qx "$a" <<<"$(dpkg --print-foreign-architectures)" &&
        ! grep -q ":$a\$" <<<"$installed_pkgs"; then
        dpkg --remove-architecture "$a"
        log "dpkg --remove-architecture $a (no $a package needed)"
    fi
done

# ---------------------------------------------------------------------------
# 2. Builds.
# ---------------------------------------------------------------------------
build_arm() {
    local t=$1 tr=${triple[$1]}
    local linker_var cc_suffix
    linker_var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$tr")_LINKER"
    cc_suffix=$(tr '-' '_' <<<"$tr")
    local extra=()
    # The same cross gcc links the agent and compiles ring's C and assembly.
    local envs=(RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$cross_dir" "$linker_var=${gcc_prefix[$t]}-gcc"
        "CC_$cc_suffix=${gcc_prefix[$t]}-gcc" "AR_$cc_suffix=${gcc_prefix[$t]}-ar")
    if [[ ${std_mode[$t]} == build-std ]]; then
        # Debian's rustc accepts -Z flags with RUSTC_BOOTSTRAP; std comes
        # from the same version's source, panic_abort for the release profile.
        envs+=(RUSTC_BOOTSTRAP=1)
        extra=(-Zbuild-std=std,panic_abort)
    fi
    log "building monitor-agent for $tr (${std_mode[$t]} std, Debian cargo)"
    env "${envs[@]}" /usr/bin/cargo build "${extra[@]}" --release -p monitor-agent --target "$tr" \
        >"$work/build-$t.log" 2>&1 || fail "cargo build --target $tr: $(grep -E '^error' -A 5 "$work/build-$t.log" | head -n 20)"
}

for t in $targets; do
    build_arm "$t"
done
log "building monitor-agent for x86_64 (release, rustup cargo)"
cargo build --release -p monitor-agent >"$work/build-x86_64.log" 2>&1 ||
    fail "cargo build --release -p monitor-agent: $(tail -n 20 "$work/build-x86_64.log")"

echo
printf '%-34s %10s %9s  %s\n' "target (release, stripped)" bytes KiB "file"
size_row() {
    local name=$1 bin=$2 bytes
    [[ -f $bin ]] || fail "no binary at $bin"
    bytes=$(stat -c %s "$bin")
    printf '%-34s %10d %9.1f  %s\n' "$name" "$bytes" "$(awk -v b="$bytes" 'BEGIN { print b / 1024 }')" \
        "$(file -b "$bin" | grep -oE 'ARM aarch64|ARM, EABI5|x86-64' | head -n 1), $(file -b "$bin" | grep -oE '(not )?stripped' | tail -n 1)"
}
for t in $targets; do
    size_row "${triple[$t]}" "$cross_dir/${triple[$t]}/release/monitor-agent"
done
size_row x86_64-unknown-linux-gnu "$repo_dir/target/release/monitor-agent"
echo
for t in $targets; do
    bin="$cross_dir/${triple[$t]}/release/monitor-agent"
    [[ $(file -b "$bin") != *"not stripped"* ]] ||
        fail "${triple[$t]} agent is not stripped (release profile strip = true?)"
    (($(stat -c %s "$bin") <= max_agent_bytes)) ||
        fail "${triple[$t]} agent is $(stat -c %s "$bin") bytes, above the budget of $max_agent_bytes"
done

# run_arm TARGET ARGS...: the target's agent under qemu-user.
run_arm() {
    local t=$1
    shift
    "${qemu[$t]}" -L "/usr/${gcc_prefix[$t]}" "$cross_dir/${triple[$t]}/release/monitor-agent" "$@"
}

# json_samples HOST METRICS_WANTED: reads JSON (one document, or one per
# line) on stdin and succeeds when it holds samples with hostname HOST for
# at least METRICS_WANTED different metrics.
json_samples() {
    python3 -c '
import json, sys
host, wanted = sys.argv[1], int(sys.argv[2])
text = sys.stdin.read()
try:
    docs = [json.loads(text)]
except ValueError:
    docs = [json.loads(l) for l in text.splitlines() if l.strip().startswith(("{", "["))]
found = set()
def walk(v, inherited_host=None):
    if isinstance(v, dict):
        h = v.get("hostname", inherited_host)
        if "metric" in v and "value" in v and h == host:
            found.add(v["metric"])
        for x in v.values():
            walk(x, h)
    elif isinstance(v, list):
        for x in v:
            walk(x, inherited_host)
for d in docs:
    walk(d)
print(f"{host}: {len(found)} metrics: {sorted(found)}")
sys.exit(0 if len(found) >= wanted else 1)
' "$@"
}

# ---------------------------------------------------------------------------
# 3. --stdout under qemu: no server needed.
# ---------------------------------------------------------------------------
for t in $targets; do
    log "running the ${triple[$t]} agent under ${qemu[$t]} with --stdout"
    run_arm "$t" --version >"$work/version-$t.log" 2>&1 || fail "$t agent --version failed"
    timeout "$timeout_s" env MONITOR_LOG=warn \
        "${qemu[$t]}" -L "/usr/${gcc_prefix[$t]}" "$cross_dir/${triple[$t]}/release/monitor-agent" \
        --stdout --count 4 --interval 0.2 --hostname "pi-$t" \
        >"$work/stdout-$t.json" 2>"$work/stdout-$t.log" ||
        fail "$t agent --stdout exited with $? (see stdout-$t.log)"
    json_samples "pi-$t" 6 <"$work/stdout-$t.json" || fail "$t agent --stdout did not print all six metrics"
    log "  $(cat "$work/version-$t.log"): $(wc -l <"$work/stdout-$t.json") JSON lines, e.g. $(head -n 1 "$work/stdout-$t.json")"
done

if [[ $stdout_only == 1 ]]; then
    log "--stdout-only: skipping the server checks"
    log "all checks passed"
    exit 0
fi

# ---------------------------------------------------------------------------
# 4. Against a native server on loopback.
# ---------------------------------------------------------------------------
log "building monitor-server and monitorctl (x86_64)"
cargo build -p monitor-server -p monitorctl >"$work/build-server.log" 2>&1 ||
    fail "cargo build -p monitor-server -p monitorctl: $(tail -n 20 "$work/build-server.log")"
server_bin="$repo_dir/target/debug/monitor-server"
ctl_bin="$repo_dir/target/debug/monitorctl"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
agent_port=$(free_port)
admin_port=$(free_port)
[[ $agent_port != "$admin_port" ]] || admin_port=$(free_port)
# The server makes its CA, its certificate and the local operator's
# credential in $work/tls (beside the database) on start; monitorctl uses
# that credential, which also names the operator API.
export MONITOR_CREDENTIALS="$work/tls/admin.cred"
# The operator's signing key: `monitorctl enrol` makes and registers it, so
# the join tokens carry it and the agents run the commands it signs.
export MONITOR_SIGNING_KEY="$work/signing.key"
ctl() { "$ctl_bin" "$@"; }

log "starting monitor-server with TLS on 127.0.0.1:$agent_port (admin 127.0.0.1:$admin_port)"
MONITOR_LOG=info "$server_bin" --listen "127.0.0.1:$agent_port" --admin-listen "127.0.0.1:$admin_port" \
    --db "$work/monitor.db" >"$work/server.log" 2>&1 &
pids+=($!)
wait_until "the server's admin.cred and monitorctl hosts to answer" ctl hosts

for t in $targets; do
    busybox=$(userland "$t")
    # The agent runs under qemu-user, which cannot turn the agent's exec of
    # an ARM program into another emulated process by itself (no binfmt_misc
    # here), so the allowlist names qemu as the program.
    printf 'uname = /usr/bin/%s %s uname <one-of:-m|-a>*\n' "${qemu[$t]}" "$busybox" >"$work/commands-$t.allow"
    ctl enrol "pi-$t" >"$work/token-$t" 2>"$work/enrol-$t.log" ||
        fail "monitorctl enrol pi-$t: $(cat "$work/enrol-$t.log")"
    log "starting the ${triple[$t]} agent under ${qemu[$t]} as pi-$t, enrolling with a join token"
    MONITOR_JOIN="$(cat "$work/token-$t")" MONITOR_STATE_DIR="$work/state-$t" \
        MONITOR_SERVER="https://127.0.0.1:$agent_port" MONITOR_HOSTNAME="pi-$t" MONITOR_INTERVAL=0.5 \
        MONITOR_COMMANDS_FILE="$work/commands-$t.allow" MONITOR_LOG=info \
        "${qemu[$t]}" -L "/usr/${gcc_prefix[$t]}" "$cross_dir/${triple[$t]}/release/monitor-agent" \
        >"$work/agent-$t.log" 2>&1 &
    pids+=($!)
done

# query_ok HOST: the server has stored samples of all six metrics for HOST.
query_ok() {
    ctl query "$1" --since 10m --json >"$work/query-$1.json" 2>"$work/query-$1.err" &&
        json_samples "$1" 6 <"$work/query-$1.json"
}

for t in $targets; do
    host="pi-$t"
    wait_until "$host to enrol (its identity.pem)" test -f "$work/state-$t/identity.pem"
    [[ $(stat -c %a "$work/state-$t/identity.pem") == 600 ]] ||
        fail "$host: identity.pem has mode $(stat -c %a "$work/state-$t/identity.pem"), expected 600"
    log "$host: $(grep -m 1 'enrolled:' "$work/agent-$t.log" | sed 's/^.*\] //')"
    wait_until "samples of all six metrics from $host in the server" query_ok "$host"
    log "$(json_samples "$host" 6 <"$work/query-$host.json")"

    ctl exec --host "$host" -- ping >"$work/ping-$t.out" 2>&1 ||
        fail "monitorctl exec --host $host -- ping: $(cat "$work/ping-$t.out")"
    grep -qw pong "$work/ping-$t.out" || fail "$host: ping did not answer pong: $(cat "$work/ping-$t.out")"
    log "$host: exec ping -> $(tr '\n' ' ' <"$work/ping-$t.out")"

    ctl exec --host "$host" -- uname -m >"$work/uname-$t.out" 2>&1 ||
        fail "monitorctl exec --host $host -- uname -m: $(cat "$work/uname-$t.out")"
    grep -qw "${uname_m[$t]}" "$work/uname-$t.out" ||
        fail "$host: uname -m printed '$(cat "$work/uname-$t.out")', expected ${uname_m[$t]}"
    log "$host: exec uname -m -> $(tr '\n' ' ' <"$work/uname-$t.out")"

    # Something the allowlist does not name is refused, not run.
    if ctl exec --host "$host" -- rm -rf /tmp/x >"$work/refused-$t.out" 2>&1; then
        fail "$host: exec of a command missing from the allowlist succeeded: $(cat "$work/refused-$t.out")"
    fi
    log "$host: exec rm (not allowlisted) -> refused: $(tr '\n' ' ' <"$work/refused-$t.out")"
done

log "all checks passed"
