#!/usr/bin/env bash
# One command for every figure in BENCHMARKS.md: measures monitor-agent and
# monitor-server on this machine, side by side with real peers in the same
# run, and prints the issue's table.
#
#   1. agent tick cost next to the read-only floor (cargo bench, tick);
#      syscalls per tick (strace -c over two --count runs, the difference);
#   1c. CPU per sample at 0.1 s and 1 s against bench/floor.c, a C program
#      that only preads the same files on the same schedule
#      (bench/cpu-per-sample.sh; the ratio is printed in every run);
#   2. footprint at a 1 s interval, all at once for the same window: the
#      agent reporting over TLS (enrolled with a join token) to a real
#      server, the same agent in plain text (--insecure) to another,
#      prometheus-node-exporter (cpu,
#      meminfo, diskstats, netdev only) scraped once a second, collectd (cpu,
#      memory, disk, interface) sending to a UDP sink, and the course
#      handout's shell loop (free, top, iostat, ifstat) as the baseline:
#      CPU per sample, RSS/PSS/private, threads, then syscalls per sample
#      with strace attached to all of them for the same seconds;
#   3. stripped binary sizes (x86_64 built here; aarch64/armv7 only if
#      scripts/arm-check.sh already built them under target/debian-cross);
#   4. server capacity: monitor-loadgen grows a fleet of simulated agents
#      (one HTTP/2 connection each, Report + CommandStream, 6-sample batches
#      at 1 s) until a step is not held; against an --insecure server, then
#      with TLS (a client certificate per simulated agent) in the same run;
#      then (capacity-pi) plain text with a Raspberry Pi's health values in
#      every batch (7 one-per-host values and 3 file systems);
#   5. command round trips (ping, true) with 1,000 agents connected, through
#      the gRPC API and through monitorctl, and fan-out to all of them
#      (--insecure server: the command path, not TLS);
#   6. reconnection storm: 10,000 simulated agents connected, the server
#      restarted (TERM, then started again on the same ports and database),
#      every agent reconnecting with the agent's backoff: reconnections
#      (with TLS: full handshakes) per second and the time until all are
#      back, with TLS and with --insecure in the same run.
#
# Everything runs on loopback, on ports nobody listens on, with a fresh
# database under the output directory; every wait is bounded and every
# process started here is stopped on exit. Installs the peers with apt when
# missing (idempotent).
#
# Usage: bench/run.sh [--quick] [--long] [--footprint-secs N]
#                     [--steps LIST] [--storm-agents N] [--only SECTIONS]
#                     [--replica-steps LIST] [--out DIR]
#   --quick             a short run (about 3 minutes): fewer ticks, a 15 s
#                       footprint window, small fleets
#   --long              a 600 s footprint window (the 10-minute RSS run)
#   --footprint-secs N  footprint window in seconds (default 60)
#   --steps LIST        capacity fleet sizes (default
#                       1000,2500,5000,7500,10000,12500,15000), each tried
#                       in plain text and with TLS
#   --storm-agents N    agents in the reconnection storm (default 10000)
#   --replica-steps LIST  fleet sizes of replicas-capacity (default
#                       1000,2500,5000), the same at 1 s and at 5 s
#   --only SECTIONS     comma-separated subset of
#                       tick,syscalls,cpu,footprint,size,capacity,capacity-pi,
#                       commands,storm,replicas,replicas-capacity
#   --out DIR           where logs and results go (default
#                       target/bench/run-DATE)
# Prints the table on stdout; raw key=value results are in DIR/results.txt.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

quick=0
footprint_secs=60
steps=1000,2500,5000,7500,10000,12500,15000
storm_agents=10000
replica_steps=1000,2500,5000
only=tick,syscalls,cpu,footprint,size,capacity,capacity-pi,commands,storm,replicas,replicas-capacity
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --long) footprint_secs=600 ;;
        --footprint-secs) footprint_secs=${2:?--footprint-secs needs seconds}; shift ;;
        --steps) steps=${2:?--steps needs a list}; shift ;;
        --storm-agents) storm_agents=${2:?--storm-agents needs a number}; shift ;;
        --replica-steps) replica_steps=${2:?--replica-steps needs a list}; shift ;;
        --only) only=${2:?--only needs a list}; shift ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ $quick -eq 1 ]]; then
    [[ $footprint_secs -eq 60 ]] && footprint_secs=15
    [[ $steps == 1000,2500,5000,7500,10000,12500,15000 ]] && steps=500,1000
    [[ $storm_agents -eq 10000 ]] && storm_agents=1000
    [[ $replica_steps == 1000,2500,5000 ]] && replica_steps=200,500
fi
[[ $storm_agents =~ ^[0-9]+$ && $storm_agents -ge 1 ]] \
    || { echo "bench: --storm-agents: expected a number above 0, got '$storm_agents'" >&2; exit 2; }
[[ $footprint_secs =~ ^[0-9]+$ && $footprint_secs -ge 5 ]] \
    || { echo "bench: --footprint-secs: expected at least 5, got '$footprint_secs'" >&2; exit 2; }

# Sizes of the quick and the full run.
if [[ $quick -eq 1 ]]; then
    sys_ticks_a=50 sys_ticks_b=150 strace_secs=5 hold=5s warmup=2s
    cmd_agents=200 cmd_calls=200 cmd_fanouts=3 ctl_calls=3
    replica_hold=5s replica_warmup=2s
else
    sys_ticks_a=100 sys_ticks_b=300 strace_secs=20 hold=20s warmup=5s
    cmd_agents=1000 cmd_calls=1000 cmd_fanouts=10 ctl_calls=10
    # Six searches (1, 2, 3 replicas at 1 s and 5 s) within 10 minutes.
    replica_hold=10s replica_warmup=3s
fi

out=${out:-$repo/target/bench/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
results=$out/results.txt
: >"$results"

log() { echo "bench: $*" >&2; }
fail() {
    echo "bench: FAIL: $*" >&2
    exit 1
}
want() { [[ ",$only," == *",$1,"* ]]; }

# key=value results; `get` prints "-" for a missing key.
put() { echo "$1=$2" >>"$results"; }
get() {
    local v
    v=$(grep -E "^$1=" "$results" 2>/dev/null | tail -n 1 | cut -d= -f2-)
    echo "${v:--}"
}
# Floating point through awk: calc 'expr' with variables as -v pairs.
calc() { awk "BEGIN { x = $1; if (x == int(x)) printf \"%d\", x; else printf \"%.${2:-2}f\", x }"; }
# field NAME "k=v k=v ..." → v
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2 }'; }

