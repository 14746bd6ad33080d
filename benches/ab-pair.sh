#!/bin/bash
# One A/B sample: starts a proxy pinned to core 1, drives it with wrk on core 0 and prints
# the requests it served per CPU-second of its process (user + system time from
# /proc/PID/stat) and its RSS. Alternate two builds, pair by pair, so drift hits both alike:
#
#   for i in 1 2 3 4; do for b in /tmp/outrigger-before target/release/outrigger; do
#     echo "$b $(benches/ab-pair.sh 18081 50 6 / -- $b run --workers 1 -c cfg.yaml)"; done; done
#
# usage: ab-pair.sh PORT CONNS SECS PATH -- COMMAND...   (the command must listen on PORT)
set -u
PORT=$1; C=$2; S=$3; P=$4; shift 5
OUT=${AB_OUTPUT:-/tmp/ab-pair.out}
taskset -c 1 "$@" > "$OUT" 2> "$OUT.err" &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$PORT/" && break; sleep 0.05; done
taskset -c 0 wrk -t1 -c"$C" -d1s "http://127.0.0.1:$PORT$P" > /dev/null
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$PID/stat")
out=$(taskset -c 0 wrk -t1 -c"$C" -d"${S}s" "http://127.0.0.1:$PORT$P")
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$PID/stat")
req=$(echo "$out" | awk '/requests in/{print $1}')
rss=$(awk '/VmRSS/{print $2}' "/proc/$PID/status")
ticks=$(getconf CLK_TCK)
cpu=$((u1 - u0 + s1 - s0))
echo "req=$req user=$((u1 - u0)) sys=$((s1 - s0)) per_cpu_s=$((req * ticks / (cpu > 0 ? cpu : 1))) rss_kib=$rss"
kill "$PID"; wait "$PID" 2>/dev/null
