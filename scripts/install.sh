#!/usr/bin/env bash
# Installs monitor-agent and/or monitor-server (with monitorctl) as systemd
# services: binaries, hardened units, settings files and an example command
# allowlist; for the server also the system user monitor-server and the group
# monitor (whose members may use the server's local operator credential).
#
# Never replaces an existing settings file or allowlist (they are the
# operator's); it only sets in them the values given on its command line
# (--join, --server-url, --hostname, --tls-name). So running it again
# upgrades binaries and units, and running it with a new --join re-enrols.
# Every value written into a settings file is checked first (a URL, a join
# token, a hostname, a DNS name or IP address, nothing else) and written in
# double quotes, so systemd's EnvironmentFile= reads back exactly that value;
# anything else is refused with exit code 2 before a file is touched.
# With DESTDIR= it stages everything under that directory and touches
# nothing else (no systemctl; the user and group go into DESTDIR/etc when it
# has an /etc/passwd): that is how scripts/check-units.sh tests it.
#
# Typical use on a Raspberry Pi, after cross-building on a workstation and
# `monitorctl enrol pi-kitchen` on the server:
#   rsync -a scripts systemd target/aarch64-unknown-linux-gnu/release/monitor-agent pi:monitor/
#   ssh pi sudo monitor/scripts/install.sh --agent --from monitor --join monitor-join-1.AQ...
#   ssh pi sudo systemctl enable --now monitor-agent
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install.sh [--agent] [--server] [options]

What to install (at least one):
  --agent             monitor-agent, its unit, /etc/default/monitor-agent and
                      /etc/monitor/commands.allow
  --server            monitor-server and monitorctl, its unit,
                      /etc/default/monitor-server, the user monitor-server and
                      the group monitor

Options:
  --from DIR          directory holding the built binaries
                      (default: target/<TRIPLE>/release with --target, else
                      target/release of this checkout)
  --target TRIPLE     take binaries from target/TRIPLE/release
  --prefix DIR        where binaries go under bin/ (default /usr/local)
  --join TOKEN        agent: the join token from `monitorctl enrol HOSTNAME`
                      on the server (MONITOR_JOIN)
  --server-url URL    agent: the server's agent listener, e.g.
                      https://monitor.lan:50051 (MONITOR_SERVER; https:// is
                      assumed without a scheme; default: the token's URL)
  --hostname NAME     agent: the name it reports and was enrolled as
                      (MONITOR_HOSTNAME; default: the kernel hostname)
  --tls-name NAME     server: a DNS name or IP address agents reach it by, for
                      its certificate (repeatable; MONITOR_TLS_NAMES; the
                      first is the host in the URL join tokens carry)
  -h, --help          this text

Environment:
  DESTDIR             stage under this directory instead of / (no systemctl)

Exit codes: 0 installed, 1 failed, 2 a bad argument or value.
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
join=""
hostname=""
tls_names=()

die() {
    echo "install.sh: $*" >&2
    exit 1
}
# A bad argument or value: nothing has been changed yet.
refuse() {
    echo "install.sh: $*" >&2
    exit 2
}
warn() {
    echo "install.sh: warning: $*" >&2
}

# ---------------------------------------------------------------------------
# Values that go into files. Each is checked against the one form it may
# have; the character sets leave out white space, quotes, backslashes, '$',
# '`', '&', '|', ';', '#' and control characters, so a value can neither end
# its line or its quotes early nor mean anything to sed, a shell or systemd.
# ---------------------------------------------------------------------------

# The same rule as monitor::wire::valid_hostname, and no leading '-' (it
# would read as an option to monitorctl enrol).
hostname_re='^[A-Za-z0-9._][A-Za-z0-9._-]{0,252}$'
# A DNS name (as the server's --tls-name takes it) or an IPv6 address.
dns_re='^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$'
ipv6_re='^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$'
# scheme://host[:port][/], host a DNS name, an IPv4 address or [IPv6].
url_re='^(https?)://([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:([0-9]{1,5}))?/?$'
# monitor-join-1. and the payload in unpadded URL-safe base64 (src/join.rs).
token_re='^monitor-join-1\.[A-Za-z0-9_-]+$'
token_prefix=monitor-join-1.
# monitor::join::MAX_TOKEN_CHARS.
max_token_chars=16384

