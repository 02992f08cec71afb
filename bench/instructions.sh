#!/usr/bin/env bash
# User-space instructions per tick of the agent, counted by valgrind's
# callgrind: a count that, unlike CPU time, does not move with the machine's
# load (this VM has no hardware counters: `perf stat -e instructions` is
# "not supported"), so main and a branch can be compared on a busy box.
#
# The agent runs collecting only (`--stdout` into /dev/null) under
# callgrind; the counters are zeroed after a warm-up (start-up, the first
# ticks and the start-up page release are not counted), dumped after the
# measuring window, and every figure is divided by the number of calls of
# `Collector::sample` in the window (the ticks). The warm-up covers the
# start-up page release (two checks 5 s apart; later checks are once a
# minute and cost a few thousand instructions when one falls in the window). Prints key=value lines:
# the ticks, the whole process's instructions per tick, `Collector::sample`
# inclusive per tick, then the top functions by inclusive count per tick.
# Needs a release agent with symbols:
#   CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
#       cargo build --release -p monitor-agent
#
# Usage: bench/instructions.sh AGENT_BIN [--interval 1] [--warmup-secs 15]
#            [--secs 20] [--top 25] [--out DIR] [-- AGENT_ARGS...]
# Skips (exit 0, one line naming valgrind) when valgrind is not installed.
set -euo pipefail

agent_bin=${1:?agent binary}
shift
interval=1
warmup=15
secs=20
top=25
out=""
agent_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --interval) interval=${2:?}; shift ;;
        --warmup-secs) warmup=${2:?}; shift ;;
        --secs) secs=${2:?}; shift ;;
        --top) top=${2:?}; shift ;;
        --out) out=${2:?}; shift ;;
        --) shift; agent_args=("$@"); break ;;
        *) echo "instructions: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

for tool in valgrind callgrind_control python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "instructions: SKIP: $tool not installed (apt-get install -y valgrind)"
        exit 0
    fi
done

own_out=""
if [[ -z "$out" ]]; then
    out=$(mktemp -d /tmp/instructions.XXXXXX)
    own_out=$out
fi
mkdir -p "$out"

pid=""
cleanup() {
    local status=$?
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    [[ -n "$own_out" ]] && rm -rf "$own_out"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "instructions: FAIL: $*" >&2; exit 1; }

valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.%p" \
    "$agent_bin" --stdout --interval "$interval" --hostname instructions-bench \
    --log warn "${agent_args[@]}" >/dev/null 2>"$out/agent.log" &
pid=$!

# Wait for callgrind's control file (the agent is up under valgrind).
deadline=$((SECONDS + 60))
until callgrind_control "$pid" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "the agent exited: $(tail -5 "$out/agent.log")"
    ((SECONDS < deadline)) || fail "callgrind did not come up within 60 s"
    sleep 0.2
done
sleep "$warmup"
callgrind_control -z "$pid" >/dev/null || fail "callgrind_control -z"
sleep "$secs"
callgrind_control -d "$pid" >/dev/null || fail "callgrind_control -d"

# The dump is the newest callgrind.out.PID.N file.
dump=""
deadline=$((SECONDS + 30))
while [[ -z "$dump" ]]; do
    dump=$(find "$out" -name "callgrind.out.$pid.*" -size +0 | sort -V | tail -1)
    ((SECONDS < deadline)) || fail "no dump from callgrind_control -d"
    [[ -z "$dump" ]] && sleep 0.2
done

python3 - "$dump" "$top" <<'PY'
import re, sys
from collections import defaultdict

path, top = sys.argv[1], int(sys.argv[2])
names = {}
def name_of(spec):
    # "(12) name" defines id 12; "(12)" refers to it.
    m = re.match(r"\((\d+)\)(?: (.*))?", spec)
    if not m:
        return spec
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), spec)

self_cost = defaultdict(int)
incl_calls = defaultdict(int)   # inclusive cost of calls made, per callee
calls_to = defaultdict(int)
total = 0
fn = None
callee = None
pending_calls = None
with open(path) as f:
    for line in f:
        line = line.rstrip("\n")
        if line.startswith("fn="):
            fn = name_of(line[3:])
        elif line.startswith("cfn="):
            callee = name_of(line[4:])
        elif line.startswith(("cfi=", "cfl=", "fl=", "fi=", "fe=", "ob=", "cob=")):
            if line.startswith(("cfi=", "cfl=", "fl=", "fi=", "fe=")):
                pass
        elif line.startswith("calls="):
            pending_calls = int(line[6:].split()[0])
        elif line and (line[0].isdigit() or line[0] in "+-*"):
            parts = line.split()
            cost = int(parts[1]) if len(parts) > 1 else 0
            if pending_calls is not None:
                # The line after calls= is the inclusive cost of that call.
                calls_to[callee] += pending_calls
                if callee != fn:
                    incl_calls[(fn, callee)] += cost
                pending_calls = None
            else:
                self_cost[fn] += cost
                total += cost
        elif line.startswith("summary:") or line.startswith("totals:"):
            pass

# Inclusive = self + inclusive cost of the calls it makes (recursion
# excluded above, so a recursive function is not counted twice).
inclusive = defaultdict(int)
for f_, c in self_cost.items():
    inclusive[f_] += c
for (caller, _), c in incl_calls.items():
    inclusive[caller] += c

sample = [n for n in calls_to if re.search(r"Collector::sample$|Collector::sample\b", n)
          and "sample_" not in n]
ticks = sum(calls_to[n] for n in sample)
if ticks == 0:
    print("instructions: FAIL: no call of Collector::sample in the window "
          "(a release agent with symbols?)", file=sys.stderr)
    sys.exit(1)
print(f"instructions.ticks={ticks}")
print(f"instructions.total_per_tick={total / ticks:.0f}")
print(f"instructions.collector_sample_per_tick={sum(inclusive[n] for n in sample) / ticks:.0f}")
def short(n):
    n = re.sub(r"::h[0-9a-f]{16}$", "", n)
    return n if len(n) <= 110 else n[:107] + "..."
print("# top functions, inclusive instructions per tick (self in brackets)")
for n, c in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{c / ticks:12.0f} [{self_cost.get(n, 0) / ticks:9.0f}]  {short(n)}")
PY
