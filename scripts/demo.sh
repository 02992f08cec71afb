#!/usr/bin/env bash
# Runs the whole system on this machine, with TLS on as in a deployment: a
# monitor-server on its embedded SQLite store (its CA, certificate and the
# local operator's credential made on first start in STATE/tls), a local
# monitor-agent enrolled with a one-time join token and reporting every
# second, and `monitorctl top` showing live data. Ctrl-C stops everything.
#
#   scripts/demo.sh [--release] [--state DIR]
#
# Needs only the Rust toolchain (cargo + a C compiler for SQLite and ring,
# which rustup's linker requirement already implies). Listens on loopback
# only: agents on 127.0.0.1:50051, the operator API on 127.0.0.1:50052
# (override with MONITOR_DEMO_AGENT_PORT / MONITOR_DEMO_ADMIN_PORT); the agent
# reports as this machine's hostname (MONITOR_DEMO_HOSTNAME overrides it).
# Running it again with the same --state keeps the data and enrols the agent
# anew.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
state=./demo-state
while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release ;;
        --state) state=${2:?--state needs a directory}; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

agent_port=${MONITOR_DEMO_AGENT_PORT:-50051}
admin_port=${MONITOR_DEMO_ADMIN_PORT:-50052}
# The name the agent reports and the join token is bound to: the two must
# be the same, so the demo chooses it once and gives it to both.
host=${MONITOR_DEMO_HOSTNAME:-$(cat /proc/sys/kernel/hostname)}
flags=()
[ "$profile" = release ] && flags+=(--release)

echo "building ($profile)..." >&2
cargo build "${flags[@]}" --quiet -p monitor-agent -p monitor-server -p monitorctl --bins
# Absolute paths: the commands printed below must work from any directory.
bin=$(pwd)/target/$profile
mkdir -p "$state"
state=$(cd "$state" && pwd)
credential=$state/tls/admin.cred
# The operator's signing key for commands: `monitorctl enrol` makes and
# registers it, so the join token carries it and the agent runs the
# commands it signs. Kept in the demo's state, not in ~/.config.
export MONITOR_SIGNING_KEY=$state/signing.key

pids=()
cleanup() {
    # Once: Ctrl-C runs it, then the exit that follows would again.
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo >&2
    echo "stopped. Data kept in $state (monitor.db, tls/, agent/, signing.key); logs in $state/*.log" >&2
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# die_with_log MESSAGE LOG: says what failed and shows the log that explains it.
die_with_log() {
    echo "demo.sh: $1; the end of $2:" >&2
    tail -n 20 "$2" >&2
    exit 1
}

# --public-url: the URL join tokens carry (the default names this machine's
# hostname, which need not resolve here); the certificate's default names
# include 127.0.0.1, so the agent below can check it.
"$bin/monitor-server" \
    --listen "127.0.0.1:$agent_port" \
    --admin-listen "127.0.0.1:$admin_port" \
    --db "$state/monitor.db" \
    --tls-dir "$state/tls" \
    --public-url "https://127.0.0.1:$agent_port" 2>"$state/server.log" &
pids+=($!)

# The server writes tls/admin.cred (the credential of this box's operator,
# which also names the operator API) before it starts listening. A credential
# left by an earlier run may be for another port: the server rewrites it, so
# wait until monitorctl gets an answer with it, not just for the file.
ctl=("$bin/monitorctl" --credentials "$credential")
deadline=$((SECONDS + 60))
until [ -f "$credential" ] && "${ctl[@]}" hosts >/dev/null 2>&1; do
    kill -0 "${pids[0]}" 2>/dev/null || die_with_log "the server did not start" "$state/server.log"
    [ $SECONDS -lt $deadline ] || die_with_log "the server did not answer within 60 s" "$state/server.log"
    sleep 0.1
done

# A small allowlist so `monitorctl exec` has something to run.
cat > "$state/commands.allow" <<'ALLOW'
# name = /program [fixed args] [placeholders]   (see systemd/commands.allow)
uptime = /usr/bin/uptime
df     = /bin/df -h -- <path>*    # any number of paths, never an option
uname  = /bin/uname -a
ALLOW

# A fresh join token every run: the agent enrols on its first run, and on a
# later one the new token tells it to enrol again, so it always holds a
# certificate from this server's CA, even if tls/ was deleted in between.
token=$("${ctl[@]}" enrol "$host" 2>"$state/enrol.log") ||
    die_with_log "monitorctl enrol $host failed" "$state/enrol.log"

# The token goes in the environment rather than on the command line, where
# every user of this machine could read it in `ps`.
MONITOR_JOIN=$token "$bin/monitor-agent" \
    --server "https://127.0.0.1:$agent_port" \
    --state-dir "$state/agent" \
    --hostname "$host" \
    --interval 1 \
    --commands-file "$state/commands.allow" 2>"$state/agent.log" &
pids+=($!)
unset token

# The live table is only worth starting once the agent is enrolled and
# connected: its first row then has data.
deadline=$((SECONDS + 60))
until "${ctl[@]}" hosts --json 2>/dev/null | grep -qF "{\"hostname\":\"$host\",\"online\":true"; do
    kill -0 "${pids[1]}" 2>/dev/null || die_with_log "the agent stopped" "$state/agent.log"
    [ $SECONDS -lt $deadline ] || die_with_log "the agent did not connect within 60 s" "$state/agent.log"
    sleep 0.2
done

q() { printf '%q' "$1"; }
cat >&2 <<MSG
monitor is running with TLS: server pid ${pids[0]}, agent pid ${pids[1]} (enrolled as $host).
In another terminal, try:
  export MONITOR_CREDENTIALS=$(q "$credential") MONITOR_SIGNING_KEY=$(q "$MONITOR_SIGNING_KEY") PATH=$(q "$bin"):\$PATH
  monitorctl hosts
  monitorctl query $(q "$host") --since 1m
  monitorctl exec --all -- uptime
  monitorctl history
  monitorctl enrol another-host          # a join token for another agent
Starting the live table (Ctrl-C stops everything)...
MSG
"${ctl[@]}" top --interval 1 || true
