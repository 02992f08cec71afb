#!/usr/bin/env bash
# Mutation testing (cargo-mutants 27) on the modules where one wrong
# comparison loses samples or opens a hole: the /proc parsers and the rate
# logic, the command allowlist, the spool's record framing, the replay
# cache and the command gate, the wire validation, the signature, token and
# base64 checks, and the store's de-duplication. Every mutant must be caught
# by its crate's unit tests (`--lib`: one rustc call and one link per
# mutant; never the integration or end-to-end suites, whose binaries cargo
# would build again for every mutant). A mutant that no test can tell apart from the original is
# excluded by name, with its reason, in .cargo/mutants.toml.
#
# Usage: scripts/mutants.sh [GROUP...] [-- CARGO-MUTANTS-ARGS...]
#   GROUP: parsers allowlist agent-state wire server (default: all five)
#   e.g.   scripts/mutants.sh parsers -- --list
#          scripts/mutants.sh -- --in-diff <(git diff main)
#
# MUTANTS_JOBS: parallel jobs (default one per core, at most 4), each in
# its own disposable copy of the work tree under target/mutation-testing/
# with its own build directory, kept between runs (so only the first run
# builds the dependencies; a new job's starts as a copy of job 0's), never
# in the work tree itself. Results: target/mutation-testing/GROUP/shard-K/
# mutants.out/. The summary gives each group's median build and test
# seconds per mutant (where the time goes).
# Exits 0 when no mutant was missed, 1 when one was (each is listed), 2 on
# a usage or tool error. Needs cargo-mutants 27.x (`cargo install --locked
# cargo-mutants@27`; installed here when missing).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch="$repo_dir/target/mutation-testing"
# The tests of one mutant take a few seconds; a mutant that makes a loop
# endless is cut off after this long and counted as a timeout (caught).
test_timeout=${MUTANTS_TEST_TIMEOUT:-20}
# A caught mutant fails dozens of tests at once, and a backtrace for each
# panic (RUST_BACKTRACE=1 in the environment) costs symbolizing time that
# no one reads; the mutant's output in mutants.out still names each test.
export RUST_BACKTRACE=0

# Each group: the package whose files are mutated, the files, an optional
# filter on mutant names (empty: every mutant of those files), the tests
# that must catch them, and the unit tests it skips: the slow ones (0.3 to
# 1.5 s of each mutant's test phase) of modules that cannot see the
# group's mutants.
declare -A package files names tests skips unused_dev_deps
package[parsers]=monitor-agent
files[parsers]="agent/src/proc/*.rs agent/src/rates.rs"
tests[parsers]="--lib"
skips[parsers]="replay:: ticker::"

package[allowlist]=monitor-agent
files[allowlist]="agent/src/commands/policy.rs agent/src/commands/argspec.rs agent/src/commands/allowfile.rs"
tests[allowlist]="--lib"
skips[allowlist]="replay:: ticker::"

package[agent-state]=monitor-agent
files[agent-state]="agent/src/spool.rs agent/src/replay.rs agent/src/session/gate.rs"
tests[agent-state]="--lib"
skips[agent-state]="ticker::"

package[wire]=monitor
files[wire]="src/wire.rs src/signing.rs src/base64.rs src/command.rs src/join.rs"
# command.rs: the grant check and what may run unsigned, not the outcome
# names; join.rs: decoding a token, not making one.
names[wire]='^src/(wire|signing|base64)\.rs:|^src/command\.rs:.*\b(check_grant|runs_unsigned|check_argv|timeout_from_ms)\b|^src/join\.rs:.*\b(JoinToken::decode|Reader)\b'
tests[wire]="--lib"
# `cargo test --lib` builds a package's dev-dependencies too, and the root
# package's include the agent (for the end-to-end tests in tests/), which
# depends on `monitor`: every wire mutant would also rebuild the agent's
# library. Its unit tests cannot use the agent (that would be a second copy
# of `monitor`), so the group's copies of the tree drop that line of the
# root Cargo.toml for its run (and put it back after).
unused_dev_deps[wire]='monitor-agent = { path = "agent" }'

