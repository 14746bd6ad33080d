#!/bin/bash
# Builds outrigger's release binary with profile-guided optimization (PGO): an instrumented
# build serves a training load on loopback, and the profile it writes steers the final build
# (which code is hot, how it is laid out, what is inlined). The result is target/pgo/outrigger.
#
#   benches/pgo-build.sh                      # about 5 minutes on 2 cores
#   cargo run -p outrigger-benches --release -- compare --outrigger target/pgo/outrigger
#
# Needs: the rustup component llvm-tools (llvm-profdata matching rustc's LLVM; installed here
# if missing), wrk and h2load (Debian: wrk, nghttp2-client), and nginx (Debian) as the
# training upstream. Loopback only; every process it starts is stopped by PID.
#
# The training load is the request path users run: HTTP/1.1 keep-alive at 50 connections and
# at one, 16 KiB responses, HTTP/2 (10 connections x 10 streams), each with the access log
# off and on. Failure paths are not trained: they stay laid out as cold code.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${PGO_WORK:-$ROOT/target/pgo-work}
OUT=$ROOT/target/pgo
SECS=${PGO_SECS:-6}

for tool in wrk h2load nginx curl python3; do
  command -v "$tool" > /dev/null || { echo "pgo-build: $tool is missing (apt-get install wrk nghttp2-client nginx curl python3)" >&2; exit 1; }
done
HOST=$(rustc -vV | awk '/^host:/{print $2}')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
  echo "pgo-build: installing the rustup component llvm-tools (for llvm-profdata)" >&2
  rustup component add llvm-tools
fi

rm -rf "$WORK/profiles"
mkdir -p "$WORK/profiles" "$WORK/www/bytes" "$OUT"
head -c 16384 /dev/zero | tr '\0' x > "$WORK/www/bytes/16384"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UP=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done; }
trap cleanup EXIT

cat > "$WORK/nginx.conf" << EOF
worker_processes 1;
daemon off;
master_process off;
pid $WORK/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp;
  server {
    listen 127.0.0.1:$UP;
    location = / { return 200 "ok"; }
    location /bytes/ { root $WORK/www; default_type application/octet-stream; }
  }
}
EOF
mkdir -p "$WORK/tmp" "$WORK/logs"
nginx -c "$WORK/nginx.conf" -p "$WORK" &
PIDS+=($!)

for log in false true; do
  cat > "$WORK/train-$log.yaml" << EOF
listeners:
  - {name: inbound, address: 127.0.0.1:$PROXY}
admin: {address: 127.0.0.1:$ADMIN}
upstreams:
  app:
    endpoints: [127.0.0.1:$UP]
routes:
  - {name: default, match: {path_prefix: /}, upstream: app}
telemetry:
  logs: {level: warn, access_log: $log}
EOF
done

echo "pgo-build: 1/3 instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$WORK/profiles" CARGO_TARGET_DIR="$WORK/target-gen" \
  cargo build --release -p outrigger --manifest-path "$ROOT/Cargo.toml"
# Build scripts and proc macros were instrumented too and wrote profiles while compiling;
# only the proxy's own run is training.
rm -f "$WORK"/profiles/*

echo "pgo-build: 2/3 training" >&2
for log in false true; do
  "$WORK/target-gen/release/outrigger" run --workers 1 -c "$WORK/train-$log.yaml" > /dev/null 2> "$WORK/train-$log.err" &
  PID=$!
  PIDS+=($PID)
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$PROXY/" && break; sleep 0.1; done
  wrk -t1 -c50 -d"${SECS}s" "http://127.0.0.1:$PROXY/" > /dev/null
  wrk -t1 -c1 -d2s "http://127.0.0.1:$PROXY/" > /dev/null
  wrk -t1 -c50 -d2s "http://127.0.0.1:$PROXY/bytes/16384" > /dev/null
  h2load -c10 -m10 -n 60000 "http://127.0.0.1:$PROXY/" > /dev/null
  # A clean exit writes the profile.
  kill -TERM "$PID"
  wait "$PID"
done
ls "$WORK"/profiles/*.profraw > /dev/null
"$PROFDATA" merge -o "$WORK/outrigger.profdata" "$WORK"/profiles/*.profraw

echo "pgo-build: 3/3 optimized build" >&2
RUSTFLAGS="-Cprofile-use=$WORK/outrigger.profdata" CARGO_TARGET_DIR="$WORK/target-use" \
  cargo build --release -p outrigger --manifest-path "$ROOT/Cargo.toml"
cp "$WORK/target-use/release/outrigger" "$OUT/outrigger"
echo "pgo-build: $OUT/outrigger"
