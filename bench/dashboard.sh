#!/usr/bin/env bash
# Figures for BENCHMARKS.md: the web dashboard.
#   1. the host page's 7-day series answer at a 5 s interval (about 121,000
#      ticks): server time and bytes on the wire (cargo bench --bench
#      dashboard, through the real router, gzip on);
#   2. the fleet page with 1,000 hosts (simulated agents from
#      monitor-loadgen): first render in headless Chromium;
#   3. ingest capacity with no page open, then with 10 fleet pages open
#      (each polling /api/hosts every 3 s), same server build, same steps.
# Needs Debian's chromium and Playwright from PyPI (see .ci/run); loopback
# only. Usage: bench/dashboard.sh [--steps 2500,5000] [--hold 20s]
# (SKIP_SERIES=1 skips the first part).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=2500,5000
hold=20s
while [[ $# -gt 0 ]]; do
    case $1 in
        --steps) steps=${2:?--steps needs a list}; shift ;;
        --hold) hold=${2:?--hold needs a duration}; shift ;;
        *) echo "usage: $0 [--steps LIST] [--hold DURATION]" >&2; exit 2 ;;
    esac
    shift
done
python=python3
[[ -x /tmp/monitor-ci-venv/bin/python3 ]] && python=/tmp/monitor-ci-venv/bin/python3
if [[ ! -x /usr/bin/chromium ]] || ! "$python" -c 'import playwright.sync_api' 2>/dev/null; then
    echo "needs chromium and playwright (apt install chromium; pip install playwright)" >&2
    exit 1
fi
log() { echo "== $*" >&2; }
# Several loopback sources: the listener caps handshakes per source address.
sources=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4

if [[ -z ${SKIP_SERIES:-} ]]; then
    log "7-day series answer"
    cargo bench -q -p monitor-server --bench dashboard
fi

cargo build -q --profile bench -p monitor-server -p monitor-loadgen
bin=${CARGO_TARGET_DIR:-target}/release
server_bin=$bin/monitor-server
loadgen=$bin/monitor-loadgen
out=$(mktemp -d /tmp/monitor-dashboard-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        [[ -z $(ss -Htuln "sport = :$p") ]] && { echo "$p"; return; }
    done
    echo "no free port" >&2
    exit 1
}
wait_until() {
    local what=$1 secs=$2
    shift 2
    for _ in $(seq $((secs * 10))); do "$@" && return 0; sleep 0.1; done
    echo "timed out waiting for $what" >&2
    exit 1
}
listening() { [[ -n $(ss -Htln "sport = :$1") ]]; }
hosts_listed() {
    local n
    n=$(curl -s "http://127.0.0.1:$hp/api/hosts" | grep -o '"hostname"' | wc -l)
    [[ $n -ge $1 ]]
}

start_server() {
    sp=$(free_port); ap=$(free_port); hp=$(free_port)
    mkdir -p "$out/$1"
    "$server_bin" --insecure --listen "127.0.0.1:$sp" --admin-listen "127.0.0.1:$ap" \
        --http-listen "127.0.0.1:$hp" --db "$out/$1/monitor.db" --log warn \
        2>"$out/$1/server.log" &
    server_pid=$!
    pids+=("$server_pid")
    wait_until "the server" 30 listening "$ap"
    wait_until "the server" 30 listening "$hp"
}

log "fleet page with 1,000 hosts"
start_server render
"$loadgen" capacity --server "http://127.0.0.1:$sp" --admin "http://127.0.0.1:$ap" \
    --steps 1000 --hold 120s --warmup 5s --sources "$sources" >"$out/render-fleet.txt" 2>&1 &
pids+=($!)
wait_until "1,000 hosts in /api/hosts" 120 hosts_listed 1000
"$python" bench/dashboard_render.py "http://127.0.0.1:$hp/" 1000
kill "$server_pid"

for pages in 0 10; do
    log "ingest capacity with $pages dashboard pages open (steps $steps, $hold each)"
    start_server "capacity-$pages"
    if [[ $pages -gt 0 ]]; then
        # Its own process group: the browser goes with it.
        setsid "$python" bench/dashboard_render.py "http://127.0.0.1:$hp/" 0 --hold "$pages" \
            100000 >"$out/pages-$pages.txt" 2>&1 &
        pids+=("-$!")
        wait_until "the pages" 60 grep -q holding "$out/pages-$pages.txt"
    fi
    "$loadgen" capacity --server "http://127.0.0.1:$sp" --admin "http://127.0.0.1:$ap" \
        --server-pid "$server_pid" --steps "$steps" --hold "$hold" --warmup 5s --sources "$sources"
    kill "$server_pid"
done