# ---------------------------------------------------------------------------
# Processes: started in the background, stopped on any exit (TERM, then
# KILL after 5 s), never by name.
# ---------------------------------------------------------------------------
pids=()
pg_pid=""
pg_dir=""
cleanup() {
    local status=$? pid
    # PostgreSQL: a fast shutdown (INT), not the smart one TERM asks for,
    # which would wait for its clients.
    [[ -z $pg_pid ]] || kill -INT "$pg_pid" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [[ -z $pg_dir ]] || rm -rf "$pg_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output to $out/NAME.log;
# the pid is in $last_pid.
start() {
    local name=$1
    shift
    "$@" >"$out/$name.log" 2>&1 &
    last_pid=$!
    pids+=("$last_pid")
}

# stop PID: TERM, then KILL after 5 s.
stop() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_until WHAT SECONDS CMD...: polls CMD every 0.1 s.
wait_until() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [[ $SECONDS -lt $deadline ]] || fail "timed out after ${secs}s waiting for $what"
        sleep 0.1
    done
}

listening_tcp() { [[ -n $(ss -Htln "sport = :$1") ]]; }

# A loopback port nobody listens on (TCP and UDP).
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        if [[ -z $(ss -Htuln "sport = :$p") ]]; then
            echo "$p"
            return
        fi
    done
    fail "no free port found"
}

# start_server NAME tls|insecure [DB]: a fresh monitor-server on free
# loopback ports, with TLS (its material in $out/NAME/tls, certificate names
# 127.0.0.1 and localhost) or with --insecure, on a fresh SQLite file or on
# DB (a postgres:// URL: a replica); sets server_pid, server_url, admin_url,
# server_cred (the operator credential; empty with --insecure) and
# server_cmd (for restart_server).
start_server() {
    local name=$1 mode=$2 sp ap scheme=https
    sp=$(free_port)
    ap=$(free_port)
    mkdir -p "$out/$name"
    server_cmd=("$server_bin" --listen "127.0.0.1:$sp" --admin-listen "127.0.0.1:$ap"
        --http-listen 127.0.0.1:0 --db "${3:-$out/$name/monitor.db}" --tls-dir "$out/$name/tls"
        --log warn)
    server_cred=""
    case $mode in
        tls)
            server_cmd+=(--tls-name 127.0.0.1 --tls-name localhost)
            server_cred=$out/$name/tls/admin.cred
            ;;
        insecure)
            server_cmd+=(--insecure)
            scheme=http
            ;;
        *) fail "start_server: mode '$mode'" ;;
    esac
    server_name=$name
    start "$name" "${server_cmd[@]}"
    server_pid=$last_pid
    server_url=$scheme://127.0.0.1:$sp
    admin_url=$scheme://127.0.0.1:$ap
    server_ports=("$sp" "$ap")
    wait_until "$name to listen" 30 listening_tcp "$ap"
    wait_until "$name to listen" 30 listening_tcp "$sp"
    [[ -z $server_cred ]] || wait_until "$name's operator credential" 30 test -s "$server_cred"
}

# restart_server: stops the server start_server started last (TERM) and
# starts it again with the same command (ports, database, TLS directory);
# sets server_pid, and restart_stop_ms / restart_listening_ms (UNIX ms:
# TERM sent, both listeners back).
restart_server() {
    restart_stop_ms=$(date +%s%3N)
    stop "$server_pid"
    start "$server_name-restarted" "${server_cmd[@]}"
    server_pid=$last_pid
    wait_until "$server_name to listen again" 60 listening_tcp "${server_ports[1]}"
    wait_until "$server_name to listen again" 60 listening_tcp "${server_ports[0]}"
    restart_listening_ms=$(date +%s%3N)
}

