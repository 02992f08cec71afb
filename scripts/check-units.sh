#!/usr/bin/env bash
# Checks the systemd units and the install scripts without a running systemd:
#   1. `systemd-analyze security --offline=true` scores every unit in
#      systemd/ at or below MAX_EXPOSURE (default 1.5; Debian's
#      prometheus-node-exporter unit scores 9.2);
#   2. `systemd-analyze verify` has nothing to say about them (ExecStart is
#      pointed at a stub binary, since verify insists that it exists);
#   3. scripts/install.sh and scripts/uninstall.sh, run into a DESTDIR with
#      stub binaries, put every file in place, never overwrite the operator's
#      settings, and remove what they should (keeping data unless --purge).
# Exits non-zero on the first failure, with a message naming it.
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
max_exposure=${MAX_EXPOSURE:-1.5}
units=(monitor-agent monitor-server)

fail() {
    echo "check-units: FAIL: $*" >&2
    exit 1
}
pass() {
    echo "check-units: ok: $*"
}

if ! command -v systemd-analyze >/dev/null; then
    echo "check-units: installing systemd (for systemd-analyze)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# security_score UNIT_FILE: prints the overall exposure, e.g. 1.1.
security_score() {
    local out
    out=$(systemd-analyze security --offline=true --no-pager "$1" 2>&1) ||
        fail "systemd-analyze security $1: $out"
    sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out"
}

# check_security UNIT_FILE
check_security() {
    local score
    score=$(security_score "$1")
    [[ -n $score ]] || fail "no exposure level in systemd-analyze security output for $1"
    if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
        systemd-analyze security --offline=true --no-pager "$1" | grep '✗' >&2 || true
        fail "$1: exposure $score is above $max_exposure"
    fi
    pass "$(basename "$1"): security exposure $score (limit $max_exposure)"
}

# check_verify UNIT_FILE: verify a copy whose ExecStart= names a stub.
check_verify() {
    local name dir out
    name=$(basename "$1")
    dir=$(mktemp -d "$work/verify.XXXX")
    printf '#!/bin/sh\nexit 0\n' >"$dir/stub"
    chmod 0755 "$dir/stub"
    sed -E "s|^ExecStart=[^ ]+|ExecStart=$dir/stub|" "$1" >"$dir/$name"
    grep -q "^ExecStart=$dir/stub" "$dir/$name" || fail "$1: no ExecStart= line to check"
    if ! out=$(systemd-analyze verify "$dir/$name" 2>&1) || [[ -n $out ]]; then
        fail "systemd-analyze verify $1: $out"
    fi
    pass "$name: systemd-analyze verify is silent"
}

for unit in "${units[@]}"; do
    check_security "$repo_dir/systemd/$unit.service"
    check_verify "$repo_dir/systemd/$unit.service"
done

# --- install.sh / uninstall.sh into a DESTDIR ------------------------------

from="$work/bin"
mkdir -p "$from"
for bin in monitor-agent monitor-server monitorctl; do
    printf '#!/bin/sh\necho %s 0.0.0-stub\n' "$bin" >"$from/$bin"
    chmod 0755 "$from/$bin"
done
root="$work/root"
prefix=/opt/monitor

assert_file() { [[ -f $root$1 ]] || fail "install: $1 missing"; }
assert_absent() { [[ ! -e $root$1 ]] || fail "uninstall: $1 still there"; }
assert_mode() {
    local mode
    mode=$(stat -c %a "$root$1")
    [[ $mode == "$2" ]] || fail "install: $1 has mode $mode, expected $2"
}

DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --server --from "$from" \
    --prefix "$prefix" --server-url http://192.0.2.10:50051 >"$work/install1.log" ||
    fail "install.sh --agent --server: $(cat "$work/install1.log")"

for path in "$prefix/bin/monitor-agent" "$prefix/bin/monitor-server" "$prefix/bin/monitorctl"; do
    assert_file "$path"
    assert_mode "$path" 755
done
for path in /etc/systemd/system/monitor-agent.service /etc/systemd/system/monitor-server.service \
    /etc/default/monitor-agent /etc/default/monitor-server /etc/monitor/commands.allow; do
    assert_file "$path"
    assert_mode "$path" 644
