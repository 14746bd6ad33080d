"""Share of outrigger's CPU spent in each optional feature: breaker, retry budget, metrics,
trace headers, access log. Reads the output of `perf script --inline` for a profile of the
proxy under load with call graphs:

    perf record -F 499 --call-graph dwarf,32768 -p "$(pgrep -f 'outrigger run')" -o f.data -- sleep 5
    perf script -i f.data --inline > f.txt
    python3 benches/feature_cost.py f.txt

A sample counts for a feature when any frame of its stack (inlined frames included) belongs
to that feature; "all of them" counts each sample once. The rest of the request record
(formatting the access line's message) counts as access log.
"""
import re, sys, collections
CATS = {
    'access log': r'outrigger_telemetry::logging|JsonLine|write_json|Completion::cause|Attempt::describe|humanize_ms|redact_query|write_buffered|LogLimiter|log_limiter',
    'metrics': r'prometheus::|SuccessSeries|series::|with_label_values|\bobserve\b|Histogram|IntCounter|IntGauge|GenericCounter|GenericGauge|outrigger_telemetry::metrics|inflation::',
    'circuit breaker': r'outrigger_resilience::breaker|outrigger_proxy::circuit|\badmit\b|Circuit::|Breaker::|Permit',
    'retry budget': r'outrigger_resilience::budget|RetryBudget|\bdeposit\b|Budget::',
    'trace headers': r'outrigger_proxy::trace|TraceContext|\binject\b|traceparent|from_request',
}
blocks = open(sys.argv[1]).read().split('\n\n')
total = 0; hits = collections.Counter(); any_hit = 0
# record() minus metrics and spans is the access log's share
rec = re.compile(r'Completion::record')
for b in blocks:
    lines = b.split('\n')
    if len(lines) < 2: continue
    total += 1
    frames = [re.sub(r'\+0x[0-9a-f]+.*$', '', l.strip().split(' ', 1)[-1]) for l in lines[1:]]
    text = '\n'.join(frames)
    found = set()
    for c, pat in CATS.items():
        if re.search(pat, text): found.add(c)
    if rec.search(text) and not found & {'metrics', 'access log'}:
        found.add('access log')  # formatting the message and the rest of the line
    for c in found: hits[c] += 1
    if found: any_hit += 1
print(f"samples: {total}")
for c in CATS:
    print(f"{c:16s} {100*hits[c]/total:5.1f} %")
print(f"{'all of them':16s} {100*any_hit/total:5.1f} %")
