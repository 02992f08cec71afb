#!/usr/bin/env bash
# Figures for BENCHMARKS.md: the web dashboard.
#   1. the host page's 7-day series answer at a 5 s interval (about 121,000
#      ticks): server time and bytes on the wire (cargo bench --bench
#      dashboard, through the real router, gzip on);
#   2. the fleet page with 1,000 hosts (simulated agents from
#      monitor-loadgen): first render in headless Chromium, median of RUNS
#      (bench/dashboard_render.py); OLD_SERVER=path/to/monitor-server
#      measures that build's page too, in the same run (before/after);
#   3. ingest capacity without and with 10 fleet pages open, alternating,
#      ROUNDS times, same build. The pages' requests are replayed by a
#      light client (bench/dashboard_replay.py), not by browsers: browsers
#      run on the viewers' machines, and on this box they would take the
#      server's cores;
#   4. the server's CPU per poll of 10 pages with 1,000 and 5,000 hosts
#      held at 1 s (windows alternating without and with the replay; with
#      OLD_SERVER, that build's too, in the same run); PROFILE_SECS=30
#      then records the server with perf while the 10 pages run on
#      (`perf record -g`; the bench profile keeps the symbols) and keeps
#      the report in the output directory.
# Needs Debian's chromium and Playwright from PyPI (see .ci/run); loopback
# only. Usage: bench/dashboard.sh [--steps 2500,5000] [--hold 20s]
# (SKIP_SERIES=1 skips the first part, SKIP_RENDER=1 the second,
# ROUNDS=0 the third; RUNS=5, ROUNDS=3; the fourth part: CPU_HOSTS="1000
# 5000", CPU_HOLD_SECS=10 before its WINDOWS=6 windows of WINDOW_SECS=15).
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
# Stops processes and waits until they are gone: a load generator still
# shutting down would reconnect its agents to the next server on the same
# port and send batches beside the next run's agents of the same names
# (seen once as a refused batch, `lg-02584` 63.3 against 64).
stop() {
    kill "$@" 2>/dev/null || true
    local p t
    for p in "$@"; do
        for ((t = 0; t < 300; t++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
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

fleet() { # fleet N: loadgen holding N agents at 1 s against the running server
    "$loadgen" capacity --server "http://127.0.0.1:$sp" --admin "http://127.0.0.1:$ap" \
        --steps "$1" --hold "$((${CPU_HOLD_SECS:-10} + ${WINDOWS:-6} * ${WINDOW_SECS:-15} + 900))s" --warmup 5s --sources "$sources" >"$out/fleet-$1.txt" 2>&1 &
    fleet_pid=$!
    pids+=("$fleet_pid")
    wait_until "$1 hosts in /api/hosts" 180 hosts_listed "$1"
}

render_builds=("$server_bin" ${OLD_SERVER:+"$OLD_SERVER"})
[[ -n ${SKIP_RENDER:-} ]] && render_builds=()
for build in "${render_builds[@]}"; do
    log "fleet page with 1,000 hosts ($build)"
    server_bin=$build start_server "render-$RANDOM"
    fleet 1000
    "$python" bench/dashboard_render.py "http://127.0.0.1:$hp/" 1000 "${RUNS:-5}"
    stop "$fleet_pid" "$server_pid"
done

for round in $(seq "${ROUNDS:-3}"); do
    for pages in 0 10; do
        log "round $round: ingest capacity with $pages fleet pages replayed (steps $steps, $hold each)"
        start_server "capacity-$round-$pages"
        if [[ $pages -gt 0 ]]; then
            "$python" bench/dashboard_replay.py "http://127.0.0.1:$hp" --pages "$pages" \
                >"$out/replay-$round.txt" 2>&1 &
            replay_pid=$!
            pids+=("$replay_pid")
        fi
        "$loadgen" capacity --server "http://127.0.0.1:$sp" --admin "http://127.0.0.1:$ap" \
            --server-pid "$server_pid" --steps "$steps" --hold "$hold" --warmup 5s \
            --sources "$sources" | tee "$out/capacity-$round-$pages.txt"
        [[ $pages -gt 0 ]] && stop "$replay_pid"
        stop "$server_pid"
        echo "round $round, $pages pages: $(grep -h '^held:' "$out/capacity-$round-$pages.txt")" \
            >>"$out/summary.txt"
    done
done

for hosts in ${CPU_HOSTS:-1000 5000}; do
    for build in "$server_bin" ${OLD_SERVER:+"$OLD_SERVER"}; do
        log "server CPU per poll of 10 pages, $hosts hosts held at 1 s ($build)"
        echo "$hosts hosts, $build, $(uptime)" >>"$out/summary.txt"
        server_bin=$build start_server "cpu-$hosts-$RANDOM"
        fleet "$hosts"
        # Past the fleet's connection burst; CPU_HOLD_SECS=960 gives the
        # sparklines their whole 15 minutes of history first.
        sleep "${CPU_HOLD_SECS:-10}"
        "$python" bench/dashboard_replay.py "http://127.0.0.1:$hp" --pages 10 --pid "$server_pid" \
            --windows "${WINDOWS:-6}" --window "${WINDOW_SECS:-15}" | tee -a "$out/summary.txt"
        if [[ -n ${PROFILE_SECS:-} ]]; then
            log "perf profile with 10 pages, $hosts hosts ($build)"
            "$python" bench/dashboard_replay.py "http://127.0.0.1:$hp" --pages 10 \
                >"$out/profile-replay.txt" 2>&1 &
            replay_pid=$!
            pids+=("$replay_pid")
            profile=$out/perf-$hosts-$(basename "$build")
            perf record -F 499 -g -p "$server_pid" -o "$profile.data" -- sleep "$PROFILE_SECS" \
                2>"$profile.log" || true
            stop "$replay_pid"
            # Self time, then time including callees (where a handler's
            # share shows).
            { perf report -i "$profile.data" --no-children -g none --percent-limit 0.5 --stdio
              perf report -i "$profile.data" --children -g none --percent-limit 1 --stdio
            } 2>/dev/null | grep -v '^$' >"$profile.txt" || true
            echo "perf report: $profile.txt" >>"$out/summary.txt"
        fi
        stop "$fleet_pid" "$server_pid"
    done
done
# Parts 3 and 4 write the summary; with both skipped (ROUNDS=0 and an
# empty CPU_HOSTS) there is none, and the parts above printed their own.
if [[ -f $out/summary.txt ]]; then
    log "summary"
    cat "$out/summary.txt"
fi