# start_postgres: PostgreSQL of this run's own (initdb in a temp dir,
# 127.0.0.1 on a free port, the settings BENCHMARKS.md names), run as the
# postgres user when this runs as root (PostgreSQL refuses root); sets
# pg_pid, pg_port, pg_dir. Stopped (and its directory removed) by
# stop_postgres or on exit.
pg_bin=""
start_postgres() {
    local d
    for d in /usr/lib/postgresql/*/bin; do [[ -x $d/initdb ]] && pg_bin=$d; done
    [[ -n $pg_bin ]] || fail "PostgreSQL is not installed (apt install postgresql-15)"
    pg_dir=$(mktemp -d /tmp/monitor-bench-pg.XXXXXX)
    pg_as=()
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$pg_dir"
        pg_as=(setpriv --reuid=postgres --regid=postgres --clear-groups --)
    fi
    "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 \
        --no-sync >"$out/pg-initdb.log" 2>&1 || fail "initdb (see $out/pg-initdb.log)"
    pg_port=$(free_port)
    start postgres "${pg_as[@]}" "$pg_bin/postgres" -D "$pg_dir/data" -p "$pg_port" -k "$pg_dir" \
        -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB
    pg_pid=$last_pid
    wait_until "PostgreSQL to accept connections" 60 \
        "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"
    put pg.version "$("$pg_bin/postgres" --version)"
}

stop_postgres() {
    [[ -n $pg_pid ]] || return 0
    kill -INT "$pg_pid" 2>/dev/null || true
    stop "$pg_pid"
    pg_pid=""
    rm -rf "$pg_dir"
    pg_dir=""
}

# pg_database NAME: a new empty database; prints its URL.
pg_database() {
    "$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
        -c "CREATE DATABASE \"$1\"" >>"$out/pg-psql.log" 2>&1 || fail "CREATE DATABASE $1"
    echo "postgres://postgres@127.0.0.1:$pg_port/$1"
}

# with_tls_args: the loadgen's --credentials flag for the last server, if
# it runs TLS (into the array loadgen_tls).
with_tls_args() {
    loadgen_tls=()
    [[ -z $server_cred ]] || loadgen_tls=(--credentials "$server_cred")
}

# put_prefixed FILE FROM TO: the key=value lines of FILE into the results,
# keys starting FROM renamed to start TO.
put_prefixed() {
    sed "s/^$2/$3/" "$1" >>"$results"
}

proc() { "$loadgen" proc "$@"; }

# ---------------------------------------------------------------------------
# Machine, peers, build.
# ---------------------------------------------------------------------------
put machine.nproc "$(nproc)"
put machine.cpu "$(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }')"
put machine.kernel "$(uname -sr)"
put machine.arch "$(uname -m)"
put machine.os "$(. /etc/os-release && echo "$PRETTY_NAME")"
put machine.mem_mib "$(awk '/^MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo)"
put machine.load_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
put machine.rustc "$(rustc --version)"
put run.mode "$([[ $quick -eq 1 ]] && echo quick || echo full)"
put run.date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    log "load average is $load1: other work on this machine will show in the figures"
fi

export DEBIAN_FRONTEND=noninteractive
needed=(strace socat sysstat ifstat procps prometheus-node-exporter collectd-core)
missing=()
for p in "${needed[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    apt-get install -y --no-install-recommends "${missing[@]}" >"$out/apt.log" 2>&1 \
        || { apt-get update >>"$out/apt.log" 2>&1 \
             && apt-get install -y --no-install-recommends "${missing[@]}" >>"$out/apt.log" 2>&1; } \
        || fail "apt-get install ${missing[*]} (see $out/apt.log)"
fi
node_exporter_bin=/usr/bin/prometheus-node-exporter
collectd_bin=/usr/sbin/collectd
put peers.node_exporter "$($node_exporter_bin --version 2>&1 | head -n 1)"
put peers.collectd "$($collectd_bin -h 2>&1 | awk '/^collectd [0-9]/ { print $1, $2; exit }')"

log "building release binaries"
# Once more after a pause on failure: the target directory is shared, and a
# concurrent build can remove an rlib under this one's feet.
# The agent is built on its own, the binary `cargo build -p monitor-agent`
# gives (a workspace build gives the same RSS since the agent runs on a
# LocalRuntime, but its binary differs by a few KB).
build() {
    cargo build --release "$@" >>"$out/build.log" 2>&1 ||
        { sleep 30; cargo build --release "$@" >>"$out/build.log" 2>&1; } ||
        fail "cargo build --release $* (see $out/build.log)"
}
build -p monitor-agent
mkdir -p "$out/bin"
cp "$repo/target/release/monitor-agent" "$out/bin/"
build -p monitor-server -p monitorctl -p monitor-loadgen
agent_bin=$repo/target/release/monitor-agent
server_bin=$repo/target/release/monitor-server
ctl_bin=$repo/target/release/monitorctl
loadgen=$repo/target/release/monitor-loadgen
# Copies, so another build in the shared target directory cannot swap the
# binaries under a running measurement (the agent's was copied above).
cp "$server_bin" "$ctl_bin" "$loadgen" "$out/bin/"
agent_bin=$out/bin/monitor-agent
server_bin=$out/bin/monitor-server
ctl_bin=$out/bin/monitorctl
loadgen=$out/bin/monitor-loadgen

# Many connections: the server and the load generator each need one
# descriptor per simulated agent.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)
put machine.fd_limit "$fd_limit"

# ---------------------------------------------------------------------------
# 1. Tick cost against the floor.
# ---------------------------------------------------------------------------
if want tick; then
    log "tick benchmark"
    tick_args=()
    [[ $quick -eq 1 ]] && tick_args=(-- --quick)
    cargo bench -p monitor-agent --bench tick "${tick_args[@]}" >"$out/tick.log" 2>&1 \
        || fail "tick benchmark (see $out/tick.log)"
    put tick.floor_us "$(awk '/^floor \(/ { print $(NF-1) }' "$out/tick.log")"
    put tick.sample_us "$(awk '/^Collector::sample/ { print $(NF-1) }' "$out/tick.log")"
    put tick.parse_us "$(awk '/^parsers alone/ { print $NF }' "$out/tick.log")"
    put tick.ratio "$(awk '/^ratio/ { print $(NF-1) }' "$out/tick.log")"
    put tick.bytes_per_tick "$(sed -n 's/.*, \([0-9]*\) bytes read per tick.*/\1/p' "$out/tick.log")"
fi

# ---------------------------------------------------------------------------
# 1b. Syscalls per tick: the real agent against a real server, strace -c
# over two runs of different lengths; the difference is the steady state.
# ---------------------------------------------------------------------------
if want syscalls; then
    log "syscalls per tick ($sys_ticks_a and $sys_ticks_b ticks at 0.1 s)"
    start_server server-syscalls insecure
    for n in "$sys_ticks_a" "$sys_ticks_b"; do
        timeout 120 strace -c -f -o "$out/strace-count-$n.txt" \
            "$agent_bin" --insecure --server "$server_url" --interval 0.1 --count "$n" \
            --hostname "bench-strace-$n" --log warn >"$out/agent-count-$n.log" 2>&1 \
            || fail "agent --count $n under strace (see $out/agent-count-$n.log)"
    done
    stop "$server_pid"
    total_a=$(awk '$NF == "total" { print $4 }' "$out/strace-count-$sys_ticks_a.txt")
    total_b=$(awk '$NF == "total" { print $4 }' "$out/strace-count-$sys_ticks_b.txt")
    put syscalls.agent_per_tick "$(calc "($total_b - $total_a) / ($sys_ticks_b - $sys_ticks_a)" 1)"
    put syscalls.agent_startup "$(calc "$total_a - $sys_ticks_a * ($total_b - $total_a) / ($sys_ticks_b - $sys_ticks_a)" 0)"
    # Which calls a tick makes: per-call differences.
    awk -v a="$sys_ticks_a" -v b="$sys_ticks_b" '
        FNR == NR && $NF != "total" && $4 ~ /^[0-9]+$/ { first[$NF] = $4; next }
        $NF != "total" && $4 ~ /^[0-9]+$/ { d = ($4 - first[$NF]) / (b - a); if (d >= 0.05) printf "%s %.2f\n", $NF, d }
    ' "$out/strace-count-$sys_ticks_a.txt" "$out/strace-count-$sys_ticks_b.txt" \
        | sort -k2 -rn >"$out/syscalls-per-tick.txt"
    put syscalls.agent_breakdown "$(awk '{ printf "%s%s %s", sep, $1, $2; sep = ", " }' "$out/syscalls-per-tick.txt")"
fi

# ---------------------------------------------------------------------------
# 1c. CPU per sample against the C floor, at 0.1 s and 1 s, same windows.
# ---------------------------------------------------------------------------
if want cpu; then
    log "CPU per sample against bench/floor.c"
    # Plain text and TLS side by side (issue 10's "TLS ≤ +10 %").
    cpu_args=(--tls "$ctl_bin")
    [[ $quick -eq 1 ]] && cpu_args+=(--secs-per-interval 0.1=10,1=20 --rounds 1 --warmup-secs 5)
    bench/cpu-per-sample.sh "$agent_bin" "$server_bin" "$out/cpu" "${cpu_args[@]}" \
        >"$out/cpu.txt" 2>"$out/cpu.log" || fail "CPU per sample (see $out/cpu.log)"
    cat "$out/cpu.txt" >>"$results"
fi

# ---------------------------------------------------------------------------
# 2. Footprint, side by side, same window, 1 s interval.
# ---------------------------------------------------------------------------
if want footprint; then
    log "footprint: agent (TLS and plain), node_exporter, collectd, shell baseline for ${footprint_secs}s"
    start_server server-footprint insecure
    footprint_server_pid=$server_pid
    plain_url=$server_url
    # The agent as installed: TLS, enrolled once with a join token.
    start_server server-footprint-tls tls
    footprint_tls_server_pid=$server_pid
    token=$("$ctl_bin" --credentials "$server_cred" enrol bench-agent-tls 2>>"$out/monitorctl.log") \
        || fail "monitorctl enrol bench-agent-tls (see $out/monitorctl.log)"
    iface=$(ip route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
    iface=${iface:-lo}

    start agent "$agent_bin" --insecure --server "$plain_url" --interval 1 --hostname bench-agent --log warn
    agent_pid=$last_pid
    start agent-tls "$agent_bin" --server "$server_url" --join "$token" --state-dir "$out/agent-tls-state" \
        --interval 1 --hostname bench-agent-tls --log warn
    agent_tls_pid=$last_pid
    # The same agent collecting only (--stdout into /dev/null, no network):
    # what the collection costs without gRPC.
    "$agent_bin" --stdout --interval 1 --hostname bench-collect-only --log warn >/dev/null 2>"$out/agent-stdout.log" &
    stdout_agent_pid=$!
    pids+=("$stdout_agent_pid")

    ne_port=$(free_port)
    start node-exporter "$node_exporter_bin" --web.listen-address="127.0.0.1:$ne_port" \
        --collector.disable-defaults --collector.cpu --collector.meminfo \
        --collector.diskstats --collector.netdev --web.disable-exporter-metrics
    ne_pid=$last_pid
    wait_until "node_exporter to listen" 30 listening_tcp "$ne_port"
    "$loadgen" scrape --addr "127.0.0.1:$ne_port" --interval 1s >"$out/scrapes.txt" 2>"$out/scraper.log" &
    scraper_pid=$!
    pids+=("$scraper_pid")

    cd_port=$(free_port)
    start udp-sink socat -u "UDP-RECV:$cd_port,bind=127.0.0.1" /dev/null
    mkdir -p "$out/collectd"
    cat >"$out/collectd.conf" <<EOF
# collectd as people run it for host metrics, limited to the agent's four
# sources, sending every second to a listener on loopback.
Hostname "bench-collectd"
FQDNLookup false
Interval 1
BaseDir "$out/collectd"
PIDFile "$out/collectd/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin disk
LoadPlugin interface
LoadPlugin network
<Plugin network>
  Server "127.0.0.1" "$cd_port"
</Plugin>
EOF
    start collectd "$collectd_bin" -f -C "$out/collectd.conf"
    collectd_pid=$last_pid

    bash "$repo/bench/shell-baseline.sh" "$iface" >"$out/shell-samples.txt" 2>"$out/shell-baseline.log" &
    shell_pid=$!
    pids+=("$shell_pid")

    sleep 10
    for pid in "$agent_pid" "$agent_tls_pid" "$stdout_agent_pid" "$ne_pid" "$collectd_pid" "$shell_pid"; do
        kill -0 "$pid" 2>/dev/null || fail "a footprint process (pid $pid) died during warm-up (see $out/*.log)"
    done
    # The TLS agent enrolled and reports: its identity is on disk and the
    # server lists it online.
    wait_until "the TLS agent's identity" 30 test -s "$out/agent-tls-state/identity.pem"
    wait_until "the TLS agent online" 30 \
        bash -c '"$0" --credentials "$1" hosts 2>/dev/null | grep -Eq "^bench-agent-tls +online"' "$ctl_bin" "$server_cred"

    # Memory over time, every 10 s, for the flatness check.
    (
        echo "unix_s agent_rss_kib collectd_rss_kib node_exporter_rss_kib agent_tls_rss_kib"
        while kill -0 "$agent_pid" 2>/dev/null; do
            line="$(date +%s)"
            for pid in "$agent_pid" "$collectd_pid" "$ne_pid" "$agent_tls_pid"; do
                line+=" $(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo -)"
            done
            echo "$line"
            sleep 10
        done
    ) >"$out/rss.tsv" &
    pids+=("$!")

    t0=$(date +%s%3N)
    p0=$(proc "$agent_pid" "$agent_tls_pid" "$stdout_agent_pid" "$ne_pid" "$collectd_pid" "$shell_pid")
    sleep "$footprint_secs"
    t1=$(date +%s%3N)
    p1=$(proc "$agent_pid" "$agent_tls_pid" "$stdout_agent_pid" "$ne_pid" "$collectd_pid" "$shell_pid")
    echo "$p0" >"$out/footprint-start.txt"
    echo "$p1" >"$out/footprint-end.txt"
    window_s=$(calc "($t1 - $t0) / 1000" 3)
    put footprint.window_s "$window_s"
    # Lines of FILE stamped inside the window (UNIX_MS first): scrapes that
    # succeeded (size > 0), shell samples with all six values.
    scrapes_in() { awk -v a="$1" -v b="$2" '$1 >= a && $1 < b && $2 > 0' "$out/scrapes.txt" | wc -l; }
    shell_in() { awk -v a="$1" -v b="$2" '$1 >= a && $1 < b && NF >= 7' "$out/shell-samples.txt" | wc -l; }

    # CPU per sample. Threads' schedstat gives nanoseconds but forgets
    # threads that ended; utime+stime counts them but in 10 ms ticks. Use
    # the nanoseconds unless the ticks say more (then a thread ended).
    footprint() {
        local name=$1 pid=$2 samples=$3 children=$4 a b
        a=$(grep "^pid=$pid " <<<"$p0")
        b=$(grep "^pid=$pid " <<<"$p1")
        local ns=$(( $(field cpu_ns "$b") - $(field cpu_ns "$a") ))
        local ticks=$(( $(field cpu_ticks "$b") - $(field cpu_ticks "$a") ))
        if [[ $children -eq 1 ]]; then
            ticks=$(( ticks + $(field children_cpu_ticks "$b") - $(field children_cpu_ticks "$a") ))
            ns=0
        fi
        local cpu_ms
        cpu_ms=$(awk -v ns="$ns" -v t="$ticks" 'BEGIN { a = ns / 1e6; b = t * 10; printf "%.3f", (b > a + 20 ? b : a) }')
        put "footprint.$name.samples" "$samples"
        put "footprint.$name.cpu_ms" "$cpu_ms"
        put "footprint.$name.cpu_ms_per_sample" "$(calc "$cpu_ms / ($samples > 0 ? $samples : 1)" 4)"
        put "footprint.$name.cpu_percent" "$(calc "$cpu_ms / 10 / $window_s" 3)"
        for k in threads rss_kib hwm_kib pss_kib private_kib anon_kib; do
            put "footprint.$name.$k" "$(field "$k" "$b")"
        done
        put "footprint.$name.threads_at_start" "$(field threads "$a")"
    }
    secs=$(calc "($t1 - $t0) / 1000" 0)
    footprint agent "$agent_pid" "$secs" 0
    footprint agent_tls "$agent_tls_pid" "$secs" 0
    footprint agent_collect_only "$stdout_agent_pid" "$secs" 0
    footprint collectd "$collectd_pid" "$secs" 0
    footprint node_exporter "$ne_pid" "$(scrapes_in "$t0" "$t1")" 0
    footprint shell "$shell_pid" "$(shell_in "$t0" "$t1")" 1
    put footprint.agent.tasks "$(ls "/proc/$agent_pid/task" | tr '\n' ' ')"
    a=$(get footprint.agent.cpu_ms_per_sample)
    b=$(get footprint.agent_tls.cpu_ms_per_sample)
    put footprint.agent_tls.cpu_over_plain_percent "$(calc "($b - $a) * 100 / $a" 1)"
    put footprint.agent_tls.rss_max_kib "$(awk 'NR > 1 && $5 != "-" { if ($5 > max) max = $5 } END { print max }' "$out/rss.tsv")"
    put footprint.node_exporter.scrape_bytes "$(tail -n 1 "$out/scrapes.txt" | cut -d' ' -f2)"

    # RSS drift of the agent after its first minute (or the warm-up).
    put footprint.agent.rss_min_kib "$(awk 'NR > 1 && $2 != "-" { if (min == "" || $2 < min) min = $2 } END { print min }' "$out/rss.tsv")"
    put footprint.agent.rss_max_kib "$(awk 'NR > 1 && $2 != "-" { if ($2 > max) max = $2 } END { print max }' "$out/rss.tsv")"
    put footprint.agent.rss_after_60s_kib "$(awk -v t="$(( t0 / 1000 + 50 ))" 'NR > 1 && $1 >= t { print $2; exit }' "$out/rss.tsv")"

    # Syscalls per sample: strace attached to all three for the same
    # seconds (the shell baseline is left out: its cost is processes).
    log "syscalls per sample of the agent and the peers (${strace_secs}s attached)"
    s0=$(date +%s%3N)
    tracers=()
    for n in agent:$agent_pid agent_tls:$agent_tls_pid collectd:$collectd_pid node_exporter:$ne_pid; do
        timeout -s INT "$strace_secs" strace -c -f -p "${n#*:}" -o "$out/strace-attach-${n%%:*}.txt" \
            >/dev/null 2>&1 &
        tracers+=("$!")
    done
    # Bounded by timeout(1); strace prints its table when interrupted.
    for t in "${tracers[@]}"; do
        wait "$t" || true
    done
    s1=$(date +%s%3N)
    ss_secs=$(calc "($s1 - $s0) / 1000" 3)
    ne_scrapes=$(scrapes_in "$s0" "$s1")
    for n in agent agent_tls collectd node_exporter; do
        total=$(awk '$NF == "total" { print $4 }' "$out/strace-attach-$n.txt" 2>/dev/null || true)
        [[ -n $total ]] || { put "syscalls.$n.attached_per_sample" -; continue; }
        samples=$ss_secs
        [[ $n == node_exporter ]] && samples=$ne_scrapes
        put "syscalls.$n.attached_per_sample" "$(calc "$total / $samples" 1)"
    done

    for pid in "$shell_pid" "$scraper_pid" "$collectd_pid" "$ne_pid" "$stdout_agent_pid" "$agent_pid" \
        "$agent_tls_pid" "$footprint_server_pid" "$footprint_tls_server_pid"; do
        stop "$pid"
    done
fi

# ---------------------------------------------------------------------------
# 3. Binary sizes.
# ---------------------------------------------------------------------------
if want size; then
    cp "$agent_bin" "$out/monitor-agent.x86_64"
    strip --strip-all "$out/monitor-agent.x86_64"
    put size.agent_x86_64_bytes "$(stat -c %s "$out/monitor-agent.x86_64")"
    for t in aarch64:aarch64-unknown-linux-gnu:aarch64-linux-gnu armv7:armv7-unknown-linux-gnueabihf:arm-linux-gnueabihf armv6:arm-unknown-linux-gnueabihf:arm-linux-gnueabihf; do
        IFS=: read -r short triple gcc <<<"$t"
        f=$repo/target/debian-cross/$triple/release/monitor-agent
        if [[ -f $f ]]; then
            cp "$f" "$out/monitor-agent.$short"
            if ! file "$out/monitor-agent.$short" | grep -q ", stripped"; then
                "$gcc-strip" --strip-all "$out/monitor-agent.$short" 2>/dev/null || true
            fi
            put "size.agent_${short}_bytes" "$(stat -c %s "$out/monitor-agent.$short")"
            put "size.agent_${short}_built" "$(date -r "$f" -u +%Y-%m-%dT%H:%M:%SZ)"
        else
            put "size.agent_${short}_bytes" -
        fi
    done
    put size.node_exporter_bytes "$(stat -c %s "$node_exporter_bin")"
    put size.collectd_bytes "$(du -cb "$collectd_bin" /usr/lib/collectd/{cpu,memory,disk,interface,network}.so | awk 'END { print $1 }')"
fi

# ---------------------------------------------------------------------------
# 4. Server capacity.
# ---------------------------------------------------------------------------
# The simulated agents' source addresses, in turn: 1,016 loopback
# addresses (127.0.1.1–127.0.4.254), so that ephemeral ports never run out
# and the server's cap on connections still in their handshake per source
# address (64) sees a few agents per address, as a real fleet's one, not
# thousands (its total cap, 512, applies as it would to a real fleet).
sources=$(for b in 1 2 3 4; do for c in $(seq 1 254); do printf '127.0.%d.%d,' "$b" "$c"; done; done)
sources=${sources%,}
if want capacity || want capacity-pi; then
    # Each simulated agent is one descriptor in the server and one in the
    # load generator; keep the fleet under the per-process limit.
    max_agents=$((fd_limit - 500))
    capped=$(tr ',' '\n' <<<"$steps" | awk -v m="$max_agents" '$1 <= m' | paste -sd,)
    [[ $capped == "$steps" ]] || log "steps above $max_agents agents dropped: the descriptor limit is $fd_limit"
    put capacity.max_agents_by_fd_limit "$max_agents"
    # Plain text (--insecure) first, then TLS, same steps, each on a fresh
    # server and database: capacity.* and capacity_tls.* (tls.* there is
    # the time the agents' certificates took, before the first step).
    # capacity-pi: plain text again, every batch also carrying a
    # Raspberry Pi's health values (7 one-per-host values and 3 file
    # systems): capacity_pi.*, against the six-only run before it.
    modes=()
    if want capacity; then modes+=(insecure tls); fi
    if want capacity-pi; then modes+=(pi); fi
    for mode in "${modes[@]}"; do
        server_mode=$mode pi_args=()
        if [[ $mode == pi ]]; then server_mode=insecure pi_args=(--pi-health 3); fi
        log "server capacity ($mode): steps $capped, ${hold} each"
        start_server "server-capacity-$mode" "$server_mode"
        with_tls_args
        : >"$out/capacity-$mode.results"
        timeout 3600 "$loadgen" capacity --server "$server_url" --admin "$admin_url" "${loadgen_tls[@]}" \
            --server-pid "$server_pid" --steps "$capped" --hold "$hold" --warmup "$warmup" \
            --sources "$sources" "${pi_args[@]}" --results "$out/capacity-$mode.results" \
            >"$out/capacity-$mode.txt" 2>&1 \
            || fail "capacity run, $mode (see $out/capacity-$mode.txt)"
        cat "$out/capacity-$mode.txt" >&2
        stop "$server_pid"
    done
    if want capacity; then
        put_prefixed "$out/capacity-insecure.results" capacity. capacity.
        put_prefixed "$out/capacity-tls.results" "\(capacity\|tls\)\." "capacity_tls.\1."
        a=$(get capacity.agents_kept_pace)
        b=$(get capacity_tls.capacity.agents_kept_pace)
        put capacity_tls.kept_pace_of_plain_percent "$(calc "$b * 100 / ($a > 0 ? $a : 1)" 0)"
        a=$(get capacity.agents_held)
        b=$(get capacity_tls.capacity.agents_held)
        put capacity_tls.held_of_plain_percent "$(calc "$b * 100 / ($a > 0 ? $a : 1)" 0)"
    fi
    if want capacity-pi; then
        put_prefixed "$out/capacity-pi.results" capacity. capacity_pi.
    fi
fi

# ---------------------------------------------------------------------------
# 5. Command latency with a fleet connected.
# ---------------------------------------------------------------------------
if want commands; then
    log "command round trips with $cmd_agents agents"
    start_server server-commands insecure
    timeout 1800 "$loadgen" commands --server "$server_url" --admin "$admin_url" \
        --agents "$cmd_agents" --calls "$cmd_calls" --fanouts "$cmd_fanouts" \
        --monitorctl "$ctl_bin" --monitorctl-calls "$ctl_calls" \
        --sources "$sources" --results "$results" >"$out/commands.txt" 2>&1 \
        || fail "command latency run (see $out/commands.txt)"
    cat "$out/commands.txt" >&2
    stop "$server_pid"
fi
# ---------------------------------------------------------------------------
# 6. Reconnection storm: every agent back after a server restart.
# ---------------------------------------------------------------------------
if want storm; then
    [[ $storm_agents -le $((fd_limit - 500)) ]] \
        || fail "--storm-agents $storm_agents: the descriptor limit is $fd_limit"
    for mode in insecure tls; do
        log "reconnection storm ($mode): $storm_agents agents, server restarted"
        start_server "server-storm-$mode" "$mode"
        with_tls_args
        : >"$out/storm-$mode.results"
        timeout 1800 "$loadgen" reconnect --server "$server_url" --admin "$admin_url" "${loadgen_tls[@]}" \
            --agents "$storm_agents" --sources "$sources" --results "$out/storm-$mode.results" \
            >"$out/storm-$mode.txt" 2>&1 &
        storm_pid=$!
        pids+=("$storm_pid")
        deadline=$((SECONDS + 900))
        until grep -q '^ready:' "$out/storm-$mode.txt"; do
            kill -0 "$storm_pid" 2>/dev/null || fail "reconnect run, $mode, ended before it was ready (see $out/storm-$mode.txt)"
            [[ $SECONDS -lt $deadline ]] || fail "reconnect run, $mode: not ready after 900 s"
            sleep 0.2
        done
        # A few seconds of steady state before the restart.
        sleep 5
        restart_server
        wait "$storm_pid" || fail "reconnect run, $mode (see $out/storm-$mode.txt)"
        cat "$out/storm-$mode.txt" >&2
        put_prefixed "$out/storm-$mode.results" "\(storm\|tls\)\." "storm_$mode.\1."
        put "storm_$mode.restart_stop_unix_ms" "$restart_stop_ms"
        put "storm_$mode.restart_listening_unix_ms" "$restart_listening_ms"
        put "storm_$mode.server_down_ms" "$((restart_listening_ms - restart_stop_ms))"
        last=$(get "storm_$mode.storm.last_back_unix_ms")
        if [[ $last != - ]]; then
            put "storm_$mode.all_back_after_restart_ms" "$((last - restart_stop_ms))"
            put "storm_$mode.all_back_after_listening_ms" "$((last - restart_listening_ms))"
        fi
        stop "$server_pid"
    done
fi
# ---------------------------------------------------------------------------
# 7. Commands across replicas: the fleet on B, calls through B and A.
# ---------------------------------------------------------------------------
if want replicas; then
    log "command round trips across replicas with $cmd_agents agents on replica B"
    start_postgres
    db=$(pg_database replicas_commands)
    put replicas_commands.load_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
    start_server replica-cmd-a insecure "$db"
    a_pid=$server_pid a_admin=$admin_url
    start_server replica-cmd-b insecure "$db"
    timeout 600 "$loadgen" commands --server "$server_url" --admin "$admin_url" \
        --cross-admin "$a_admin" --agents "$cmd_agents" --calls "$cmd_calls" \
        --fanouts "$cmd_fanouts" --sources "$sources" --prefix rcmd- \
        --results "$out/replicas-commands.results" >"$out/replicas-commands.txt" 2>&1 \
        || fail "command latency across replicas (see $out/replicas-commands.txt)"
    cat "$out/replicas-commands.txt" >&2
    put_prefixed "$out/replicas-commands.results" commands. replicas_commands.
    put replicas_commands.load_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"
    for q in p50 p99; do
        l=$(get "replicas_commands.ping.${q}_ms")
        c=$(get "replicas_commands.cross.ping.${q}_ms")
        [[ $l == - || $c == - ]] || put "replicas_commands.cross_over_local_ping_$q" "$(calc "$c / $l" 2)"
    done
    stop "$server_pid"
    stop "$a_pid"
    stop_postgres
fi

# ---------------------------------------------------------------------------
# 8. Capacity with 1, 2 and 3 replicas on one PostgreSQL.
# ---------------------------------------------------------------------------
if want replicas-capacity; then
    start_postgres
    for interval in 1s 5s; do
        for n in 1 2 3; do
            log "capacity with $n replica(s) on PostgreSQL, agents at $interval: steps $replica_steps"
            key=replicas_capacity.$interval.$n
            db=$(pg_database "capacity_${interval}_$n")
            urls=() rpids=()
            for r in $(seq "$n"); do
                start_server "replica-cap-$interval-$n-$r" insecure "$db"
                urls+=("$server_url")
                rpids+=(--server-pid "$server_pid")
                [[ $r -eq 1 ]] && first_admin=$admin_url
            done
            put "$key.load_at_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
            : >"$out/$key.results"
            timeout 600 "$loadgen" capacity --server "$(IFS=,; echo "${urls[*]}")" \
                --admin "$first_admin" "${rpids[@]}" --steps "$replica_steps" \
                --interval "$interval" --hold "$replica_hold" --warmup "$replica_warmup" \
                --prefix "rc$n-" --sources "$sources" --results "$out/$key.results" \
                >"$out/$key.txt" 2>&1 || fail "capacity with $n replicas at $interval (see $out/$key.txt)"
            cat "$out/$key.txt" >&2
            put_prefixed "$out/$key.results" capacity. "$key."
            put "$key.load_at_end" "$(cut -d' ' -f1-3 /proc/loadavg)"
            for pid in "${rpids[@]}"; do
                [[ $pid == --server-pid ]] || stop "$pid"
            done
        done
    done
    stop_postgres
fi
put machine.load_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------
# verdict VALUE OP LIMIT → met / NOT met / -
verdict() {
    [[ $1 == - || -z $1 ]] && { echo "-"; return; }
    awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {
        ok = (op == "<=") ? (v <= l) : (v >= l); print (ok ? "met" : "NOT met") }'
}
ratio() { [[ $1 == - || $2 == - || $2 == 0 ]] && echo "-" || calc "$1 / $2" 0; }
mib() { [[ $1 == - || -z $1 ]] && echo "-" || calc "$1 / 1024" 2; }
mb() { [[ $1 == - || -z $1 ]] && echo "-" || calc "$1 / 1000000" 2; }
secs() { [[ $1 == - || -z $1 ]] && echo "-" || calc "$1 / 1000" 2; }
bytes_mib() { [[ $1 == - || -z $1 ]] && echo "-" || calc "$1 / 1048576" 2; }
# signed PERCENT → "+12.5" or "-36.3" (a difference, with its sign once)
signed() { [[ $1 == - || -z $1 || $1 == -* ]] && echo "${1:--}" || echo "+$1"; }

a_cpu=$(get footprint.agent.cpu_ms_per_sample)
c_cpu=$(get footprint.collectd.cpu_ms_per_sample)
n_cpu=$(get footprint.node_exporter.cpu_ms_per_sample)
s_cpu=$(get footprint.shell.cpu_ms_per_sample)
a_sys=$(get syscalls.agent_per_tick)
a_rss=$(get footprint.agent.rss_kib)
aarch64=$(get size.agent_aarch64_bytes)
size_fig=$aarch64
[[ $size_fig == - ]] && size_fig=$(get size.agent_x86_64_bytes)
tick_ratio=$(get tick.ratio)
held=$(get capacity.agents_held)
pace=$(get capacity.agents_kept_pace)
per_agent=$(get capacity.server_kib_per_agent)
p99=$(get commands.ping.p99_ms)
true_p99=$(get commands.true.p99_ms)
fan=$(get commands.fanout.max_ms)
t_cpu=$(get footprint.agent_tls.cpu_ms_per_sample)
t_over=$(get footprint.agent_tls.cpu_over_plain_percent)
t_rss=$(get footprint.agent_tls.rss_kib)
tls_pace=$(get capacity_tls.capacity.agents_kept_pace)
tls_held=$(get capacity_tls.capacity.agents_held)
tls_of_plain=$(get capacity_tls.kept_pace_of_plain_percent)
# storm MODE: one line about the reconnection storm of MODE.
storm() {
    local k=storm_$1
    echo "$(get "$k.storm.reconnected") of $(get "$k.storm.agents") back (all: $(get "$k.storm.all_back")); \
$(get "$k.storm.per_s_mean")/s mean, $(get "$k.storm.per_s_peak") in the busiest second; \
all back $(secs "$(get "$k.all_back_after_restart_ms")") s after TERM \
($(secs "$(get "$k.all_back_after_listening_ms")") s after the server listened again; it was down $(get "$k.server_down_ms") ms); \
$(get "$k.storm.failed_attempts") failed attempts"
}

# replicas_row INTERVAL: held (kept pace) with 1, 2, 3 replicas.
replicas_row() {
    local n k out=""
    for n in 1 2 3; do
        k=replicas_capacity.$1.$n
        out+="$n: $(get "$k.agents_held") ($(get "$k.agents_kept_pace"); p99 $(get "$k.p99_ms") ms, replicas' CPU $(get "$k.server_cpu_percent") %); "
    done
    echo "${out%; } of steps $replica_steps"
}

cat <<EOF

## monitor benchmarks — $(get run.mode) run, $(get run.date)
$(get machine.cpu), $(get machine.nproc) cores, $(get machine.mem_mib) MiB, $(get machine.kernel), $(get machine.os); load at start $(get machine.load_at_start), at end $(get machine.load_at_end)
Peers in the same run: $(get peers.node_exporter); $(get peers.collectd); shell loop (free, top -bn1, iostat, ifstat)

| figure | target | measured | peers, same run | |
|---|---|---|---|---|
| agent tick (read + parse + rates) | ≤ 1.5 × the read-only floor | $(get tick.sample_us) µs vs floor $(get tick.floor_us) µs = ${tick_ratio} × (parsers alone $(get tick.parse_us) µs) | | $(verdict "$tick_ratio" "<=" 1.5) |
| agent CPU per sample incl. sending | ≤ 0.1 ms | $a_cpu ms ($(get footprint.agent.cpu_percent) % of a core); collecting only (--stdout) $(get footprint.agent_collect_only.cpu_ms_per_sample) ms | collectd $c_cpu ms ($(ratio "$c_cpu" "$a_cpu")×), node_exporter $n_cpu ms ($(ratio "$n_cpu" "$a_cpu")×), shell $s_cpu ms ($(ratio "$s_cpu" "$a_cpu")×) | $(verdict "$a_cpu" "<=" 0.1) |
| agent CPU per sample vs bench/floor.c (same files, same schedule) | ≤ 2 × the floor | 0.1 s: $(get cpu.0.1.agent_ms_per_sample) ms vs $(get cpu.0.1.floor_ms_per_sample) ms = $(get cpu.0.1.ratio) × (collecting only $(get cpu.0.1.collect_only_ratio) ×); 1 s: $(get cpu.1.agent_ms_per_sample) ms vs $(get cpu.1.floor_ms_per_sample) ms = $(get cpu.1.ratio) × (collecting only $(get cpu.1.collect_only_ratio) ×); TLS $(get cpu.0.1.agent_tls_ratio) × at 0.1 s, $(get cpu.1.agent_tls_ratio) × at 1 s | the floor plus one loopback TCP write per tick: $(get cpu.0.1.floor_net_ratio) × at 0.1 s, $(get cpu.1.floor_net_ratio) × at 1 s; the agent less that bare send: $(get cpu.0.1.agent_less_send_ratio) × at 0.1 s, $(get cpu.1.agent_less_send_ratio) × at 1 s (TLS $(get cpu.0.1.agent_tls_less_send_ratio) ×, $(get cpu.1.agent_tls_less_send_ratio) ×) | $(verdict "$(get cpu.1.ratio)" "<=" 2) |
| agent syscalls per tick incl. sending | ≤ 24 | $a_sys ($(get syscalls.agent_breakdown)); attached at 1 s: $(get syscalls.agent.attached_per_sample) | collectd $(get syscalls.collectd.attached_per_sample), node_exporter $(get syscalls.node_exporter.attached_per_sample) per sample | $(verdict "$a_sys" "<=" 24) |
| agent resident memory after $(calc "$(get footprint.window_s) / 60 + 10 / 60" 1) min | ≤ 3 MiB, flat | RSS $(mib "$a_rss") MiB (HWM $(mib "$(get footprint.agent.hwm_kib)"), PSS $(mib "$(get footprint.agent.pss_kib)"), private $(mib "$(get footprint.agent.private_kib)"), anon $(mib "$(get footprint.agent.anon_kib)") MiB); RSS range $(get footprint.agent.rss_min_kib)–$(get footprint.agent.rss_max_kib) KiB | collectd $(mib "$(get footprint.collectd.rss_kib)") MiB, node_exporter $(mib "$(get footprint.node_exporter.rss_kib)") MiB | $(verdict "$(mib "$a_rss")" "<=" 3) |
| agent threads at steady state | 1 | $(get footprint.agent.threads) | collectd $(get footprint.collectd.threads), node_exporter $(get footprint.node_exporter.threads) | $(verdict "$(get footprint.agent.threads)" "<=" 1) |
| agent with TLS: CPU per sample vs plain text, same window | ≤ +10 % | TLS $t_cpu ms vs plain $a_cpu ms: $(signed "$t_over") %; in the floor's windows $(signed "$(get cpu.1.agent_tls_over_plain_percent)") % at 1 s, $(signed "$(get cpu.0.1.agent_tls_over_plain_percent)") % at 0.1 s | | $(verdict "$t_over" "<=" 10) |
| agent with TLS: resident memory | ≤ 3.5 MiB | RSS $(mib "$t_rss") MiB (max over the window $(mib "$(get footprint.agent_tls.rss_max_kib)"), PSS $(mib "$(get footprint.agent_tls.pss_kib)"), private $(mib "$(get footprint.agent_tls.private_kib)") MiB); plain $(mib "$a_rss") MiB | | $(verdict "$(mib "$t_rss")" "<=" 3.5) |
| agent stripped binary (aarch64) | ≤ 2 MiB (with TLS ≤ 2.5 MiB) | aarch64 $(bytes_mib "$aarch64") MiB, armv7 $(bytes_mib "$(get size.agent_armv7_bytes)") MiB, armv6 $(bytes_mib "$(get size.agent_armv6_bytes)") MiB, x86_64 $(bytes_mib "$(get size.agent_x86_64_bytes)") MiB | node_exporter $(mb "$(get size.node_exporter_bytes)") MB, collectd + 5 plugins $(mb "$(get size.collectd_bytes)") MB | $(verdict "$(bytes_mib "$size_fig")" "<=" 2) |
| server: agents held at 1 s, all stored | ≥ 10,000 | kept pace (all stored and acknowledged, no backlog): $pace; of those with ingest p99 ≤ 1 s: $held (tried $(get capacity.steps_tried); first not held: $(get capacity.first_not_held) — $(get capacity.first_not_held_why)); stored = acked: $(get capacity.stored_matches_acked) | | $(verdict "$pace" ">=" 10000) |
| server: agents held at 1 s with TLS vs --insecure, same run | ≥ 80 % | TLS kept pace: $tls_pace of plain $pace = $tls_of_plain % (p99 ≤ 1 s: $tls_held of $held = $(get capacity_tls.held_of_plain_percent) %; first TLS step not held: $(get capacity_tls.capacity.first_not_held) — $(get capacity_tls.capacity.first_not_held_why)); $(get capacity_tls.tls.certificates_issued) certificates issued in $(get capacity_tls.tls.issue_s) s | | $(verdict "$tls_of_plain" ">=" 80) |
| server: agents held at 1 s with a Pi's health values in every batch (7 + 3 file systems), --insecure | (measured) | kept pace: $(get capacity_pi.agents_kept_pace); of those with ingest p99 ≤ 1 s: $(get capacity_pi.agents_held) (first not held: $(get capacity_pi.first_not_held) — $(get capacity_pi.first_not_held_why)); stored = acked: $(get capacity_pi.stored_matches_acked); server CPU $(get capacity_pi.server_cpu_percent) % at the last step held | the six only, same run: kept pace $pace, held $held; server CPU $(get capacity.server_cpu_percent) % at its last step held | |
| server memory per connected agent | ≤ 64 KiB | $per_agent KiB (RSS $(mib "$(get capacity.server_rss_kib)") MiB at $pace agents) | | $(verdict "$per_agent" "<=" 64) |
| command round trip p99, $(get commands.agents) agents | ≤ 5 ms | ping p99 $p99 ms (p50 $(get commands.ping.p50_ms)), true p99 $true_p99 ms (p50 $(get commands.true.p50_ms)); monitorctl process p50 $(get commands.monitorctl_ping.p50_ms) ms | | $(verdict "$p99" "<=" 5) |
| fan-out to $(get commands.agents) agents, last result back | ≤ 500 ms | median $(get commands.fanout.median_ms) ms, max $fan ms ($(get commands.fanout.runs) runs, every agent ok: $([[ $(get commands.fanout.ok_min) == "$(get commands.agents)" ]] && echo yes || echo no)) | | $(verdict "$fan" "<=" 500) |
| reconnection storm after a server restart, TLS | (measured) | $(storm tls) | --insecure, same run: $(storm insecure) | |
| command round trip across replicas p99, $(get replicas_commands.agents) agents on replica B, calls through A | ≤ 20 ms | ping p99 $(get replicas_commands.cross.ping.p99_ms) ms (p50 $(get replicas_commands.cross.ping.p50_ms)), true p99 $(get replicas_commands.cross.true.p99_ms) ms; fan-out through A: median $(get replicas_commands.cross.fanout.median_ms) ms, max $(get replicas_commands.cross.fanout.max_ms) ms | through B itself (local routing), same run: ping p99 $(get replicas_commands.ping.p99_ms) ms (p50 $(get replicas_commands.ping.p50_ms)), fan-out median $(get replicas_commands.fanout.median_ms) ms; across / local p99 $(get replicas_commands.cross_over_local_ping_p99) × | $(verdict "$(get replicas_commands.cross.ping.p99_ms)" "<=" 20) |
| agents held with 1 / 2 / 3 replicas on one PostgreSQL, 1 s | (measured; one box) | $(replicas_row 1s) | | |
| agents held with 1 / 2 / 3 replicas on one PostgreSQL, 5 s | (measured; one box) | $(replicas_row 5s) | | |


At $pace agents: $(get capacity.samples_per_s) samples stored/s, ingest→durable p50 $(get capacity.p50_ms) ms p99 $(get capacity.p99_ms) ms, server CPU $(get capacity.server_cpu_percent) % of a core ($(get capacity.server_threads) threads), load generator CPU $(get capacity.loadgen_cpu_percent) % of a core.
Raw results: $results
EOF
