#!/usr/bin/env bash
# Installs monitor-agent and/or monitor-server (with monitorctl) as systemd
# services: binaries, hardened units, settings files and an example command
# allowlist.
#
# Never overwrites an existing settings file or allowlist (they are the
# operator's), so running it again upgrades binaries and units only. With
# DESTDIR= it stages everything under that directory and touches nothing
# else (no systemctl): that is how scripts/check-units.sh tests it.
#
# Typical use on a Raspberry Pi, after cross-building on a workstation:
#   rsync -a scripts systemd target/aarch64-unknown-linux-gnu/release/monitor-agent pi:monitor/
#   ssh pi sudo monitor/scripts/install.sh --agent --from monitor --server-url http://server:50051
#   ssh pi sudo systemctl enable --now monitor-agent
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install.sh [--agent] [--server] [options]

What to install (at least one):
  --agent             monitor-agent, its unit, /etc/default/monitor-agent and
                      /etc/monitor/commands.allow
  --server            monitor-server and monitorctl, its unit and
                      /etc/default/monitor-server

Options:
  --from DIR          directory holding the built binaries
                      (default: target/<TRIPLE>/release with --target, else
                      target/release of this checkout)
  --target TRIPLE     take binaries from target/TRIPLE/release
  --prefix DIR        where binaries go under bin/ (default /usr/local)
  --server-url URL    MONITOR_SERVER for a newly created /etc/default/monitor-agent
  -h, --help          this text

Environment:
  DESTDIR             stage under this directory instead of / (no systemctl)
EOF
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)
unit_src="$repo_dir/systemd"

want_agent=0
want_server=0
from=""
target=""
prefix=/usr/local
server_url=""

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --agent) want_agent=1 ;;
        --server) want_server=1 ;;
        --from) from=${2:?--from needs a directory}; shift ;;
        --target) target=${2:?--target needs a target triple}; shift ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --server-url) server_url=${2:?--server-url needs a URL}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done

[[ $want_agent == 1 || $want_server == 1 ]] || { usage >&2; die "say --agent, --server or both"; }
[[ $prefix == /* ]] || die "--prefix: expected an absolute path, got '$prefix'"
if [[ -n $server_url && ! $server_url =~ ^http://[^[:space:]/]+(:[0-9]+)?/?$ ]]; then
    die "--server-url: expected a URL like http://server:50051, got '$server_url'"
fi
[[ -d $unit_src ]] || die "unit files not found in '$unit_src' (copy systemd/ next to scripts/)"

if [[ -z $from ]]; then
    if [[ -n $target ]]; then
        from="$repo_dir/target/$target/release"
    else
        from="$repo_dir/target/release"
    fi
fi
[[ -d $from ]] || die "--from: no such directory '$from' (build first: cargo build --release -p monitor-agent, or -p monitor-server -p monitorctl)"

destdir=${DESTDIR:-}
# Strip a trailing slash so "$destdir/etc" never has a double slash.
destdir=${destdir%/}
bin_dir="$prefix/bin"
doc_dir="$prefix/share/doc/monitor"

# install_file MODE SOURCE DEST: creates parents, replaces DEST atomically.
install_file() {
    install -D -m "$1" "$2" "$destdir$3"
    echo "  installed $3"
}

# install_config SOURCE DEST: like install_file with mode 0644, but keeps an
# existing DEST (the operator's settings) and says so.
install_config() {
    if [[ -e $destdir$2 ]]; then
        echo "  kept      $2 (exists; compare with $1)"
        return 1
    fi
    install -D -m 0644 "$1" "$destdir$2"
    echo "  installed $2"
}

# install_unit NAME: the unit with ExecStart= and Documentation= pointed at
# --prefix.
install_unit() {
    local tmp
    tmp=$(mktemp)
    sed -e "s|/usr/local/bin/|$bin_dir/|g" \
        -e "s|/usr/local/share/doc/monitor/|$doc_dir/|g" \
        "$unit_src/$1.service" >"$tmp"
    install -D -m 0644 "$tmp" "$destdir/etc/systemd/system/$1.service"
    rm -f "$tmp"
    echo "  installed /etc/systemd/system/$1.service"
}

# check_binary NAME: the binary exists and, when installing for real, runs
# on this machine (catches an x86_64 build copied to a Pi).
check_binary() {
    local bin="$from/$1"
    [[ -f $bin && -x $bin ]] || die "binary '$bin' not found or not executable (build it first, or pass --from)"
    if [[ -z $destdir ]] && ! "$bin" --help >/dev/null 2>&1; then
        echo "install.sh: warning: '$bin --help' failed: built for another architecture?" >&2
    fi
}

[[ $want_agent == 0 ]] || check_binary monitor-agent
if [[ $want_server == 1 ]]; then
    check_binary monitor-server
    check_binary monitorctl
fi

echo "Installing into ${destdir:-/} (prefix $prefix)"

if [[ $want_agent == 1 ]]; then
    install_file 0755 "$from/monitor-agent" "$bin_dir/monitor-agent"
    install_unit monitor-agent
    if install_config "$unit_src/monitor-agent.env" /etc/default/monitor-agent && [[ -n $server_url ]]; then
        sed -i "s|^MONITOR_SERVER=.*|MONITOR_SERVER=$server_url|" "$destdir/etc/default/monitor-agent"
        echo "            with MONITOR_SERVER=$server_url"
    fi
    install_config "$unit_src/commands.allow" /etc/monitor/commands.allow || true
fi

if [[ $want_server == 1 ]]; then
    install_file 0755 "$from/monitor-server" "$bin_dir/monitor-server"
    install_file 0755 "$from/monitorctl" "$bin_dir/monitorctl"
    install_unit monitor-server
    install_config "$unit_src/monitor-server.env" /etc/default/monitor-server || true
fi

if [[ -f $repo_dir/docs/deploy.md ]]; then
    install_file 0644 "$repo_dir/docs/deploy.md" "$doc_dir/deploy.md"
fi

# /run/systemd/system exists exactly when systemd is the running init
# (sd_booted(3)); in a container build or a DESTDIR staging there is
# nothing to reload.
if [[ -z $destdir && -d /run/systemd/system ]]; then
    systemctl daemon-reload
    echo "  ran systemctl daemon-reload"
fi

echo
echo "Next:"
if [[ $want_server == 1 ]]; then
    echo "  edit /etc/default/monitor-server if needed, then"
    echo "  systemctl enable --now monitor-server"
    echo "  monitorctl hosts"
fi
if [[ $want_agent == 1 ]]; then
    echo "  check MONITOR_SERVER in /etc/default/monitor-agent, then"
    echo "  systemctl enable --now monitor-agent"
    echo "  journalctl -u monitor-agent -f"
fi
