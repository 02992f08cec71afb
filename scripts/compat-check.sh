#!/usr/bin/env bash
# Builds monitor-agent, monitor-server and monitorctl from an older commit
# (REV, default: the last commit before the health fields entered
# proto/monitor.proto) in a temporary worktree with its own target
# directory, then runs tests/compat.rs against them: an old agent reporting
# to this tree's server, and this tree's agent to the old server.
#
# Usage: scripts/compat-check.sh [REV]
# The build of the old tree takes as long as a fresh debug build; the
# worktree and its target directory are removed on exit.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
rev=${1:-$(git log --reverse --format=%H -S 'health_samples' -- proto/monitor.proto | head -n 1)^}
old=$(mktemp -d "${TMPDIR:-/tmp}/monitor-compat-XXXXXX")
cleanup() {
    git worktree remove --force "$old/tree" 2>/dev/null || true
    rm -rf "$old"
}
trap cleanup EXIT
echo "compat-check: building $(git rev-parse --short "$rev") in $old" >&2
git worktree add --detach "$old/tree" "$rev" >/dev/null
(cd "$old/tree" && CARGO_TARGET_DIR="$old/target" cargo build -q \
    -p monitor-agent -p monitor-server -p monitorctl)
MONITOR_COMPAT_OLD_BIN_DIR="$old/target/debug" cargo test -q --test compat -- --nocapture
