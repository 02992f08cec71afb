#!/usr/bin/env bash
# Removes what scripts/install.sh put in place: stops and disables the units,
# removes binaries, units and the installed doc.
#
# Like `apt remove`, it keeps the operator's settings (/etc/default/monitor-*,
# /etc/monitor) and the state: the server's database and TLS directory (its
# CA: without it every agent must enrol again) in /var/lib/monitor-server,
# the agent's identity in /var/lib/monitor-agent, unless --purge is given, so
# a reinstall picks up where it left off. Like a Debian package it never
# deletes the user monitor-server or the group monitor (files elsewhere may
# still carry their ids); it says how. With DESTDIR= it works on a staged
# tree and runs no systemctl.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/uninstall.sh [--agent] [--server] [--purge] [--prefix DIR]

  --agent          remove monitor-agent
  --server         remove monitor-server and monitorctl
                   (neither flag: both)
  --purge          also delete settings, the allowlist and stored data
                   (the server's database and CA, the agent's identity)
  --prefix DIR     the --prefix given to install.sh (default /usr/local)
  -h, --help       this text

Environment:
  DESTDIR          work on this staged tree instead of / (no systemctl)
EOF
}

want_agent=0
want_server=0
purge=0
prefix=/usr/local

die() {
    echo "uninstall.sh: $*" >&2
    exit 1
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --agent) want_agent=1 ;;
        --server) want_server=1 ;;
        --purge) purge=1 ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done

if [[ $want_agent == 0 && $want_server == 0 ]]; then
    want_agent=1
    want_server=1
fi
[[ $prefix == /* ]] || die "--prefix: expected an absolute path, got '$prefix'"

destdir=${DESTDIR:-}
destdir=${destdir%/}
bin_dir="$prefix/bin"
doc_dir="$prefix/share/doc/monitor"
live=0
if [[ -z $destdir && -d /run/systemd/system ]]; then
    live=1
fi

remove() {
    local path
    for path in "$@"; do
        if [[ -e $destdir$path || -L $destdir$path ]]; then
            rm -rf -- "$destdir$path"
            echo "  removed $path"
        fi
    done
}

keep() {
    local path
    for path in "$@"; do
        if [[ -e $destdir$path || -L $destdir$path ]]; then
            echo "  kept    $path (--purge deletes it)"
        fi
    done
}

# stop_unit NAME: disable and stop a live unit; a unit that was never
# loaded is not an error.
stop_unit() {
    if [[ $live == 1 ]] && systemctl cat "$1.service" >/dev/null 2>&1; then
        systemctl disable --now "$1.service" || true
        echo "  stopped and disabled $1.service"
    fi
}

echo "Uninstalling from ${destdir:-/} (prefix $prefix)"

if [[ $want_agent == 1 ]]; then
    stop_unit monitor-agent
    remove "$bin_dir/monitor-agent" /etc/systemd/system/monitor-agent.service
    # DynamicUser= keeps state (identity.pem, the spool) under
    # /var/lib/private with a symlink.
    agent_data=(/etc/default/monitor-agent /etc/monitor /var/lib/monitor-agent /var/lib/private/monitor-agent)
    if [[ $purge == 1 ]]; then remove "${agent_data[@]}"; else keep "${agent_data[@]}"; fi
fi

if [[ $want_server == 1 ]]; then
    stop_unit monitor-server
    remove "$bin_dir/monitor-server" "$bin_dir/monitorctl" /etc/systemd/system/monitor-server.service \
        /etc/sysusers.d/monitor-server.conf
    # /var/lib/private/monitor-server: left by an install from before the
    # unit had a static user (DynamicUser=).
    server_data=(/etc/default/monitor-server /var/lib/monitor-server /var/lib/private/monitor-server)
    if [[ $purge == 1 ]]; then remove "${server_data[@]}"; else keep "${server_data[@]}"; fi
    if grep -q '^monitor-server:' "$destdir/etc/passwd" 2>/dev/null; then
        echo "  kept    the user monitor-server and the group monitor (userdel monitor-server; groupdel monitor)"
    fi
fi

# The doc is shared: remove it once neither daemon is left.
if [[ ! -e $destdir$bin_dir/monitor-agent && ! -e $destdir$bin_dir/monitor-server ]]; then
    remove "$doc_dir"
fi

if [[ $live == 1 ]]; then
    systemctl daemon-reload
    systemctl reset-failed monitor-agent.service monitor-server.service 2>/dev/null || true
    echo "  ran systemctl daemon-reload"
fi
