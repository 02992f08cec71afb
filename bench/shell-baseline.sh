#!/usr/bin/env bash
# The course handout's approach, kept only as the baseline the agent is
# measured against (never use it for monitoring): every tick runs `free`,
# `top -bn1`, `iostat -d -k 1 2` and `ifstat -i IF 1 1` as subprocesses and
# picks the six numbers out of their text. iostat and ifstat each need one
# second of their own to measure a rate, so they run side by side and a tick
# takes about one second: the same one-second interval as the others.
#
# Prints one line per sample: UNIX_MS cpu_percent mem_percent
# disk_read_kbps disk_write_kbps net_in_kbps net_out_kbps.
# bench/run.sh counts the lines inside its window and charges the CPU of
# this shell and of every process it waited for (utime+stime+cutime+cstime)
# to the samples.
#
# Usage: bench/shell-baseline.sh INTERFACE [COUNT]   (default: until killed)
set -uo pipefail

iface=${1:?usage: shell-baseline.sh INTERFACE [COUNT]}
count=${2:-0}
tmp=$(mktemp -d /tmp/shell-baseline.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 0' TERM INT

n=0
while [[ $count -eq 0 || $n -lt $count ]]; do
    iostat -d -k 1 2 >"$tmp/iostat" 2>/dev/null &
    ifstat -i "$iface" 1 1 >"$tmp/ifstat" 2>/dev/null &
    mem=$(free | awk '/^Mem:/ { printf "%.1f", $3 / $2 * 100 }')
    # "%Cpu(s): 1.6 us, ... 97.6 id, ..." (or "0.0 ni,100.0 id,"): the
    # number before "id,".
    cpu=$(top -bn1 | awk '/^%Cpu/ { for (i = 2; i <= NF; i++) if ($i ~ /^id,?$/) { idle = $(i - 1); sub(/.*,/, "", idle) }
                                    printf "%.1f", 100 - idle }')
    wait
    # The second report of iostat is the rate over the last second; sum the
    # kB_read/s and kB_wrtn/s columns of every device in it.
    disk=$(awk '/^Device/ { report++; next }
                report == 2 && NF >= 4 { r += $3; w += $4 }
                END { printf "%.1f %.1f", r, w }' "$tmp/iostat")
    net=$(tail -n 1 "$tmp/ifstat" | awk '{ printf "%s %s", $1, $2 }')
    echo "$(date +%s%3N) $cpu $mem $disk $net"
    n=$((n + 1))
done
