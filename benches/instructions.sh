#!/bin/bash
# User-space instructions per request, counted by valgrind's callgrind: the one figure on
# this shared, noisy machine that repeats to well under 1 %, so a change worth 1-3 % of the
# proxy's own work can be seen (CPU-time pairs from ab-pair.sh drift by 3-5 % run to run).
# It counts the proxy's instructions only (not the kernel's) and says nothing about cache
# misses or syscalls: use it to compare two builds of the user-space path, and ab-pair.sh or
# the harness for what a user would see.
#
# The proxy runs under callgrind (about 50x slower) with counting off; after a warm-up the
# counting starts, a fixed load runs, and the counters are dumped. HTTP/1.1 uses one wrk
# connection, so every request takes the same path and batching cannot move the figure
# (at 50 connections it moves by 2-3 %); HTTP/2 uses h2load with a fixed request count.
#
#   benches/instructions.sh 18081 h1 -- target/release/outrigger run --workers 1 -c cfg.yaml
#   benches/instructions.sh 18081 h2 -- /tmp/outrigger-before run --workers 1 -c cfg.yaml
#   benches/instructions.sh 18091 h1 -- haproxy -f haproxy.cfg      (any proxy, for scale)
#
# `h1c50` drives 50 connections for 5 s instead: the figure moves by 1-2 % from run to run,
# but allocations and wake-ups cost what they cost under load (glibc's per-thread cache runs
# dry with 50 requests in flight, so an allocation removed is worth more here than at c1).
# With CACHE_SIM=1 callgrind also simulates the caches and branch predictors (32 KiB L1s
# like this host's) and prints their misses per request: instruction-cache misses, not
# instructions, are what separates outrigger from HAProxy now (docs/performance.md).
#
# usage: instructions.sh PORT h1|h1c50|h2 -- COMMAND...   (the command must listen on PORT)
# Prints `requests=N instructions_per_request=M profile=FILE`; open FILE with
# `callgrind_annotate --inclusive=yes FILE` to see where they go.
set -u
PORT=$1; KIND=$2; shift 3
DIR=${INSTRUCTIONS_DIR:-/tmp}
OUT="$DIR/instructions.$$"
SIM=()
if [ "${CACHE_SIM:-0}" = 1 ]; then SIM=(--cache-sim=yes --branch-sim=yes); fi
taskset -c 1 valgrind --tool=callgrind "${SIM[@]}" --instr-atstart=no --callgrind-out-file="$OUT.%p" \
    "$@" > "$OUT.log" 2> "$OUT.err" &
PID=$!
for _ in $(seq 200); do curl -s -o /dev/null "127.0.0.1:$PORT/" && break; sleep 0.1; done
case "$KIND" in
  h1)
    taskset -c 0 wrk -t1 -c1 -d2s "http://127.0.0.1:$PORT/" > /dev/null
    callgrind_control -i on "$PID" > /dev/null 2>&1
    req=$(taskset -c 0 wrk -t1 -c1 -d5s "http://127.0.0.1:$PORT/" | awk '/requests in/{print $1}')
    ;;
  h1c50)
    taskset -c 0 wrk -t1 -c50 -d2s "http://127.0.0.1:$PORT/" > /dev/null
    callgrind_control -i on "$PID" > /dev/null 2>&1
    req=$(taskset -c 0 wrk -t1 -c50 -d5s "http://127.0.0.1:$PORT/" | awk '/requests in/{print $1}')
    ;;
  h2)
    taskset -c 0 h2load -c10 -m10 -n 5000 "http://127.0.0.1:$PORT/" > /dev/null
    callgrind_control -i on "$PID" > /dev/null 2>&1
    req=$(taskset -c 0 h2load -c10 -m10 -n 20000 "http://127.0.0.1:$PORT/" | awk '/^requests:/{print $8}')
    ;;
  *) echo "KIND must be h1, h1c50 or h2" >&2; kill "$PID"; exit 2 ;;
esac
callgrind_control -d "$PID" > /dev/null 2>&1
for _ in $(seq 50); do ls "$OUT.$PID".* > /dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5
file=$(ls "$OUT.$PID".* | head -1)
ir=$(awk '/^summary:/{print $2}' "$file")
echo "requests=$req instructions_per_request=$((ir / (req > 0 ? req : 1))) profile=$file"
if [ ${#SIM[@]} -gt 0 ]; then
  # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim
  awk -v r="${req:-1}" '/^events:/{n=split($0,e," ")} /^summary:/{for(i=2;i<=NF;i++) if(e[i]~/^(I1mr|D1mr|D1mw|Bcm|Bim)$/) printf "%s_per_request=%.1f ", e[i], $i/r; print ""}' "$file"
fi
kill "$PID"; wait "$PID" 2>/dev/null
