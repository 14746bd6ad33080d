#!/usr/bin/env bash
# Checks everything under deploy/ offline, as CI does:
#   - the Prometheus rules: `promtool check rules`, and `promtool test rules` (every alert
#     fires when it should, and stays quiet on callers' errors and brief blips);
#   - the PrometheusRule manifest holds the same groups as the plain rules file, and the
#     Grafana dashboard is what make-dashboard.py writes (its queries run against a real
#     Prometheus in tests/tests/prometheus.rs);
#   - every alert's runbook exists;
#   - every Kubernetes manifest validates against the Kubernetes 1.37 schemas
#     (kubernetes-validate --strict; CRDs such as PodMonitor have no schema here and only warn);
#   - the configs the ConfigMaps carry pass `outrigger check --deny-warnings`.
# usage: deploy/check.sh OUTRIGGER_BINARY   (needs promtool, python3 with PyYAML, and
#        kubernetes-validate on PATH or in $KUBERNETES_VALIDATE)
set -euo pipefail
bin=$(realpath "$1")
kv=${KUBERNETES_VALIDATE:-kubernetes-validate}
# A path given relative to where we were called from still works after the cd below.
case "$kv" in */*) kv=$(realpath "$kv") ;; esac
cd "$(dirname "$0")"

echo "--- promtool"
promtool check rules prometheus/outrigger-rules.yaml
(cd prometheus && promtool test rules outrigger-rules.test.yaml)

echo "--- PrometheusRule matches the rules file"
python3 prometheus/make-prometheusrule.py --check

echo "--- Grafana dashboard is the generated one"
python3 grafana/make-dashboard.py --check

echo "--- runbooks"
missing=0
for alert in $(grep -E '^\s+- alert:' prometheus/outrigger-rules.yaml | awk '{print $3}'); do
  f=../docs/runbooks/$alert.md
  grep -q "runbook_url: docs/runbooks/$alert.md" prometheus/outrigger-rules.yaml || { echo "alert $alert has no runbook_url to $f"; missing=1; }
  [ -f "$f" ] || { echo "missing runbook $f"; missing=1; }
  grep -q "alertname: $alert" prometheus/outrigger-rules.test.yaml || { echo "alert $alert has no rule test"; missing=1; }
done
[ "$missing" = 0 ]

echo "--- Kubernetes manifests"
manifests=$(find kubernetes -name '*.yaml' ! -name kustomization.yaml ! -name outrigger.yaml | sort)
out=$("$kv" --strict $manifests 2>&1) || { echo "$out"; exit 1; }
echo "$out"
if echo "$out" | grep -v "Couldn't find schema for kind \(PodMonitor\|PrometheusRule\|Certificate\)" | grep -qE '^(WARN|ERROR)'; then
  echo "unexpected warnings above"; exit 1
fi
# Each kustomization names only files that exist.
for k in $(find kubernetes -name kustomization.yaml); do
  d=$(dirname "$k")
  python3 - "$k" <<'PY'
import os, sys, yaml
k = sys.argv[1]; d = os.path.dirname(k)
doc = yaml.safe_load(open(k))
names = list(doc.get("resources", [])) + [f for g in doc.get("configMapGenerator", []) for f in g.get("files", [])]
bad = [n for n in names if not os.path.exists(os.path.join(d, n))]
if bad:
    sys.exit(f"{k}: missing {bad}")
PY
done

echo "--- the ConfigMaps' configs pass outrigger check"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export POD_NAMESPACE=shop SERVICE_NAME=checkout
"$bin" check --deny-warnings -c kubernetes/outrigger.yaml
"$bin" check --deny-warnings -c kubernetes/transparent/outrigger.yaml
# The transparent variant's init container gets rules from that config (printed, not applied).
"$bin" init-iptables --dry-run -c kubernetes/transparent/outrigger.yaml --exclude-outbound-cidrs 169.254.169.254/32 \
  | grep -q 'inbound TCP to ports 8080 -> :15001; outbound TCP -> :15002'
# The TLS variant reads its certificate files: give it a CA and a certificate like the
# cert-manager Secret's, at a temporary path.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=mesh-ca \
  -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=checkout \
  -addext "subjectAltName=DNS:checkout" -keyout "$tmp/tls.key" -out "$tmp/tls.csr" 2>/dev/null
openssl x509 -req -in "$tmp/tls.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial -days 2 \
  -copy_extensions copy -out "$tmp/tls.crt" 2>/dev/null
sed "s|/etc/outrigger/tls|$tmp|g" kubernetes/tls/outrigger.yaml > "$tmp/outrigger.yaml"
"$bin" check --deny-warnings -c "$tmp/outrigger.yaml"
echo "deploy/ checks passed"
