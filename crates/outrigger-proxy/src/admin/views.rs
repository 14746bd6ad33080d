//! The `/debug/*` views: what the running proxy holds, as JSON (or indented text for a
//! person). Built on request from the live state; nothing here is on the request path.

use http::Method;
use serde_json::{Value, json};

use outrigger_config::Config;

/// `/debug/upstreams`: per upstream its breaker (state, since when, why, when it half-opens)
/// and per endpoint its health, ejection, back-off, requests in flight and latency estimate.
pub(super) fn upstreams_view(rt: &crate::runtime::Runtime) -> Value {
    let now = tokio::time::Instant::now();
    let upstreams: Vec<Value> = rt
        .upstreams()
        .iter()
        .map(|u| {
            json!({
                "name": &*u.name,
                "breaker": u.circuit.view(),
                "endpoints": u.endpoints.view(now),
            })
        })
        .collect();
    json!({ "upstreams": upstreams })
}

/// `/debug/routes`: the routes in match order (first match wins), what each matches, where
/// it sends traffic, and its live counters.
pub(super) fn routes_view(rt: &crate::runtime::Runtime) -> Value {
    let now = tokio::time::Instant::now();
    let routes: Vec<Value> = rt
        .routes
        .iter()
        .enumerate()
        .map(|(i, (cfg, live))| {
            let m = &cfg.matcher;
            json!({
                "order": i + 1,
                "name": cfg.name,
                "match": match_view(m),
                "upstream": cfg.upstream,
                "listener": cfg.listener,
                "timeout_ms": cfg.timeout.as_millis() as u64,
                "retry_attempts": cfg.retry.as_ref().map_or(1, |r| r.attempts),
                "retry_budget_left": cfg.retry.as_ref().map(|_| (live.retry.budget_left(now) * 10.0).round() / 10.0),
                "allow": cfg.allow.as_ref().map(|a| &a.identities),
                "in_flight": live.record.in_flight.get(),
                "fallbacks": live.fallbacks.get(),
                "faults_injected": live.faults.get(),
                "stale_if_error": live.stale.as_ref().map(|s| json!({
                    "entries": s.held().0,
                    "bytes": s.held().1,
                    "max_bytes": s.config().max_bytes,
                    "served": s.served.get(),
                })),
            })
        })
        .collect();
    json!({ "routes": routes })
}

/// A debug view for a person: one `key: value` line per scalar, nested objects indented,
/// list items numbered; nulls left out.
pub(super) fn view_text(v: &Value) -> String {
    fn walk(v: &Value, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::Null => {}
                        Value::Object(_) | Value::Array(_) => {
                            if v.as_array().is_some_and(Vec::is_empty) {
                                continue;
                            }
                            out.push_str(&format!("{pad}{k}:\n"));
                            walk(v, indent + 1, out);
                        }
                        Value::String(s) => out.push_str(&format!("{pad}{k}: {s}\n")),
                        other => out.push_str(&format!("{pad}{k}: {other}\n")),
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push_str(&format!("{pad}- {s}\n")),
                        Value::Object(_) | Value::Array(_) => {
                            out.push_str(&format!("{pad}[{}]\n", i + 1));
                            walk(item, indent + 1, out);
                        }
                        other => out.push_str(&format!("{pad}- {other}\n")),
                    }
                }
            }
            other => out.push_str(&format!("{pad}{other}\n")),
        }
    }
    let mut out = String::new();
    walk(v, 0, &mut out);
    out
}

