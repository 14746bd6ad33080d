#!/usr/bin/env bash
# Builds the runtime stage of deploy/docker/Dockerfile around a static binary built here (no
# base image can be pulled on this machine: the stage is `FROM scratch`), runs it the way
# Kubernetes would (read-only root, non-root user, no capabilities) and checks it from
# outside: /readyz, /metrics, and one request proxied to an upstream named by DNS.
# usage: deploy/docker/test-image.sh STATIC_BINARY
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
name=outrigger-image-test-$$
image=localhost/outrigger:test-$$
cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  podman rmi -f "$image" >/dev/null 2>&1 || true
  [ -n "${upstream_pid:-}" ] && kill "$upstream_pid" 2>/dev/null || true
  [ -n "${dns_pid:-}" ] && kill "$dns_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# This VM's runtime settings (../shared/CONVENTIONS.md): runc, cgroupfs, no default ulimits.
cat > "$work/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF=$work/containers.conf

file "$bin" | grep -q "static" || { echo "not a static binary: $(file "$bin")"; exit 1; }

# The runtime stage exactly as the Dockerfile has it, fed the layout rootfs.sh makes.
mkdir -p "$work/context"
"$here/rootfs.sh" "$bin" "$repo/crates/outrigger-config/src/builtin.yaml" "$work/context/rootfs"
sed -n '/^FROM scratch AS runtime/,$p' "$here/Dockerfile" \
  | sed 's|^COPY --from=build /rootfs/ /|COPY rootfs/ /|' > "$work/context/Containerfile"
grep -q '^COPY rootfs/ /' "$work/context/Containerfile" || { echo "the Dockerfile's runtime stage changed shape"; exit 1; }
podman build -q -f "$work/context/Containerfile" -t "$image" "$work/context" >/dev/null

size=$(podman image inspect --format '{{.Size}}' "$image")
user=$(podman image inspect --format '{{.Config.User}}' "$image")
echo "image: $image, $((size / 1024 / 1024)) MiB ($size bytes), user $user"
[ "$user" = "65532:65532" ] || { echo "the image must run as 65532:65532"; exit 1; }

# Ports chosen by the OS, then released for the container (host network).
read -r up_port proxy_port admin_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
# A DNS server on loopback that knows only app.demo.svc.cluster.local: the container's
# resolv.conf points at it with the search domain a pod in namespace "demo" would have.
dns_ip=127.0.0.153
python3 "$here/fake-dns.py" "$dns_ip" demo.svc.cluster.local 127.0.0.1 > "$work/dns.log" 2>&1 &
dns_pid=$!
for _ in $(seq 1 100); do grep -q ready "$work/dns.log" && break; sleep 0.1; done
grep -q ready "$work/dns.log" || { echo "the test DNS server did not start:"; cat "$work/dns.log"; exit 1; }

mkdir -p "$work/www/hello"
echo "hello from the upstream" > "$work/www/hello/index.html"
python3 -m http.server "$up_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
upstream_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$up_port/hello/" >/dev/null 2>&1 && break
  sleep 0.1
done
cat > "$work/outrigger.yaml" <<CFG
listeners:
  - { name: inbound, address: 127.0.0.1:$proxy_port }
admin: { address: 127.0.0.1:$admin_port }
upstreams:
  app:
    endpoints: ["app:$up_port"]   # a Kubernetes-style short name: search list + DNS
routes:
  - { name: default, match: { path_prefix: / }, upstream: app, timeout: 5s }
CFG

podman run -d --name "$name" --runtime runc --network host --read-only \
  --cap-drop ALL --security-opt no-new-privileges \
  --dns "$dns_ip" --dns-search demo.svc.cluster.local --dns-option ndots:5 \
  -v "$work/outrigger.yaml:/etc/outrigger/outrigger.yaml:ro" "$image" >/dev/null

ready=""
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then ready=yes; break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "/readyz never answered 200"; podman logs "$name"; exit 1
fi
echo "/readyz: $(curl -fsS "http://127.0.0.1:$admin_port/readyz")"
curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -q '^outrigger_ready 1' \
  || { echo "/metrics lacks outrigger_ready 1"; exit 1; }
echo "/metrics: $(curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -c '^outrigger_') outrigger_* samples"
body=$(curl -fsS "http://127.0.0.1:$proxy_port/hello/")
[ "$body" = "hello from the upstream" ] || { echo "proxied request got: $body"; podman logs "$name"; exit 1; }
echo "proxied: GET /hello/ -> $body (upstream 'app' resolved by DNS: $(grep -c answered "$work/dns.log") answer(s))"
grep -q 'asked app.demo.svc.cluster.local type 1: answered' "$work/dns.log" \
  || { echo "the name was not resolved through the DNS server:"; cat "$work/dns.log"; exit 1; }
# The access line is written once the response has been sent: wait for it.
logged=""
for _ in $(seq 1 100); do
  logs=$(podman logs "$name" 2>&1)
  if grep -q '"kind":"access"' <<<"$logs"; then logged=yes; break; fi
  sleep 0.1
done
[ -n "$logged" ] || { echo "no access line"; tail -5 <<<"$logs"; exit 1; }

# Nothing but the binary and its config in the image: its files as built, not a container's
# (a running container also has podman's /etc/hosts, /etc/passwd and mount points).
mnt=$(podman image mount "$image")
files=$(cd "$mnt" && find . -type f | sort | tr '\n' ' ')
podman image unmount "$image" >/dev/null
[ "$files" = "./etc/outrigger/outrigger.yaml ./outrigger " ] || { echo "unexpected files in the image: $files"; exit 1; }
echo "image files: $files"

# SIGTERM drains and exits 0.
podman stop -t 30 "$name" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { echo "exit code $code after SIGTERM"; podman logs "$name" | tail -5; exit 1; }
echo "image test passed: read-only, user 65532, $((size / 1024 / 1024)) MiB"
