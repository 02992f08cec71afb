#!/usr/bin/env bash
# CPU per sample of the agent against the floor: bench/floor.c (compiled
# here with cc) preads the same files and statvfs()es the same file systems
# as the agent's collector, on the same schedule, and does nothing else. In
# the same window, side by side: the agent reporting to a real server on
# loopback, the agent collecting only (--stdout into /dev/null), the floor,
# and the floor that also writes NET_BYTES to a loopback TCP connection per
# tick ("floor_net": what one send per tick costs the kernel with no
# protocol in user space; on loopback the receiver's TCP path runs in the
# sender's context). With --tls the agents also report over TLS to a
# second server (enrolled once with a join token); with --baseline
# NAME=BIN another agent binary (e.g. main's) runs beside this one, plain
# and TLS, in the same windows. CPU is the sum of every thread's
# /proc/PID/task/*/schedstat (nanoseconds) over the window; per sample =
# CPU / (window / interval). Each interval is measured ROUNDS times, each
# round with every process started afresh, one every interval/n in an
# order rotated from round to round (so no two tick at once and none is
# always started first), and a window after a warm-up that covers the
# agents' start-up page release; the median of each kind and of each ratio
# is printed
# (the machine is shared and noisy: only ratios within one window count).
# For each reporting agent it also prints *_less_send_ratio: the agent's
# CPU less what the floor's one bare TCP write per tick added to the floor,
# in floors (how far the agent is from 2x once the kernel's send, which
# no sender avoids, is taken out).
#
# Usage: bench/cpu-per-sample.sh AGENT_BIN SERVER_BIN OUT_DIR
#            [--intervals 0.1,1] [--secs-per-interval 0.1=20,1=60]
#            [--rounds 3] [--warmup-secs 15] [--tls MONITORCTL_BIN]
#            [--baseline NAME=AGENT_BIN]... [--net-bytes 700]
#            [--agent-args "ARGS"]
# --agent-args: extra arguments for AGENT_BIN's reporting agents (not the
# baselines'), e.g. "--flush-interval 5".
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
warmup=15
ctl_bin=""
net_bytes=700
agent_args=""
baselines=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --intervals) intervals=${2:?}; shift ;;
        --secs-per-interval) secs_spec=${2:?}; shift ;;
        --rounds) rounds=${2:?}; shift ;;
        --warmup-secs) warmup=${2:?}; shift ;;
        --tls) ctl_bin=${2:?}; shift ;;
        --baseline) baselines+=("${2:?}"); shift ;;
        --net-bytes) net_bytes=${2:?}; shift ;;
        --agent-args) agent_args=${2?}; shift ;;
        *) echo "cpu-per-sample: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out"
read -r -a extra_args <<<"$agent_args"

log() { echo "cpu-per-sample: $*" >&2; }
fail() { echo "cpu-per-sample: FAIL: $*" >&2; exit 1; }

pids=()
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
cleanup() {
    local status=$?
    stop_all
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
# Bytes PID passed to write-like system calls (sockets included).
wchar() { awk '$1 == "wchar:" { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.4f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# start_server NAME insecure|tls: sets server_url (and server_cred for TLS).
start_server() {
    local name=$1 mode=$2 sp ap
    sp=$(free_port)
    ap=$(free_port)
    local cmd=("$server_bin" --listen "127.0.0.1:$sp" --admin-listen "127.0.0.1:$ap" --http-listen 127.0.0.1:0
        --db "$out/$name.db" --tls-dir "$out/$name-tls" --log warn)
    if [[ $mode == insecure ]]; then
        cmd+=(--insecure)
        server_url=http://127.0.0.1:$sp
    else
        cmd+=(--tls-name 127.0.0.1)
        server_url=https://127.0.0.1:$sp
        server_cred=$out/$name-tls/admin.cred
    fi
    "${cmd[@]}" >"$out/$name.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 300); do [[ -n $(ss -Htln "sport = :$sp") ]] && break; sleep 0.1; done
    [[ -n $(ss -Htln "sport = :$sp") ]] || fail "$name did not listen (see $out/$name.log)"
    if [[ $mode == tls ]]; then
        for _ in $(seq 300); do [[ -s $server_cred ]] && break; sleep 0.1; done
        [[ -s $server_cred ]] || fail "$name wrote no operator credential"
    fi
}

start_server server-plain insecure
plain_url=$server_url
tls_url=""
if [[ -n $ctl_bin ]]; then
    start_server server-tls tls
    tls_url=$server_url
fi

# The agents measured: this one, then each baseline (NAME=BIN).
agent_names=(agent)
agent_bins=("$agent_bin")
for b in "${baselines[@]}"; do
    agent_names+=("${b%%=*}")
    agent_bins+=("${b#*=}")
done

# col KIND FILE: the column KIND of a rounds file (a header line of kinds,
# then one line per window).
col() { awk -v k="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == k) c = i; next } c { print $c }' "$2"; }
# ratio_col KIND OTHER: KIND / OTHER in each window of this interval.
ratio_col() {
    awk -v k="$1" -v d="$2" 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == k) c = i; if ($i == d) e = i }; next }
        c && e { printf "%.3f\n", $c / $e }' "$out/rounds-$interval.txt"
}