package[server]=monitor-server
files[server]="server/src/store/dedup.rs server/src/store/records.rs server/src/enrolment.rs server/src/tls/trust.rs"
# records.rs: only the join-token refusal; enrolment.rs: the signed-exec
# check, the name check and what a token refusal becomes; tls/trust.rs: who
# a certificate is (not the webpki calls it forwards).
names[server]='^server/src/store/dedup\.rs:|^server/src/store/records\.rs:.*\bJoinTokenRecord::refusal\b|^server/src/enrolment\.rs:.*\b(signed_by|checked_name|status_of_refusal)\b|^server/src/tls/trust\.rs:.*\b(Trust::(add|identify|revoke|sync|is_revoked|prune|len|is_empty)|verify_client_cert)\b'
tests[server]="--lib"
skips[server]="listener::"

all_groups=(parsers allowlist agent-state wire server)

groups=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *)
            if [ -z "${package[$1]+x}" ]; then
                echo "mutants.sh: unknown group '$1' (groups: ${all_groups[*]})" >&2
                exit 2
            fi
            groups+=("$1"); shift ;;
    esac
done
[ ${#groups[@]} -gt 0 ] || groups=("${all_groups[@]}")

if ! cargo mutants --version 2>/dev/null | grep -q '^cargo-mutants 27\.'; then
    echo "mutants.sh: installing cargo-mutants 27"
    cargo install --locked cargo-mutants@27
fi

# Parallel jobs: each is a disposable copy of the work tree with its own
# build directory, testing one round-robin shard of each group's mutants
# in place (cargo-mutants' own --jobs would copy the tree afresh and
# rebuild every dependency on each run).
# One job per core by default (at most 4): a mutant's build is mostly one
# rustc process, so two jobs keep two cores busy.
cores=$(nproc 2>/dev/null || echo 1)
[ "$cores" -le 4 ] || cores=4
jobs=${MUTANTS_JOBS:-$cores}
case "$jobs" in
    [1-9]) ;;
    *) echo "mutants.sh: MUTANTS_JOBS must be 1 to 9, got '$jobs'" >&2; exit 2 ;;
esac

# One run at a time: a second one would copy the tree afresh under the
# first one's mutants (and `--list` copies it too).
mkdir -p "$scratch"
exec 9>"$scratch/lock"
if ! flock -n 9; then
    echo "mutants.sh: another run is using $scratch; wait for it to end" >&2
    exit 2
fi

