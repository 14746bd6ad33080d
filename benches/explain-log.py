#!/usr/bin/env python3
"""Writes a large, realistic outrigger log for benches/explain.sh: access lines of three
routes at about 1,000 requests a second, an outage of `payments` (timeouts, the breaker, the
fallback) in every hour, callers' 4xx, and a little junk.
usage: explain-log.py MIB > big.log"""
import sys
import time

mib = int(sys.argv[1])
limit = mib << 20
t0 = 1796565600.0  # 2026-12-06T14:00:00Z
out = sys.stdout
written = 0
n = 0

def ts(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)

ok = ('{"ts":"%s","level":"info","kind":"access","msg":"GET %s answered 200 by %s in 4ms.",'
      '"request_id":"01a2%08x-02f9-716f-b885-16d533844080","trace_id":"%032x","span_id":"%016x",'
      '"route":"%s","upstream":"%s"%s,"method":"GET","path":"%s","protocol":"HTTP/1.1","status":200,'
      '"duration_ms":4.124,"upstream_ms":3.9,"attempts":[{"n":1,"span_id":"%016x","endpoint":"10.0.3.%d:8080",'
      '"connection":"reused","idle_ms":12.5,"duration_ms":3.9,"status":200,"circuit_state":"closed"}]}\n')
fail = ('{"ts":"%s","level":"warn","kind":"access","msg":"GET /checkout was answered 200 by the route\'s fallback instead of upstream_timeout.",'
        '"request_id":"01a2%08x-02f9-716f-b885-16d533844080","trace_id":"%032x","span_id":"%016x",'
        '"route":"checkout","upstream":"payments","critical":true,"method":"GET","path":"/checkout","protocol":"HTTP/1.1",'
        '"status":200,"code":"upstream_timeout","class":"upstream","duration_ms":2000.4,"upstream_ms":2000.1,'
        '"attempts":[{"n":1,"span_id":"%016x","endpoint":"10.0.3.7:8080","connection":"reused","idle_ms":40.0,'
        '"duration_ms":2000.1,"code":"upstream_timeout","stage":"await_headers","circuit_state":"closed","next":"stop",'
        '"retry_reason":"timeout","retry_budget_left":12.0}],"fallback":"upstream_timeout",'
        '"cause":"attempt 1 to 10.0.3.7:8080 (reused, idle 40ms) failed after 2s: upstream_timeout"}\n')
client = ('{"ts":"%s","level":"info","kind":"access","msg":"The request body is larger than allowed.",'
          '"request_id":"01a2%08x-02f9-716f-b885-16d533844080","trace_id":"%032x","span_id":"%016x",'
          '"route":"checkout","upstream":"payments","critical":true,"method":"POST","path":"/checkout",'
          '"status":413,"code":"payload_too_large","class":"client","duration_ms":0.1}\n')
routes = [("checkout", "payments", ',"critical":true', "/checkout"), ("catalog", "catalog", "", "/items"),
          ("search", "search", "", "/search")]
buf = []
while written < limit:
    t = t0 + n / 1000.0
    minute = int((t - t0) / 60) % 60
    k = n % 100
    if minute == 30 and k < 40:
        line = fail % (ts(t), n, n, n, n)
    elif k == 99:
        line = client % (ts(t), n, n, n)
    else:
        r = routes[k % 3]
        line = ok % (ts(t), r[3], r[1], n, n, n, r[0], r[1], r[2], r[3], n, n % 5)
    if n % 1000 == 500:
        line += "java.lang.IllegalStateException: not ours\n"
    if n % 3_600_000 == 1_800_100:
        line += ('{"ts":"%s","level":"warn","kind":"breaker","msg":"Circuit breaker for \'payments\' opened.",'
                 '"upstream":"payments","from":"closed","to":"open","why":"opened: 5 consecutive failures"}\n' % ts(t))
    buf.append(line)
    written += len(line)
    n += 1
    if len(buf) >= 10000:
        out.write("".join(buf))
        buf.clear()
out.write("".join(buf))