/// A duration as the config writes it (`1s`, `250ms`).
fn dur(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `/debug/config`: the config in effect, every default filled in. File paths are shown,
/// never the files' contents (keys); a URL's user and password are left out.
pub(super) fn config_view(c: &Config, hash: &str) -> Value {
    let listeners: Vec<Value> = c
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "role": l.role.as_str(),
                "address": l.address.to_string(),
                "tls": l.tls.as_ref().map(|t| json!({
                    "cert": t.cert.display().to_string(),
                    "key": t.key.display().to_string(),
                    "client_ca": t.client_ca.as_ref().map(|p| p.display().to_string()),
                })),
                "limits": {
                    "max_header_bytes": l.limits.max_header_bytes,
                    "header_read_timeout": dur(l.limits.header_read_timeout),
                    "idle_timeout": dur(l.limits.idle_timeout),
                    "max_in_flight": l.limits.max_in_flight,
                },
                "unmatched": l.unmatched.as_str(),
            })
        })
        .collect();
    let upstreams: Vec<Value> = c
        .upstreams
        .iter()
        .map(|u| {
            let cb = &u.circuit_breaker;
            let od = &u.outlier_detection;
            json!({
                "name": u.name,
                "endpoints": u.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "protocol": u.protocol.as_str(),
                "connect_timeout": dur(u.connect_timeout),
                "resolve_every": dur(u.resolve_every),
                "tls": u.tls.as_ref().map(|t| json!({
                    "server_name": t.server_name,
                    "ca": t.ca.as_ref().map(|p| p.display().to_string()),
                    "cert": t.cert.as_ref().map(|p| p.display().to_string()),
                    "key": t.key.as_ref().map(|p| p.display().to_string()),
                })),
                "pool": {"idle_timeout": dur(u.pool.idle_timeout), "max_idle_per_endpoint": u.pool.max_idle_per_endpoint},
                "circuit_breaker": {
                    "consecutive_failures": cb.consecutive_failures,
                    "failure_rate": cb.failure_rate,
                    "window": dur(cb.window),
                    "min_requests": cb.min_requests,
                    "open_for": dur(cb.open_for),
                    "max_open_for": dur(cb.max_open_for),
                    "half_open_probes": cb.half_open_probes,
                    "slow_call": cb.slow_call.as_ref().map(|s| json!({"duration": dur(s.duration), "rate": s.rate})),
                    "max_in_flight": cb.max_in_flight,
                    "trip_on_5xx": cb.trip_on_5xx,
                },
                "outlier_detection": {
                    "consecutive_failures": od.consecutive_failures,
                    "eject_for": dur(od.eject_for),
                    "max_ejected_percent": od.max_ejected_percent,
                },
            })
        })
        .collect();
    let routes: Vec<Value> = c
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "match": match_view(&r.matcher),
                "upstream": r.upstream,
                "listener": r.listener,
                "max_body_bytes": r.max_body_bytes,
                "critical": r.critical,
                "timeout": dur(r.timeout),
                "body_idle_timeout": dur(r.body_idle_timeout),
                "retry": r.retry.as_ref().map(|p| json!({
                    "attempts": p.attempts,
                    "per_try_timeout": p.per_try_timeout.map(dur),
                    "on": p.on.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
                    "retriable_status": p.retriable_status,
                    "idempotent_only": p.idempotent_only,
                    "replay_buffer_bytes": p.replay_buffer_bytes,
                    "backoff": {"base": dur(p.backoff.base), "max": dur(p.backoff.max)},
                    "budget": {"ratio": p.budget.ratio, "min_per_second": p.budget.min_per_second},
                })),
                "fallback": r.fallback.as_ref().map(|f| json!({"status": f.status, "content_type": f.content_type, "body_bytes": f.body.len()})),
                "fault": r.fault.as_ref().map(|f| json!({
                    "delay": f.delay.as_ref().map(|d| json!({"percent": d.percent, "duration": dur(d.duration)})),
                    "abort": f.abort.as_ref().map(|a| json!({"percent": a.percent, "status": a.status})),
                    "allow_header": f.allow_header,
                })),
                "allow": r.allow.as_ref().map(|a| &a.identities),
                "stale_if_error": r.stale_if_error.as_ref().map(|s| json!({
                    "max_age": dur(s.max_age),
                    "max_bytes": s.max_bytes,
                    "key_by_credentials": s.key_by_credentials,
                })),
            })
        })
        .collect();
    let t = &c.telemetry;
    json!({
        "hash": hash,
        "listeners": listeners,
        "admin": {
            "address": c.admin.address.to_string(),
            "debug_from": c.admin.debug_from.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "drain": {"delay": dur(c.drain.delay), "timeout": dur(c.drain.timeout)},
        "upstreams": upstreams,
        "routes": routes,
        "errors": {"type_base": c.errors.type_base, "normalize_upstream_5xx": c.errors.normalize_upstream_5xx},
        "telemetry": {
            "service_name": t.service_name,
            "tracing": {
                "otlp_endpoint": t.tracing.otlp_endpoint.as_ref().map(without_userinfo),
                "otlp_protocol": match t.tracing.otlp_protocol {
                    outrigger_config::OtlpProtocol::Grpc => "grpc",
                    outrigger_config::OtlpProtocol::HttpProtobuf => "http/protobuf",
                },
                "sample_ratio": t.tracing.sample_ratio,
                "propagate": t.tracing.propagate.iter().map(|p| match p {
                    outrigger_config::Propagation::TraceContext => "tracecontext",
                    outrigger_config::Propagation::B3 => "b3",
                }).collect::<Vec<_>>(),
            },
            "logs": {
                "level": t.logs.level.as_str(),
                "access_log": t.logs.access_log,
                "access_sample_ratio": t.logs.access_sample_ratio,
                "rate_limit": {"per_second": t.logs.rate_limit.per_second, "burst": t.logs.rate_limit.burst},
                "redact_headers": t.logs.redact_headers,
                "redact_query_params": t.logs.redact_query_params,
            },
            "latency_inflation": {
                "baseline": dur(t.latency_inflation.baseline),
                "recent": dur(t.latency_inflation.recent),
                "alert_ratio": t.latency_inflation.alert_ratio,
            },
        },
    })
}

/// A URI with any `user:password@` taken out.
fn without_userinfo(uri: &http::Uri) -> String {
    let s = uri.to_string();
    match (uri.authority(), uri.scheme_str()) {
        (Some(a), Some(scheme)) if a.as_str().contains('@') => {
            let host = a.as_str().rsplit('@').next().unwrap_or("");
            let rest = uri.path_and_query().map_or("", |p| p.as_str());
            format!("{scheme}://{host}{rest}")
        }
        _ => s,
    }
}

fn match_view(m: &outrigger_config::RouteMatch) -> Value {
    json!({
        "path": m.path,
        "path_prefix": m.path_prefix,
        "path_regex": m.path_regex.as_ref().map(regex::Regex::as_str),
        "host": m.host.as_ref().map(|h| match h.port {
            Some(p) => format!("{}:{p}", h.host),
            None => h.host.clone(),
        }),
        "methods": m.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
        "headers": m.headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect::<Vec<_>>(),
        "destination": m.destination.map(|d| d.to_string()),
    })
}