# start_kind KIND: starts one process of KIND at $interval (sets
# started_pid). A TLS agent is enrolled with a join token the first time
# its host name starts; its identity stays in its state directory, so
# later rounds start it without one.
declare -A enrolled=()
start_kind() {
    local kind=$1 k name bin host
    local args=()
    case $kind in
        collect_only)
            "$agent_bin" --stdout --interval "$interval" --hostname cpu-bench-stdout --log warn \
                >/dev/null 2>>"$out/agent-stdout-$interval.log" &
            ;;
        floor)
            "$out/floor" "$interval_ms" 0 "${floor_args[@]}" 2>>"$out/floor-$interval.log" &
            ;;
        floor_net)
            "$out/floor" "$interval_ms" 0 "${floor_args[@]}" -n "$net_bytes" \
                2>>"$out/floor-net-$interval.log" &
            ;;
        *)
            name=${kind%_tls}
            for k in "${!agent_names[@]}"; do [[ ${agent_names[$k]} == "$name" ]] && break; done
            bin=${agent_bins[$k]}
            [[ $k -gt 0 ]] || args=("${extra_args[@]}")
            if [[ $kind == "$name" ]]; then
                "$bin" --insecure --server "$plain_url" --interval "$interval" "${args[@]}" \
                    --hostname "cpu-$name-$interval_ms" --log warn >>"$out/$name-$interval.log" 2>&1 &
            else
                host=cpu-$name-tls-$interval_ms
                if [[ -z ${enrolled[$host]:-} ]]; then
                    token=$("$ctl_bin" --credentials "$server_cred" enrol "$host" 2>>"$out/monitorctl.log") \
                        || fail "monitorctl enrol $host (see $out/monitorctl.log)"
                    args+=(--join "$token")
                    enrolled[$host]=1
                fi
                "$bin" --server "$tls_url" --state-dir "$out/state-$host" \
                    --interval "$interval" "${args[@]}" --hostname "$host" --log warn \
                    >>"$out/$name-tls-$interval.log" 2>&1 &
            fi
            ;;
    esac
    started_pid=$!
    pids+=("$started_pid")
}