# check_url VALUE: prints the URL (https:// added when it has no scheme) or
# refuses it.
check_url() {
    local url=$1
    [[ $url == *://* ]] || url="https://$url"
    if [[ ! $url =~ $url_re ]]; then
        refuse "--server-url: expected a URL like https://monitor.lan:50051 (https:// or http://, a host name or IP address, an optional port, nothing else), got '$(printf '%q' "$1")'"
    fi
    local port=${BASH_REMATCH[5]:-}
    if [[ -n $port ]] && ((10#$port < 1 || 10#$port > 65535)); then
        refuse "--server-url: port $port is not between 1 and 65535"
    fi
    echo "${url%/}"
}

check_hostname() {
    [[ $2 =~ $hostname_re ]] ||
        refuse "$1: expected a hostname of letters, digits, '.', '-' and '_' (at most 253, not starting with '-'), got '$(printf '%q' "$2")'"
}

check_tls_name() {
    [[ $1 =~ $dns_re || $1 =~ $ipv6_re ]] ||
        refuse "--tls-name: expected a DNS name or an IP address, got '$(printf '%q' "$1")'"
}

# check_token VALUE: refuses anything but the text form of a join token.
check_token() {
    local payload=${1#"$token_prefix"}
    if [[ ${#1} -gt $max_token_chars || ! $1 =~ $token_re || $((${#payload} % 4)) == 1 ]]; then
        refuse "--join: expected a join token as 'monitorctl enrol HOSTNAME' prints it (monitor-join-1. then URL-safe base64), got '$(printf '%q' "${1:0:80}")'$([[ ${#1} -gt 80 ]] && echo ...)"
    fi
}

# token_hostname TOKEN: prints the hostname a (checked) token enrols, read
# from its payload (version, 16-byte secret, 8-byte expiry, length, name:
# src/join.rs), or nothing when the payload is too short to hold one.
token_hostname() {
    local payload=${1#"$token_prefix"} bytes name="" i
    # 376 characters decode to 282 bytes: the header and the longest name.
    payload=${payload:0:376}
    payload=$(tr '_-' '/+' <<<"$payload")
    while ((${#payload} % 4)); do payload+="="; done
    read -r -a bytes <<<"$(base64 -d <<<"$payload" 2>/dev/null | od -An -v -tu1 | tr '\n' ' ')" || true
    [[ ${#bytes[@]} -gt 26 && ${bytes[0]} == 1 ]] || return 0
    local len=${bytes[25]}
    [[ ${#bytes[@]} -ge $((26 + len)) ]] || return 0
    for ((i = 26; i < 26 + len; i++)); do
        name+=$(printf "\\x$(printf %02x "${bytes[$i]}")")
    done
    if [[ $name =~ $hostname_re ]]; then
        echo "$name"
    fi
}

# need_value FLAG COUNT: the flag has its value.
need_value() {
    [[ $2 -ge 2 ]] || refuse "$1 needs a value (try --help)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --agent) want_agent=1 ;;
        --server) want_server=1 ;;
        --from) need_value "$1" $#; from=$2; shift ;;
        --target) need_value "$1" $#; target=$2; shift ;;
        --prefix) need_value "$1" $#; prefix=$2; shift ;;
        --server-url) need_value "$1" $#; server_url=$(check_url "$2"); shift ;;
        --join) need_value "$1" $#; check_token "$2"; join=$2; shift ;;
        --hostname) need_value "$1" $#; check_hostname --hostname "$2"; hostname=$2; shift ;;
        --tls-name) need_value "$1" $#; check_tls_name "$2"; tls_names+=("$2"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; refuse "unknown argument '$(printf '%q' "$1")'" ;;
    esac
    shift
done

[[ $want_agent == 1 || $want_server == 1 ]] || { usage >&2; refuse "say --agent, --server or both"; }
# The prefix is written into the units (ExecStart=, Documentation=) by sed.
[[ $prefix =~ ^/[A-Za-z0-9._/+-]*$ ]] ||
    refuse "--prefix: expected an absolute path of letters, digits, '.', '_', '-', '+' and '/', got '$(printf '%q' "$prefix")'"
prefix=${prefix%/}
[[ -n $prefix ]] || prefix=/
if [[ $want_agent == 0 && (-n $join || -n $server_url || -n $hostname) ]]; then
    refuse "--join, --server-url and --hostname are for --agent"
fi
if [[ $want_server == 0 && ${#tls_names[@]} -gt 0 ]]; then
    refuse "--tls-name is for --server"
fi
if [[ -n $join ]]; then
    token_host=$(token_hostname "$join")
    [[ -n $token_host ]] || refuse "--join: this join token holds no usable hostname (copied incompletely?)"
    if [[ -n $hostname && $hostname != "$token_host" ]]; then
        refuse "--join: the token enrols '$token_host' but --hostname is '$hostname': the server would refuse it (make a token with 'monitorctl enrol $hostname')"
    fi
fi
if [[ $server_url == http://* ]]; then
    warn "--server-url $server_url is plain text: the agent refuses it unless MONITOR_INSECURE=1 is also set in /etc/default/monitor-agent (and the server runs with MONITOR_INSECURE=1)"
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
bin_dir="${prefix%/}/bin"
doc_dir="${prefix%/}/share/doc/monitor"

# install_file MODE SOURCE DEST: creates parents, replaces DEST atomically.
install_file() {
    install -D -m "$1" "$2" "$destdir$3"
    echo "  installed $3"
}

# install_config MODE SOURCE DEST: like install_file, but keeps an existing
# DEST (the operator's settings) and says so.
install_config() {
    if [[ -e $destdir$3 ]]; then
        echo "  kept      $3 (exists; compare with $2)"
        return 0
    fi
    install -D -m "$1" "$2" "$destdir$3"
    echo "  installed $3"
}

# set_env FILE KEY VALUE: sets KEY="VALUE" in the settings file FILE (under
# DESTDIR): replaces an active KEY= line, else goes after the commented
# example `#KEY=`, else at the end. VALUE was checked above, so in double
# quotes systemd reads it back unchanged. The file keeps its mode and owner;
# it is replaced atomically.
set_env() {
    local file=$destdir$1 key=$2 value=$3 tmp
    tmp=$(mktemp "$file.XXXXXX")
    # The key and line go through the environment: awk -v would interpret
    # backslashes.
    if ! KEY=$key LINE="$key=\"$value\"" awk '
        BEGIN { key = ENVIRON["KEY"]; line = ENVIRON["LINE"] }
        FNR == NR { if (index($0, key "=") == 1) active = 1; next }
        index($0, key "=") == 1 { if (!done) print line; done = 1; next }
        { print }
        !active && !done && index($0, "#" key "=") == 1 { print line; done = 1 }
        END { if (!done) print line }
    ' "$file" "$file" >"$tmp"; then
        rm -f "$tmp"
        die "cannot update $1"
    fi
    chmod --reference="$file" "$tmp"
    chown --reference="$file" "$tmp"
    mv -f "$tmp" "$file"
    echo "            with $key set"
}

# env_value FILE KEY: the value of an active KEY= line (quotes removed), if any.
env_value() {
    [[ -f $destdir$1 ]] || return 0
    sed -n "s/^$2=\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" "$destdir$1" | tail -n 1
}

# install_unit NAME: the unit with ExecStart= and Documentation= pointed at
# --prefix (checked above: no character sed or systemd would read).
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
        warn "'$bin --help' failed: built for another architecture?"
    fi
}

# make_server_user: the group monitor and the user monitor-server, from the
# sysusers.d file the unit's User=/Group= rely on. systemd-sysusers creates
# only what is missing (an existing group monitor is used as it is).
make_server_user() {
    install_file 0644 "$unit_src/monitor-server.sysusers" /etc/sysusers.d/monitor-server.conf
    if [[ -z $destdir ]]; then
        systemd-sysusers /etc/sysusers.d/monitor-server.conf ||
            die "systemd-sysusers could not create the user monitor-server and the group monitor"
        echo "  ran systemd-sysusers (group monitor, user monitor-server)"
    elif [[ -f $destdir/etc/passwd ]]; then
        systemd-sysusers --root="$destdir" "$destdir/etc/sysusers.d/monitor-server.conf" ||
            die "systemd-sysusers --root=$destdir failed"
        echo "  ran systemd-sysusers --root=$destdir (group monitor, user monitor-server)"
    else
        echo "  skipped   the user and group ($destdir has no /etc/passwd; systemd-sysusers makes them at boot)"
    fi
}

[[ $want_agent == 0 ]] || check_binary monitor-agent
if [[ $want_server == 1 ]]; then
    check_binary monitor-server
    check_binary monitorctl
    [[ -n $destdir && ! -f $destdir/etc/passwd ]] || command -v systemd-sysusers >/dev/null ||
        die "systemd-sysusers not found (it comes with systemd, which the units need)"
fi

echo "Installing into ${destdir:-/} (prefix $prefix)"

if [[ $want_agent == 1 ]]; then
    install_file 0755 "$from/monitor-agent" "$bin_dir/monitor-agent"
    install_unit monitor-agent
    # 0600: it may hold a join token, which until it is used is this box's
    # way in.
    install_config 0600 "$unit_src/monitor-agent.env" /etc/default/monitor-agent
    [[ -z $join ]] || set_env /etc/default/monitor-agent MONITOR_JOIN "$join"
    [[ -z $server_url ]] || set_env /etc/default/monitor-agent MONITOR_SERVER "$server_url"
    [[ -z $hostname ]] || set_env /etc/default/monitor-agent MONITOR_HOSTNAME "$hostname"
    configured_url=$(env_value /etc/default/monitor-agent MONITOR_SERVER)
    if [[ $configured_url == http://* ]] && ! grep -qE '^MONITOR_INSECURE="?(1|true|yes)' "$destdir/etc/default/monitor-agent"; then
        warn "/etc/default/monitor-agent has MONITOR_SERVER=$configured_url: the agent now talks TLS and refuses http:// (set an https:// URL with --server-url, or remove the line to use the join token's)"
    fi
    if [[ -n $join && -z $hostname && -z $destdir ]]; then
        reported=$(env_value /etc/default/monitor-agent MONITOR_HOSTNAME)
        [[ -n $reported ]] || reported=$(cat /proc/sys/kernel/hostname)
        if [[ $reported != "$token_host" ]]; then
            warn "the join token enrols '$token_host' but this agent reports as '$reported': the server will refuse it (run again with --hostname $token_host, or make a token with 'monitorctl enrol $reported')"
        fi
    fi
    install_config 0644 "$unit_src/commands.allow" /etc/monitor/commands.allow
fi

if [[ $want_server == 1 ]]; then
    make_server_user
    install_file 0755 "$from/monitor-server" "$bin_dir/monitor-server"
    install_file 0755 "$from/monitorctl" "$bin_dir/monitorctl"
    install_unit monitor-server
    install_config 0644 "$unit_src/monitor-server.env" /etc/default/monitor-server
    if [[ ${#tls_names[@]} -gt 0 ]]; then
        # The server adds the address admin.cred names (127.0.0.1) itself.
        set_env /etc/default/monitor-server MONITOR_TLS_NAMES "$(IFS=,; echo "${tls_names[*]}")"
    fi
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
    echo "  edit /etc/default/monitor-server if needed (MONITOR_TLS_NAMES: the names agents use), then"
    echo "  systemctl enable --now monitor-server"
    echo "  monitorctl hosts                      # as root, or as a member of the group monitor"
    echo "  monitorctl enrol HOSTNAME             # prints a join token for the agent on HOSTNAME"
    echo "  (on that box: install.sh --agent --join TOKEN; usermod -aG monitor NAME lets NAME run monitorctl)"
fi
if [[ $want_agent == 1 ]]; then
    if [[ -z $join ]] && ! grep -q '^MONITOR_JOIN=' "$destdir/etc/default/monitor-agent"; then
        echo "  on the server: monitorctl enrol $(cat /proc/sys/kernel/hostname 2>/dev/null || echo HOSTNAME), then here:"
        echo "  install.sh --agent --join TOKEN (or set MONITOR_JOIN in /etc/default/monitor-agent)"
    fi
    echo "  systemctl enable --now monitor-agent"
    echo "  journalctl -u monitor-agent -f"
fi
