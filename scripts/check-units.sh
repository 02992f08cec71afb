#!/usr/bin/env bash
# Checks the systemd units and the install scripts without a running systemd:
#   1. `systemd-analyze security --offline=true` scores every unit in
#      systemd/ at or below MAX_EXPOSURE (default 1.5; Debian's
#      prometheus-node-exporter unit scores 9.2);
#   2. `systemd-analyze verify` has nothing to say about them (ExecStart is
#      pointed at a stub binary, since verify insists that it exists);
#   3. scripts/install.sh and scripts/uninstall.sh, run into a DESTDIR with
#      stub binaries, put every file in place (the server's user and group
#      too), never overwrite the operator's settings, and remove what they
#      should (keeping data unless --purge);
#   4. every value install.sh writes into a settings file (--join,
#      --server-url, --hostname, --tls-name) is read back exactly by
#      systemd's own parser, and hostile values (quotes, '&', '|', '$',
#      newlines, bad schemes, forged tokens...) are refused with exit code 2
#      before anything is written.
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

# make_token HOSTNAME URL: a join token in monitor::join's text form (version
# 1, a secret, an expiry, the hostname, the URL, a stand-in CA, no operator
# keys), for install.sh to check and read the hostname from.
make_token() {
    local host=$1 url=$2
    {
        printf '\x01'
        head -c 16 /dev/urandom
        printf '\x00\x00\x01\x9a\x00\x00\x00\x00'
        printf "\\x$(printf %02x "${#host}")%s" "$host"
        printf "\\x00\\x$(printf %02x "${#url}")%s" "$url"
        printf '\x00\x03CA!\x00'
    } | base64 -w0 | tr '+/' '-_' | tr -d '=' | sed 's/^/monitor-join-1./'
}

# systemd_env FILE KEY: KEY's value as systemd reads FILE. The environment.d
# generator parses with the same code as EnvironmentFile= (load_env_file);
# it also expands $VAR, which no value install.sh accepts contains.
env_generator=/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator
[[ -x $env_generator ]] || fail "$env_generator not found (it comes with systemd)"
systemd_env() {
    local dir
    dir=$(mktemp -d "$work/envd.XXXX")
    mkdir "$dir/environment.d"
    cp "$1" "$dir/environment.d/monitor.conf"
    env -i XDG_CONFIG_HOME="$dir" "$env_generator" | sed -n "s/^$2=//p"
}

# A staging root with an /etc/passwd, so install.sh makes the server's user
# and group there with systemd-sysusers --root.
mkdir -p "$root/etc"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

token1=$(make_token pi-kitchen https://monitor.lan:50051)
DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --server --from "$from" --prefix "$prefix" \
    --join "$token1" --server-url 192.0.2.10:50051 --tls-name monitor.lan --tls-name 192.0.2.10 \
    >"$work/install1.log" 2>&1 ||
    fail "install.sh --agent --server: $(cat "$work/install1.log")"

for path in "$prefix/bin/monitor-agent" "$prefix/bin/monitor-server" "$prefix/bin/monitorctl"; do
    assert_file "$path"
    assert_mode "$path" 755
done
for path in /etc/systemd/system/monitor-agent.service /etc/systemd/system/monitor-server.service \
    /etc/default/monitor-server /etc/monitor/commands.allow /etc/sysusers.d/monitor-server.conf; do
    assert_file "$path"
    assert_mode "$path" 644
done
# It holds the join token.
assert_file /etc/default/monitor-agent
assert_mode /etc/default/monitor-agent 600
assert_file "$prefix/share/doc/monitor/deploy.md"
grep -q "^Documentation=file://$prefix/share/doc/monitor/deploy.md$" "$root/etc/systemd/system/monitor-agent.service" ||
    fail "install: monitor-agent.service Documentation= not pointed at the installed doc"
grep -qx "ExecStart=$prefix/bin/monitor-agent" "$root/etc/systemd/system/monitor-agent.service" ||
    fail "install: monitor-agent.service ExecStart= not pointed at --prefix $prefix"
grep -q "systemctl enable --now monitor-agent" "$work/install1.log" ||
    fail "install: does not tell the user to run systemctl enable --now monitor-agent"
grep -q "monitorctl enrol HOSTNAME" "$work/install1.log" ||
    fail "install --server: does not tell the user how to make a join token"
pass "install.sh puts binaries, units, settings and the allowlist in place"

# The server's user and group: monitor-server, primary group monitor.
monitor_gid=$(awk -F: '$1 == "monitor" { print $3 }' "$root/etc/group")
[[ -n $monitor_gid ]] || fail "install --server: no group monitor in DESTDIR/etc/group"
[[ $(awk -F: '$1 == "monitor-server" { print $4 }' "$root/etc/passwd") == "$monitor_gid" ]] ||
    fail "install --server: no user monitor-server with primary group monitor: $(cat "$root/etc/passwd")"
pass "install.sh --server makes the group monitor and the user monitor-server in it"

# Every value given comes back exactly as systemd reads the settings files.
# expect_env FILE KEY VALUE
expect_env() {
    local got
    got=$(systemd_env "$root$1" "$2")
    [[ $got == "$3" ]] || fail "install: systemd reads $2 from $1 as '$got', expected '$3'"
}
expect_env /etc/default/monitor-agent MONITOR_JOIN "$token1"
expect_env /etc/default/monitor-agent MONITOR_SERVER https://192.0.2.10:50051
expect_env /etc/default/monitor-agent MONITOR_LOG info
expect_env /etc/default/monitor-server MONITOR_TLS_NAMES "monitor.lan,192.0.2.10"
expect_env /etc/default/monitor-server MONITOR_LISTEN 0.0.0.0:50051
[[ $(grep -c '^MONITOR_JOIN=' "$root/etc/default/monitor-agent") == 1 ]] ||
    fail "install: MONITOR_JOIN is set more than once"
pass "install.sh writes --join, --server-url and --tls-name so that systemd reads them back exactly"

# The installed units, with the rewritten paths, still pass both checks.
for unit in "${units[@]}"; do
    check_security "$root/etc/systemd/system/$unit.service"
    check_verify "$root/etc/systemd/system/$unit.service"
done

# A second run upgrades binaries, keeps the operator's settings and the
# allowlist, and sets only the values it is given (a new token: re-enrol).
printf 'MONITOR_SERVER="https://edited:50051"\nMONITOR_JOIN="%s"\nMONITOR_INTERVAL=2\n' "$token1" \
    >"$root/etc/default/monitor-agent"
echo "edited = /bin/true" >"$root/etc/monitor/commands.allow"
printf '#!/bin/sh\necho new\n' >"$from/monitor-agent"
token2=$(make_token pi-kitchen "")
DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --from "$from" --prefix "$prefix" \
    --join "$token2" --hostname pi-kitchen >"$work/install2.log" 2>&1 ||
    fail "install.sh second run: $(cat "$work/install2.log")"
expect_env /etc/default/monitor-agent MONITOR_JOIN "$token2"
expect_env /etc/default/monitor-agent MONITOR_SERVER https://edited:50051
expect_env /etc/default/monitor-agent MONITOR_INTERVAL 2
expect_env /etc/default/monitor-agent MONITOR_HOSTNAME pi-kitchen
[[ $(grep -c '^MONITOR_JOIN=' "$root/etc/default/monitor-agent") == 1 ]] ||
    fail "install: a second --join left two MONITOR_JOIN lines"
[[ $(cat "$root/etc/monitor/commands.allow") == "edited = /bin/true" ]] ||
    fail "install: overwrote an existing /etc/monitor/commands.allow"
grep -q "echo new" "$root$prefix/bin/monitor-agent" || fail "install: second run did not replace the binary"
pass "install.sh run again replaces binaries, keeps existing settings and sets only the given values"

# An agent settings file from before TLS: its http:// URL is warned about,
# and replaced (once) when --server-url is given.
printf 'MONITOR_SERVER=http://old:50051\nMONITOR_LOG=debug\n' >"$root/etc/default/monitor-agent"
DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --from "$from" --prefix "$prefix" \
    >"$work/install3.log" 2>&1 || fail "install.sh third run: $(cat "$work/install3.log")"
grep -q "warning: /etc/default/monitor-agent has MONITOR_SERVER=http://old:50051" "$work/install3.log" ||
    fail "install.sh does not warn about an http:// MONITOR_SERVER: $(cat "$work/install3.log")"
DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --from "$from" --prefix "$prefix" \
    --server-url https://new:50051 --join "$token2" >"$work/install4.log" 2>&1 ||
    fail "install.sh fourth run: $(cat "$work/install4.log")"
expect_env /etc/default/monitor-agent MONITOR_SERVER https://new:50051
expect_env /etc/default/monitor-agent MONITOR_JOIN "$token2"
expect_env /etc/default/monitor-agent MONITOR_LOG debug
[[ $(grep -c '^MONITOR_SERVER=' "$root/etc/default/monitor-agent") == 1 ]] ||
    fail "install: --server-url left two MONITOR_SERVER lines"
! grep -q "warning" "$work/install4.log" || fail "install.sh warned after the URL was replaced: $(cat "$work/install4.log")"
pass "install.sh upgrades a settings file from before TLS (http:// warned about, replaced by --server-url)"

# Bad input is refused with a message naming it.
if DESTDIR=$root "$repo_dir/scripts/install.sh" --from "$from" >/dev/null 2>"$work/err.log"; then
    fail "install.sh with neither --agent nor --server succeeded"
fi
if DESTDIR=$root "$repo_dir/scripts/install.sh" --agent --from "$work/nope" >/dev/null 2>"$work/err.log"; then
    fail "install.sh with a missing --from directory succeeded"
fi
grep -q "$work/nope" "$work/err.log" || fail "install.sh: error does not name the missing directory"

# Hostile values: each is refused with exit code 2 and a message naming the
# flag, and nothing under the staging root changes (no file rewritten, no
# stray file: an '&' or '|' once reached sed's replacement).
snapshot() { (cd "$root" && find . -printf '%p %s %m\n' | sort && find . -type f -exec md5sum {} + | sort); }
before=$(snapshot)
# refused FLAG VALUE [MORE ARGS...]
refused() {
    local flag=$1 value=$2 status=0
    shift 2
    DESTDIR=$root "$repo_dir/scripts/install.sh" "$@" --from "$from" --prefix "$prefix" "$flag" "$value" \
        >"$work/hostile.out" 2>"$work/hostile.err" || status=$?
    [[ $status == 2 ]] ||
        fail "install.sh $flag $(printf '%q' "$value"): exit code $status, expected 2: $(cat "$work/hostile.err")"
    grep -q -- "$flag" "$work/hostile.err" ||
        fail "install.sh $flag $(printf '%q' "$value"): the message does not name $flag: $(cat "$work/hostile.err")"
    [[ $(snapshot) == "$before" ]] ||
        fail "install.sh $flag $(printf '%q' "$value") changed the staging root"
}
nl=$'\n'
for url in 'https://a&b:50051' 'https://a|touch /tmp/x:1' 'https://host:50051/$(id)' 'ftp://host:21' \
    'https://host:50051"' "https://host:50051${nl}MONITOR_ALLOW_ANY_COMMAND=1" 'https://ho st:1' \
    "https://host:1'" 'https://host:99999' 'https://host:1;reboot' 'https://host:1#x' \
    'https://`id`:1' 'https://host\:1' 'https://user@host:1' "https://host$(printf '\t'):1" ''; do
    refused --server-url "$url" --agent
done
for token in 'monitor-join-1.abc"def' 'monitor-join-1.abc def' "monitor-join-1.abc${nl}MONITOR_X=1" \
    'monitor-join-1.a$b' 'monitor-join-2.abcd' 'abcd' 'monitor-join-1.' 'monitor-join-1.abcde' \
    "monitor-join-1.$(printf 'A%.0s' $(seq 16400))" "$(make_token 'bad host' https://x:1)" \
    "$token2\"" "$token2 x" "$token2${nl}MONITOR_ALLOW_ANY_COMMAND=1" "$token2&x" "$token2|x"; do
    refused --join "$token" --agent
done
refused --join "$(make_token pi-other https://x:1)" --agent --hostname pi-kitchen
for name in 'a b' 'pi;reboot' '-rf' 'pi"x' "pi${nl}x" 'pi$x' "$(printf 'a%.0s' $(seq 254))"; do
    refused --hostname "$name" --agent
done
for name in 'a b' 'mon&lan' 'mon|lan' 'mon,lan' '"x"' "x${nl}y"; do
    refused --tls-name "$name" --server
done
for prefix_bad in 'relative' '/opt/a|b' '/opt/a&b' '/opt/a b'; do
    refused --prefix "$prefix_bad" --agent
done
refused --join "$token2" --server
pass "install.sh refuses bad arguments and hostile values (exit 2, nothing written)"

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