# Each copy holds every tracked or new (not ignored) file, all stamped
# with the time of the copy, so the first build of a run rebuilds the
# workspace's crates (not their dependencies). Kept times would be wrong:
# the last mutant of the previous run is reverted after its build, and a
# file given back its older time looks older than that mutated build,
# which cargo would then take as fresh (a baseline run against a mutant).
# Everything but the build directory is removed first, so a file deleted
# from the work tree (or left mutated by an interrupted run) is gone.
for ((k = 0; k < jobs; k++)); do
    tree="$scratch/tree-$k"
    mkdir -p "$tree"
    find "$tree" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
    (cd "$repo_dir" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -xpmf - -C "$tree"
    # A new job's build directory starts as a copy of job 0's: the
    # dependencies are then built once, not once per job (2.4 GB, a
    # minute to copy against 6 minutes of both cores to build). Only the
    # workspace's crates are rebuilt, as in every copy (times above).
    if [ "$k" -gt 0 ] && [ ! -d "$tree/target" ] && [ -d "$scratch/tree-0/target" ]; then
        cp -a --reflink=auto "$scratch/tree-0/target" "$tree/target"
    fi
done

# Median build and test seconds per mutant over a group's shards, from
# cargo-mutants' outcomes.json (where the time of a run goes); "-" without
# python3.
phase_medians() {
    local k files=()
    command -v python3 >/dev/null || { echo "build - test -"; return; }
    for ((k = 0; k < jobs; k++)); do files+=("$scratch/$1/shard-$k/mutants.out/outcomes.json"); done
    python3 - "${files[@]}" <<'PY'
import json, statistics, sys
times = {"Build": [], "Test": []}
for path in sys.argv[1:]:
    try:
        outcomes = json.load(open(path))["outcomes"]
    except (OSError, ValueError, KeyError):
        continue
    for outcome in outcomes:
        if outcome.get("scenario") == "Baseline":
            continue
        for phase in outcome.get("phase_results", []):
            if phase.get("phase") in times:
                times[phase["phase"]].append(phase["duration"])
med = lambda xs: f"{statistics.median(xs):.1f}s" if xs else "-"
print(f"build {med(times['Build'])} test {med(times['Test'])}")
PY
}

# Lines of one outcome list over a group's shards.
count() {
    local group=$1 kind=$2 n=0 k f
    for ((k = 0; k < jobs; k++)); do
        f="$scratch/$group/shard-$k/mutants.out/$kind.txt"
        [ -f "$f" ] && n=$((n + $(grep -c . "$f" || true)))
    done
    echo "$n"
}

start=$(date +%s)
summary=()
missed_any=0
for group in "${groups[@]}"; do
    args=(--in-place --package "${package[$group]}" --timeout "$test_timeout" --no-shuffle)
    for f in ${files[$group]}; do args+=(--file "$f"); done
    [ -z "${names[$group]:-}" ] || args+=(--re "${names[$group]}")
    # The test targets go to every cargo command, the build included:
    # after `--` they would reach only `cargo test`, and each mutant would
    # also build (and link) every other test binary of the package.
    for t in ${tests[$group]}; do args+=("--cargo-arg=$t"); done
    if [ -n "${skips[$group]:-}" ]; then
        args+=(--cargo-test-arg=--)
        for t in ${skips[$group]}; do args+=(--cargo-test-arg=--skip "--cargo-test-arg=$t"); done
    fi
    if [ -n "${unused_dev_deps[$group]:-}" ]; then
        for ((k = 0; k < jobs; k++)); do
            tree="$scratch/tree-$k"
            cp -p "$tree/Cargo.toml" "$tree/.Cargo.toml.kept"
            cp -p "$tree/Cargo.lock" "$tree/.Cargo.lock.kept"
            grep -vxF "${unused_dev_deps[$group]}" "$tree/.Cargo.toml.kept" > "$tree/Cargo.toml" || true
            if cmp -s "$tree/Cargo.toml" "$tree/.Cargo.toml.kept"; then
                echo "mutants.sh: $group: no line '${unused_dev_deps[$group]}' in Cargo.toml;" \
                    "its mutants rebuild that dev-dependency too" >&2
            fi
        done
    fi
    group_start=$(date +%s)
    echo "=== mutants.sh: $group (${package[$group]}: ${files[$group]}; tests: ${tests[$group]}; $jobs job(s))"
    pids=()
    for ((k = 0; k < jobs; k++)); do
        out="$scratch/$group/shard-$k"
        mkdir -p "$out"
        shard=()
        [ "$jobs" -eq 1 ] || shard=(--shard "$k/$jobs" --sharding round-robin)
        (cd "$scratch/tree-$k" && exec cargo mutants "${args[@]}" "${shard[@]}" \
            --dir "$scratch/tree-$k" --output "$out" "${extra[@]}") \
            > >(if [ "$jobs" -eq 1 ]; then cat; else sed -u "s/^/[$k] /"; fi) 2>&1 &
        pids+=($!)
    done
    for ((k = 0; k < jobs; k++)); do
        rc=0
        wait "${pids[$k]}" || rc=$?
        case "$rc" in
            0|2|3) ;; # clean, missed mutants, timeouts
            *)
                echo "mutants.sh: cargo mutants failed for $group, shard $k (exit $rc);" \
                    "see $scratch/$group/shard-$k/mutants.out/debug.log" >&2
                exit 2 ;;
        esac
    done
    if [ -n "${unused_dev_deps[$group]:-}" ]; then
        for ((k = 0; k < jobs; k++)); do
            mv "$scratch/tree-$k/.Cargo.toml.kept" "$scratch/tree-$k/Cargo.toml"
            mv "$scratch/tree-$k/.Cargo.lock.kept" "$scratch/tree-$k/Cargo.lock"
        done
    fi
    caught=$(count "$group" caught) missed=$(count "$group" missed)
    unviable=$(count "$group" unviable) timeout=$(count "$group" timeout)
    tried=$((caught + missed + unviable + timeout))
    summary+=("$(printf '%-12s tried %4d  caught %4d  missed %3d  unviable %3d  timeouts %2d  %5ds  (median per mutant: %s)' \
        "$group" "$tried" "$caught" "$missed" "$unviable" "$timeout" $(( $(date +%s) - group_start )) \
        "$(phase_medians "$group")")")
    if [ "$missed" -gt 0 ]; then
        missed_any=1
        cat "$scratch/$group"/shard-*/mutants.out/missed.txt | sort -t: -k1,1 -k2,2n | sed "s/^/    missed: /"
    fi
done

echo
echo "=== mutants.sh: summary ($(( $(date +%s) - start ))s, $jobs job(s); load average now $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%s\n' "${summary[@]}"
exit "$missed_any"
