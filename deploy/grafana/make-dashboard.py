#!/usr/bin/env python3
"""Writes deploy/grafana/outrigger.json: a Grafana dashboard of the golden signals per
route and per upstream (traffic, errors by class, latency, saturation) and what outrigger
did about failures (breakers, retries, fallbacks, shedding). Every query is also run
against a real Prometheus scraping a real outrigger by tests/tests/prometheus.rs.
usage: make-dashboard.py [--check]   (--check: fail if the committed file differs)"""
import json
import pathlib
import sys

SEL = 'namespace="$namespace", app="$app"'
R = "$__rate_interval"

# (title, unit, [(expr, legend)], description)
ROWS = [
    ("Routes: what callers see", [
        ("Requests per second by route", "reqps",
         [(f'sum by (http_route) (rate(http_server_request_duration_seconds_count{{{SEL}, http_route=~"$route"}}[{R}]))', "{{http_route}}")],
         "Every request the sidecar answered, by route."),
        ("Errors per second by route and class", "reqps",
         [(f'sum by (http_route, error_class) (rate(http_server_request_duration_seconds_count{{{SEL}, http_route=~"$route", error_class!=""}}[{R}]))', "{{http_route}} {{error_class}}")],
         "upstream and proxy classes are outages; client is callers' mistakes (never paged)."),
        ("Error ratio (upstream + proxy) by route", "percentunit",
         [(f'outrigger:route_error_ratio:rate5m{{{SEL}, http_route=~"$route"}}', "{{http_route}}")],
         "What the error-budget alerts burn; 0.001 is a 99.9 % SLO's whole budget."),
        ("Latency p50 / p99 by route", "s",
         [(f'histogram_quantile(0.5, sum by (http_route, le) (rate(http_server_request_duration_seconds_bucket{{{SEL}, http_route=~"$route"}}[{R}])))', "p50 {{http_route}}"),
          (f'histogram_quantile(0.99, sum by (http_route, le) (rate(http_server_request_duration_seconds_bucket{{{SEL}, http_route=~"$route"}}[{R}])))', "p99 {{http_route}}")],
         "Whole requests as callers see them, retries included."),
        ("Requests in flight by route", "short",
         [(f'sum by (route) (outrigger_requests_in_flight{{{SEL}, route=~"$route"}})', "{{route}}")],
         "Saturation: compare with the listener's limits.max_in_flight."),
        ("Load shed (overloaded) per second", "reqps",
         [(f'sum by (http_route) (rate(http_server_request_duration_seconds_count{{{SEL}, error_type="overloaded"}}[{R}]))', "{{http_route}}")],
         "Requests refused at once because the listener was full."),
    ]),
    ("Upstreams: what the app's dependencies do", [
        ("Upstream latency p99 by upstream", "s",
         [(f'histogram_quantile(0.99, sum by (upstream, le) (rate(http_client_request_duration_seconds_bucket{{{SEL}}}[{R}])))', "{{upstream}}")],
         "Each answered attempt, as outrigger saw it."),
        ("Latency inflation (recent / baseline)", "short",
         [(f'max by (upstream) (outrigger_upstream_latency_inflation_ratio{{{SEL}}})', "{{upstream}}")],
         "Above alert_ratio (default 2) the upstream is slowing down."),
        ("Circuit breaker state", "short",
         [(f'max by (upstream) (outrigger_circuit_breaker_state{{{SEL}}})', "{{upstream}}")],
         "0 closed, 1 open (failing fast), 2 half-open (probing)."),
        ("Healthy endpoints", "short",
         [(f'min by (upstream) (outrigger_endpoints_healthy{{{SEL}}})', "{{upstream}}")],
         "Endpoints in rotation after outlier ejection and DNS."),
    ]),
    ("What outrigger did", [
        ("Retries per second by route and reason", "reqps",
         [(f'sum by (route, reason) (rate(outrigger_retries_total{{{SEL}, route=~"$route"}}[{R}]))', "{{route}} {{reason}}")],
         "Retries made; see the budget panel for the ones held back."),
        ("Retries held back by the budget", "reqps",
         [(f'sum by (route) (rate(outrigger_retry_budget_exhausted_total{{{SEL}, route=~"$route"}}[{R}]))', "{{route}}")],
         "The retry budget stopping a retry storm."),
        ("Fallbacks served per second", "reqps",
         [(f'sum by (route) (rate(outrigger_fallbacks_total{{{SEL}, route=~"$route"}}[{R}]))', "{{route}}")],
         "Callers answered by the route's fallback instead of an error."),
        ("Breaker transitions", "short",
         [(f'sum by (upstream, to) (increase(outrigger_circuit_breaker_transitions_total{{{SEL}}}[{R}]))', "{{upstream}} -> {{to}}")],
         "When breakers opened and closed."),
    ]),
]


def dashboard():
    panels, pid, y = [], 1, 0
    for row_title, row in ROWS:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, (title, unit, targets, desc) in enumerate(row):
            panels.append({
                "type": "timeseries", "title": title, "id": pid, "description": desc,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)},
                "targets": [{"refId": chr(65 + k), "expr": e, "legendFormat": l,
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for k, (e, l) in enumerate(targets)],
            })
            pid += 1
        y += 8 * ((len(row) + 1) // 2)
    var = lambda name, query, multi: {
        "name": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
        "includeAll": multi, "multi": multi, **({"allValue": ".*"} if multi else {})}
    return {
        "title": "outrigger: golden signals per route and upstream",
        "uid": "outrigger-golden-signals", "tags": ["outrigger"], "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "editable": True,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            var("namespace", "label_values(outrigger_build_info, namespace)", False),
            var("app", 'label_values(outrigger_build_info{namespace="$namespace"}, app)', False),
            var("route", 'label_values(outrigger_route_info{namespace="$namespace", app="$app"}, http_route)', True),
        ]},
        "panels": panels,
    }


here = pathlib.Path(__file__).resolve().parent
out = here / "outrigger.json"
text = json.dumps(dashboard(), indent=2) + "\n"
if "--check" in sys.argv:
    if out.read_text() != text:
        sys.exit(f"{out} is out of date: run {__file__}")
else:
    out.write_text(text)
