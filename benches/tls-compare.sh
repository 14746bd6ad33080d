#!/bin/bash
# outrigger, nginx and HAProxy terminating TLS in front of the same plain upstream, on this
# machine: the same ECDSA P-256 certificate, TLS 1.3 (what wrk's OpenSSL negotiates with all
# three), one worker each, each proxy pinned to core 1 and wrk + the upstream to core 0.
# Two loads per proxy, alternated proxy by proxy ROUNDS times so drift hits all alike:
#
#   keepalive  wrk -c50 over keep-alive HTTPS: requests per CPU-second of the proxy process
#   handshake  wrk -c10 with `Connection: close`: every request is a new TCP connection and
#              a full TLS handshake; requests (= handshakes) per CPU-second
#
# CPU time is user + system of the proxy's processes from /proc/PID/stat (nginx: master and
# its one worker). Needs nginx, haproxy, wrk, openssl (Debian packages).
#
# usage: benches/tls-compare.sh OUTRIGGER_BINARY [SECS] [ROUNDS]
set -eu
BIN=$(realpath "$1"); SECS=${2:-8}; ROUNDS=${3:-3}
D=$(mktemp -d /tmp/tls-compare.XXXX)
UP=18290; OR=18291; NG=18292; HA=18293
trap 'kill $(jobs -p) 2>/dev/null; pkill -f "$D" 2>/dev/null; true' EXIT

# One CA, one ECDSA P-256 leaf for localhost and 127.0.0.1.
openssl ecparam -name prime256v1 -genkey -noout -out "$D/ca.key" 2>/dev/null
openssl req -x509 -new -key "$D/ca.key" -subj "/CN=bench CA" -days 2 -out "$D/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$D/ec.key" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$D/ec.key" -out "$D/tls.key"
openssl req -new -key "$D/tls.key" -subj "/CN=localhost" -out "$D/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$D/ext"
openssl x509 -req -in "$D/tls.csr" -CA "$D/ca.crt" -CAkey "$D/ca.key" -CAcreateserial \
  -days 2 -extfile "$D/ext" -out "$D/tls.crt" 2>/dev/null
cat "$D/tls.crt" "$D/tls.key" > "$D/haproxy.pem"

cat > "$D/upstream.conf" <<EOF
worker_processes 1; daemon off; pid $D/up.pid; error_log $D/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
EOF
cat > "$D/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $D/ng.pid; error_log $D/ng.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NG ssl; ssl_certificate $D/tls.crt; ssl_certificate_key $D/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat > "$D/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend tls
  bind 127.0.0.1:$HA ssl crt $D/haproxy.pem alpn h2,http/1.1
  default_backend app
backend app
  server up 127.0.0.1:$UP
EOF
cat > "$D/outrigger.yaml" <<EOF
listeners:
  - {name: inbound, address: 127.0.0.1:$OR, tls: {cert: $D/tls.crt, key: $D/tls.key}}
admin: {address: 127.0.0.1:18294}
upstreams:
  app: {endpoints: [127.0.0.1:$UP]}
routes:
  - {name: default, match: {path_prefix: /}, upstream: app}
telemetry: {logs: {access_log: false}}
EOF

taskset -c 0 nginx -c "$D/upstream.conf" -p "$D" &
sleep 0.3

# cpu_ticks PID...: user + system ticks of these processes, summed.
cpu_ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done | paste -sd+ | bc; }

# run NAME PORT COMMAND...: both loads against one freshly started proxy.
run() {
  local name=$1 port=$2; shift 2
  taskset -c 1 "$@" > "$D/$name.out" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$port/" && break; sleep 0.05; done
  local pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
  local ticks; ticks=$(getconf CLK_TCK)
  taskset -c 0 wrk -t1 -c50 -d1s "https://127.0.0.1:$port/" > /dev/null
  for load in keepalive handshake; do
    local args=(-t1 -c50 -d"${SECS}s")
    [ "$load" = handshake ] && args=(-t1 -c10 -d"${SECS}s" -H "Connection: close")
    local c0 c1 out req
    c0=$(cpu_ticks $pids)
    out=$(taskset -c 0 wrk "${args[@]}" "https://127.0.0.1:$port/")
    c1=$(cpu_ticks $pids)
    req=$(echo "$out" | awk '/requests in/{print $1}')
    local errs; errs=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
    echo "$name $load req=$req cpu_ticks=$((c1 - c0)) per_cpu_s=$((req * ticks / ((c1 - c0) > 0 ? (c1 - c0) : 1))) $errs"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for _ in $(seq "$ROUNDS"); do
  run outrigger $OR "$BIN" run --workers 1 -c "$D/outrigger.yaml"
  run nginx $NG nginx -c "$D/nginx.conf" -p "$D"
  run haproxy $HA haproxy -db -f "$D/haproxy.cfg"
done