IFS=, read -r -a interval_list <<<"$intervals"
for interval in "${interval_list[@]}"; do
    secs=$(tr ',' '\n' <<<"$secs_spec" | awk -F= -v i="$interval" '$1 == i { print $2 }')
    secs=${secs:-30}
    interval_ms=$(awk -v i="$interval" 'BEGIN { printf "%d", i * 1000 }')
    # The kinds measured, in the rounds file's column order.
    kinds=()
    for name in "${agent_names[@]}"; do
        kinds+=("$name")
        [[ -z $tls_url ]] || kinds+=("${name}_tls")
    done
    kinds+=(collect_only floor floor_net)
    n=${#kinds[@]}
    # Each round starts every kind afresh, in an order rotated by n/rounds
    # places from the last round's, one every interval/n: processes started
    # together tick together (each plans its ticks from its own start), and
    # in that crowd the first started was the dearest of its kind (branch
    # send's runs: +12 to +40 %); spread over the interval, each wakes
    # alone, as an agent on its own box does, and no kind is always first.
    stagger=$(awk -v i="$interval" -v n="$n" 'BEGIN { printf "%.3f", i / n }')
    echo "${kinds[*]}" >"$out/rounds-$interval.txt"
    : >"$out/bytes-$interval.txt"
    for round in $(seq "$rounds"); do
        shift_by=$(((round - 1) * n / rounds))
        kind_pids=()
        for j in $(seq 0 $((n - 1))); do kind_pids+=(""); done
        for j in $(seq 0 $((n - 1))); do
            i=$(((j + shift_by) % n))
            start_kind "${kinds[$i]}"
            kind_pids[i]=$started_pid
            sleep "$stagger"
        done
        sleep "$warmup"
        for i in "${!kind_pids[@]}"; do
            kill -0 "${kind_pids[$i]}" 2>/dev/null \
                || fail "${kinds[$i]} died during warm-up (see $out/*-$interval.log)"
        done
        c0=() w0=()
        for p in "${kind_pids[@]}"; do c0+=("$(cpu_ns "$p")") w0+=("$(wchar "$p")"); done
        t0=$(date +%s%N)
        sleep "$secs"
        c1=() w1=()
        for p in "${kind_pids[@]}"; do c1+=("$(cpu_ns "$p")") w1+=("$(wchar "$p")"); done
        t1=$(date +%s%N)
        line="" bytes=""
        for i in "${!kind_pids[@]}"; do
            line+=" $(awk -v c=$((c1[i] - c0[i])) -v t=$((t1 - t0)) -v i="$interval" \
                'BEGIN { printf "%.4f", c / (t / 1e9 / i) / 1e6 }')"
            bytes+=" $(awk -v w=$((w1[i] - w0[i])) -v t=$((t1 - t0)) -v i="$interval" \
                'BEGIN { printf "%.0f", w / (t / 1e9 / i) }')"
        done
        echo "${line# }" >>"$out/rounds-$interval.txt"
        echo "${bytes# }" >>"$out/bytes-$interval.txt"
        log "interval $interval round $round, first started ${kinds[$shift_by]} (ms per sample): $(paste -d= <(tr ' ' '\n' <<<"${kinds[*]}") <(tr ' ' '\n' <<<"${line# }") | tr '\n' ' ')(load $(cut -d' ' -f1 /proc/loadavg))"
        for p in "${kind_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for p in "${kind_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    done
    for k in "${kinds[@]}"; do
        echo "cpu.$interval.${k}_ms_per_sample=$(col "$k" "$out/rounds-$interval.txt" | median)"
        [[ $k == floor ]] && continue
        echo "cpu.$interval.${k}_ratio=$(ratio_col "$k" floor | median)"
        echo "cpu.$interval.${k}_rounds=$(ratio_col "$k" floor | tr '\n' ' ' | sed 's/ $//')"
    done
    # What a reporting agent costs beyond the kernel's part of one bare
    # send per tick, in floors: (agent - (floor_net - floor)) / floor, per
    # window. floor_net - floor is what one write to a loopback TCP socket
    # costs the sender (on loopback that includes the receiver's TCP path
    # and waking it), which no sender can avoid; what is left is the
    # floor's reads plus the agent's own work (user space, extra wake-ups
    # and system calls). Printed for every kind that sends.
    for k in "${kinds[@]}"; do
        case $k in collect_only | floor | floor_net) continue ;; esac
        less_send=$(awk -v k="$k" 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == k) c = i; if ($i == "floor") f = i; if ($i == "floor_net") n = i }; next }
            c && f && n { printf "%.3f\n", ($c - ($n - $f)) / $f }' "$out/rounds-$interval.txt")
        echo "cpu.$interval.${k}_less_send_ratio=$(median <<<"$less_send")"
        echo "cpu.$interval.${k}_less_send_rounds=$(tr '\n' ' ' <<<"$less_send" | sed 's/ $//')"
    done
    # Bytes written per sample (the agents' batches on the wire).
    awk -v names="${kinds[*]}" 'BEGIN { n = split(names, k, " ") }
        { for (i = 1; i <= n; i++) s[i] += $i; rows++ }
        END { for (i = 1; i <= n; i++) if (k[i] != "collect_only" && k[i] != "floor") printf "%s %.0f\n", k[i], s[i] / rows }' \
        "$out/bytes-$interval.txt" | while read -r k b; do echo "cpu.$interval.${k}_bytes_per_sample=$b"; done
    # The names bench/run.sh and BENCHMARKS.md have always used.
    echo "cpu.$interval.ratio=$(ratio_col agent floor | median)"
    echo "cpu.$interval.collect_only_ratio=$(ratio_col collect_only floor | median)"
    echo "cpu.$interval.rounds=$(ratio_col agent floor | tr '\n' ' ' | sed 's/ $//')"
    if [[ -n $tls_url ]]; then
        for name in "${agent_names[@]}"; do
            echo "cpu.$interval.${name}_tls_over_plain_percent=$(ratio_col "${name}_tls" "$name" | awk '{ printf "%.1f\n", ($1 - 1) * 100 }' | median)"
        done
    fi
    for name in "${agent_names[@]:1}"; do
        echo "cpu.$interval.agent_over_${name}_percent=$(ratio_col agent "$name" | awk '{ printf "%.1f\n", ($1 - 1) * 100 }' | median)"
        if [[ -n $tls_url ]]; then
            echo "cpu.$interval.agent_tls_over_${name}_tls_percent=$(ratio_col agent_tls "${name}_tls" | awk '{ printf "%.1f\n", ($1 - 1) * 100 }' | median)"
        fi
    done
done
