#!/usr/bin/env bash
# CPU per sample of the agent against the floor: bench/floor.c (compiled
# here with cc) preads the same files and statvfs()es the same file systems
# as the agent's collector, on the same schedule, and does nothing else. In
# the same window, side by side: the agent reporting to a real server on
# loopback, the agent collecting only (--stdout into /dev/null), and the
# floor. CPU is the sum of every thread's /proc/PID/task/*/schedstat
# (nanoseconds) over the window; per sample = CPU / (window / interval).
# Each interval is measured ROUNDS times and the median ratio is printed
# (the machine is shared and noisy: only ratios within one window count).
#
# Usage: bench/cpu-per-sample.sh AGENT_BIN SERVER_BIN OUT_DIR
#            [--intervals 0.1,1] [--secs-per-interval 0.1=20,1=60]
#            [--rounds 3]
# The floor's file list comes from the tick benchmark
# (TICK_BENCH_FLOOR_ARGS=1), which asks the collector itself what it reads.
# Prints key=value lines (cpu.INTERVAL.*) on stdout; logs go to OUT_DIR.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
agent_bin=${1:?agent binary}
server_bin=${2:?server binary}
out=${3:?output directory}
shift 3
intervals=0.1,1
secs_spec=0.1=20,1=60
rounds=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --intervals) intervals=${2:?}; shift ;;
        --secs-per-interval) secs_spec=${2:?}; shift ;;
        --rounds) rounds=${2:?}; shift ;;
        *) echo "cpu-per-sample: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out"

log() { echo "cpu-per-sample: $*" >&2; }
fail() { echo "cpu-per-sample: FAIL: $*" >&2; exit 1; }

pids=()
cleanup() {
    local status=$? pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cc -O2 -Wall -o "$out/floor" "$repo/bench/floor.c" || fail "cc bench/floor.c"
# What the collector reads on this machine, as floor arguments.
# CPU_BENCH_FLOOR_ARGS (the same line, from an earlier run's
# floor-args.txt) skips building the bench.
floor_args_line=${CPU_BENCH_FLOOR_ARGS:-$(cd "$repo" && TICK_BENCH_FLOOR_ARGS=1 cargo bench -q -p monitor-agent --bench tick 2>"$out/floor-args.log" | tail -n 1)}
read -r -a floor_args <<<"$floor_args_line"
[[ ${#floor_args[@]} -gt 0 ]] || fail "no floor arguments (see $out/floor-args.log)"
echo "${floor_args[*]}" >"$out/floor-args.txt"

free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        [[ -z $(ss -Htuln "sport = :$p") ]] && { echo "$p"; return; }
    done
    fail "no free port"
}
# Nanoseconds on CPU of every thread of PID.
cpu_ns() {
    local total=0 f v
    for f in /proc/"$1"/task/*/schedstat; do
        read -r v _ <"$f" 2>/dev/null || continue
        total=$((total + v))
    done
    echo "$total"
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

sp=$(free_port)
ap=$(free_port)
"$server_bin" --insecure --listen "127.0.0.1:$sp" --admin-listen "127.0.0.1:$ap" \
    --db "$out/server.db" --log warn >"$out/server.log" 2>&1 &
pids+=("$!")
for _ in $(seq 300); do [[ -n $(ss -Htln "sport = :$sp") ]] && break; sleep 0.1; done
[[ -n $(ss -Htln "sport = :$sp") ]] || fail "server did not listen (see $out/server.log)"

IFS=, read -r -a interval_list <<<"$intervals"
for interval in "${interval_list[@]}"; do
    secs=$(tr ',' '\n' <<<"$secs_spec" | awk -F= -v i="$interval" '$1 == i { print $2 }')
    secs=${secs:-30}
    interval_ms=$(awk -v i="$interval" 'BEGIN { printf "%d", i * 1000 }')
    : >"$out/rounds-$interval.txt"
    for round in $(seq "$rounds"); do
        "$agent_bin" --insecure --server "http://127.0.0.1:$sp" --interval "$interval" \
            --hostname "cpu-bench-$round" --log warn >"$out/agent-$interval-$round.log" 2>&1 &
        agent=$!
        pids+=("$agent")
        "$agent_bin" --stdout --interval "$interval" --hostname cpu-bench-stdout --log warn \
            >/dev/null 2>"$out/agent-stdout-$interval-$round.log" &
        collect=$!
        pids+=("$collect")
        "$out/floor" "$interval_ms" 0 "${floor_args[@]}" 2>"$out/floor-$interval-$round.log" &
        floor=$!
        pids+=("$floor")
        sleep 3
        for p in "$agent" "$collect" "$floor"; do
            kill -0 "$p" 2>/dev/null || fail "a process died during warm-up (see $out/*-$interval-$round.log)"
        done
        a0=$(cpu_ns "$agent"); c0=$(cpu_ns "$collect"); f0=$(cpu_ns "$floor"); t0=$(date +%s%N)
        sleep "$secs"
        a1=$(cpu_ns "$agent"); c1=$(cpu_ns "$collect"); f1=$(cpu_ns "$floor"); t1=$(date +%s%N)
        kill -TERM "$agent" "$collect" "$floor" 2>/dev/null || true
        wait "$agent" "$collect" "$floor" 2>/dev/null || true
        awk -v a=$((a1 - a0)) -v c=$((c1 - c0)) -v f=$((f1 - f0)) -v t=$((t1 - t0)) -v i="$interval" '
            BEGIN {
                n = t / 1e9 / i
                printf "%.4f %.4f %.4f %.2f %.2f %d\n", a / n / 1e6, c / n / 1e6, f / n / 1e6, a / f, c / f, n
            }' >>"$out/rounds-$interval.txt"
        log "interval $interval round $round: $(tail -n 1 "$out/rounds-$interval.txt") (agent ms, collect-only ms, floor ms, ratios, samples)"
    done
    echo "cpu.$interval.agent_ms_per_sample=$(awk '{ print $1 }' "$out/rounds-$interval.txt" | median)"
    echo "cpu.$interval.collect_only_ms_per_sample=$(awk '{ print $2 }' "$out/rounds-$interval.txt" | median)"
    echo "cpu.$interval.floor_ms_per_sample=$(awk '{ print $3 }' "$out/rounds-$interval.txt" | median)"
    echo "cpu.$interval.ratio=$(awk '{ print $4 }' "$out/rounds-$interval.txt" | median)"
    echo "cpu.$interval.collect_only_ratio=$(awk '{ print $5 }' "$out/rounds-$interval.txt" | median)"
    echo "cpu.$interval.rounds=$(awk '{ printf "%s%s", sep, $4; sep = " " }' "$out/rounds-$interval.txt")"
done
