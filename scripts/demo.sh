#!/usr/bin/env bash
# Runs the whole system on this machine: a monitor-server on its embedded
# SQLite store, a local monitor-agent reporting every second, and
# `monitorctl top` showing live data. Ctrl-C stops everything.
#
#   scripts/demo.sh [--release] [--state DIR]
#
# Needs only the Rust toolchain (cargo + a C compiler for SQLite, which
# rustup's linker requirement already implies). Listens on loopback only:
# agents on 127.0.0.1:50051, the operator API on 127.0.0.1:50052 (override
# with MONITOR_DEMO_AGENT_PORT / MONITOR_DEMO_ADMIN_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
state=./demo-state
while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release ;;
        --state) state=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

agent_port=${MONITOR_DEMO_AGENT_PORT:-50051}
admin_port=${MONITOR_DEMO_ADMIN_PORT:-50052}
flags=()
[ "$profile" = release ] && flags+=(--release)

echo "building ($profile)..." >&2
cargo build "${flags[@]}" --quiet -p monitor-agent -p monitor-server -p monitorctl --bins
bin=target/$profile
mkdir -p "$state"

pids=()
cleanup() {
    # Once: Ctrl-C runs it, then the exit that follows would again.
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo >&2
    echo "stopped. Data kept in $state/monitor.db; logs in $state/*.log" >&2
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

"$bin/monitor-server" \
    --listen "127.0.0.1:$agent_port" \
    --admin-listen "127.0.0.1:$admin_port" \
    --db "$state/monitor.db" 2>"$state/server.log" &
pids+=($!)

ctl=("$bin/monitorctl" --server "http://127.0.0.1:$admin_port")
for _ in $(seq 1 100); do
    "${ctl[@]}" hosts >/dev/null 2>&1 && break
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "the server did not start:" >&2
        cat "$state/server.log" >&2
        exit 1
    fi
    sleep 0.1
done

# A small allowlist so `monitorctl exec` has something to run.
cat > "$state/commands.allow" <<'ALLOW'
# name = /program [fixed args] [placeholders]   (see systemd/commands.allow)
uptime = /usr/bin/uptime
df     = /bin/df -h -- <path>*    # any number of paths, never an option
uname  = /bin/uname -a
ALLOW

"$bin/monitor-agent" \
    --server "http://127.0.0.1:$agent_port" \
    --interval 1 \
    --commands-file "$state/commands.allow" 2>"$state/agent.log" &
pids+=($!)

cat >&2 <<MSG
monitor is running: server pid ${pids[0]}, agent pid ${pids[1]}.
In another terminal, try:
  ${ctl[*]} hosts
  ${ctl[*]} query $(hostname) --since 1m
  ${ctl[*]} exec --all -- uptime
  ${ctl[*]} history
Starting the live table (Ctrl-C stops everything)...
MSG
sleep 2
"${ctl[@]}" top --interval 1 || true