done
assert_file "$prefix/share/doc/monitor/deploy.md"
grep -q "^Documentation=file://$prefix/share/doc/monitor/deploy.md$" "$root/etc/systemd/system/monitor-agent.service" ||
    fail "install: monitor-agent.service Documentation= not pointed at the installed doc"
grep -qx "ExecStart=$prefix/bin/monitor-agent" "$root/etc/systemd/system/monitor-agent.service" ||
    fail "install: monitor-agent.service ExecStart= not pointed at --prefix $prefix"
grep -qx "MONITOR_SERVER=http://192.0.2.10:50051" "$root/etc/default/monitor-agent" ||
    fail "install: --server-url not written to /etc/default/monitor-agent"
grep -q "systemctl enable --now monitor-agent" "$work/install1.log" ||
    fail "install: does not tell the user to run systemctl enable --now monitor-agent"
pass "install.sh puts binaries, units, settings and the allowlist in place"

# The installed units, with the rewritten paths, still pass both checks.
for unit in "${units[@]}"; do
    check_security "$root/etc/systemd/system/$unit.service"
    check_verify "$root/etc/systemd/system/$unit.service"
done

# A second run upgrades binaries but keeps the operator's settings.
echo "MONITOR_SERVER=http://edited:50051" >"$root/etc/default/monitor-agent"
echo "edited = /bin/true" >"$root/etc/monitor/commands.allow"
printf '#!/bin/sh\necho new\n' >"$from/monitor-agent"
DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --from "$from" --prefix "$prefix" \
    --server-url http://192.0.2.99:50051 >"$work/install2.log" ||
    fail "install.sh second run: $(cat "$work/install2.log")"
[[ $(cat "$root/etc/default/monitor-agent") == "MONITOR_SERVER=http://edited:50051" ]] ||
    fail "install: overwrote an existing /etc/default/monitor-agent"
[[ $(cat "$root/etc/monitor/commands.allow") == "edited = /bin/true" ]] ||
    fail "install: overwrote an existing /etc/monitor/commands.allow"
grep -q "echo new" "$root$prefix/bin/monitor-agent" || fail "install: second run did not replace the binary"
pass "install.sh run again replaces binaries and keeps existing settings"

# Bad input is refused with a message naming it.
if DESTDIR=$root "$repo_dir/scripts/install.sh" --from "$from" >/dev/null 2>"$work/err.log"; then
    fail "install.sh with neither --agent nor --server succeeded"
fi
if DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --from "$work/nope" >/dev/null 2>"$work/err.log"; then
    fail "install.sh with a missing --from directory succeeded"
fi
grep -q "$work/nope" "$work/err.log" || fail "install.sh: error does not name the missing directory"
pass "install.sh refuses bad arguments"

# uninstall keeps settings and data, --purge removes them.
mkdir -p "$root/var/lib/private/monitor-server" "$root/var/lib/private/monitor-agent"
echo db >"$root/var/lib/private/monitor-server/monitor.db"
ln -s private/monitor-server "$root/var/lib/monitor-server"
DESTDIR=$root "$repo_dir/scripts/uninstall.sh" --prefix "$prefix" >"$work/uninstall1.log" ||
    fail "uninstall.sh: $(cat "$work/uninstall1.log")"
for path in "$prefix/bin/monitor-agent" "$prefix/bin/monitor-server" "$prefix/bin/monitorctl" \
    /etc/systemd/system/monitor-agent.service /etc/systemd/system/monitor-server.service \
    "$prefix/share/doc/monitor"; do
    assert_absent "$path"
done
for path in /etc/default/monitor-agent /etc/default/monitor-server /etc/monitor/commands.allow \
    /var/lib/private/monitor-server/monitor.db; do
    assert_file "$path"
done
pass "uninstall.sh removes binaries and units, keeps settings and data"

DESTDIR=$root "$repo_dir/scripts/uninstall.sh" --purge --prefix "$prefix" >"$work/uninstall2.log" ||
    fail "uninstall.sh --purge: $(cat "$work/uninstall2.log")"
for path in /etc/default/monitor-agent /etc/default/monitor-server /etc/monitor \
    /var/lib/monitor-server /var/lib/private/monitor-server /var/lib/private/monitor-agent; do
    assert_absent "$path"
done
pass "uninstall.sh --purge removes settings and data"

echo "check-units: all checks passed"
