//! Every metric outrigger exports, declared once in one registry.
//!
//! Names follow the OpenTelemetry HTTP semantic conventions in their Prometheus form for the
//! standard `http_*` histograms (so existing dashboards work) and `outrigger_*` for our own.
//! Label values come only from config (route and upstream names) and from closed sets
//! (methods, status codes, error codes) — never from paths, ids or peer addresses.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Histogram buckets for request durations: the OpenTelemetry defaults with sub-millisecond
/// buckets in front, since a sidecar's own answers (errors, fast upstreams) are that quick.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
];

/// Buckets for the proxy's own overhead: 10 µs to 100 ms.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// The registry and every metric in it.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `http_server_request_duration_seconds{http_route, http_request_method, http_response_status_code, error_type, error_class}`
    pub server_duration: HistogramVec,
    /// `http_client_request_duration_seconds{upstream, http_request_method, http_response_status_code, error_type}`
    pub client_duration: HistogramVec,
    /// `outrigger_requests_in_flight{route}`
    pub in_flight: IntGaugeVec,
    /// `outrigger_proxy_overhead_seconds{route}`: time inside outrigger, upstream time and
    /// deliberate waits (backoff, injected delays) excluded.
    pub proxy_overhead: HistogramVec,
    /// `outrigger_retries_total{route, reason}`
    pub retries: IntCounterVec,
    /// `outrigger_retry_budget_exhausted_total{route}`
    pub retry_budget_exhausted: IntCounterVec,
    /// `outrigger_circuit_breaker_state{upstream}`: 0 closed, 1 open, 2 half-open
    pub breaker_state: IntGaugeVec,
    /// `outrigger_circuit_breaker_transitions_total{upstream, from, to}`
    pub breaker_transitions: IntCounterVec,
    /// `outrigger_outlier_ejections_total{upstream}`
    pub outlier_ejections: IntCounterVec,
    /// `outrigger_endpoints_healthy{upstream}`
    pub endpoints_healthy: IntGaugeVec,
    /// `outrigger_fallbacks_total{route}`
    pub fallbacks: IntCounterVec,
    /// `outrigger_faults_injected_total{route}`
    pub faults_injected: IntCounterVec,
    /// `outrigger_stale_served_total{route}`
    pub stale_served: IntCounterVec,
    /// `outrigger_stale_bytes{route}`
    pub stale_bytes: IntGaugeVec,
    /// `outrigger_redirected_connections_total{listener, outcome}`
    pub redirected_connections: IntCounterVec,
    /// `outrigger_tls_handshake_failures_total{listener, reason}`
    pub tls_handshake_failures: IntCounterVec,
    /// `outrigger_tls_certificate_expiry_timestamp_seconds{scope, name}`
    pub tls_certificate_expiry: GaugeVec,
    /// `outrigger_tls_certificate_reloads_total{scope, name, result}`
    pub tls_certificate_reloads: IntCounterVec,
    /// `outrigger_task_restarts_total{task}`
    pub task_restarts: IntCounterVec,
    /// `outrigger_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `outrigger_ready`: 1 when `/readyz` answers 200 (set at each scrape).
    pub ready: prometheus::IntGauge,
    /// `outrigger_route_info{http_route, upstream, critical}` = 1 per configured route: lets
    /// alerts page for critical routes only (joined on `http_route`).
    pub route_info: IntGaugeVec,
    /// `outrigger_config_info{hash}` = 1: which config file is live (first 12 hex digits of
    /// its SHA-256; the built-in config hashes its own text).
    pub config_info: IntGaugeVec,
    /// `outrigger_config_last_reload_successful`: 0 after a rejected reload, until one
    /// succeeds (Prometheus' own `prometheus_config_last_reload_successful`).
    pub config_last_reload_successful: prometheus::IntGauge,
    /// `outrigger_config_last_reload_success_timestamp_seconds`: when the live config was
    /// applied (the start, until a reload succeeds).
    pub config_last_reload_success: prometheus::Gauge,
    /// `outrigger_log_lines_suppressed_total{kind}`
    pub log_lines_suppressed: IntCounterVec,
    /// `outrigger_internal_errors_total`: bugs in outrigger, each answered 500 and logged at error.
    pub internal_errors: IntCounter,
    /// `outrigger_upstream_latency_inflation_ratio{upstream}`: recent latency over its baseline.
    pub latency_inflation: GaugeVec,
    /// `outrigger_spans_exported_total`: spans the OTLP collector accepted.
    pub spans_exported: IntCounter,
    /// `outrigger_spans_dropped_total{reason}`: spans lost (`queue_full`, `export_failed`).
    pub spans_dropped: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Creates the registry with every metric declared, and `outrigger_build_info` set.
    /// Fails only if a definition here is invalid (a bug caught by the tests).
    pub fn new(version: &str, commit: &str) -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let server_duration = histogram(
            &r,
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, from the request head to the end of the response.",
            &[
                "http_route",
                "http_request_method",
                "http_response_status_code",
                "error_type",
                "error_class",
            ],
        )?;
        let client_duration = histogram(
            &r,
            "http_client_request_duration_seconds",
            "Duration of HTTP requests to upstreams, one observation per attempt, until the response head.",
            &[
                "upstream",
                "http_request_method",
                "http_response_status_code",
                "error_type",
            ],
        )?;
        let build_info = gauge(
            &r,
            "outrigger_build_info",
            "Always 1; labels say which build is running.",
            &["version", "commit"],
        )?;
        build_info.with_label_values(&[version, commit]).set(1);
        let config_reloads = counter(
            &r,
            "outrigger_config_reloads_total",
            "Config reloads, by result (success or rejected).",
            &["result"],
        )?;
        for result in ["success", "rejected"] {
            config_reloads.with_label_values(&[result]);
        }
        let proxy_overhead = HistogramVec::new(
            HistogramOpts::new(
                "outrigger_proxy_overhead_seconds",
                "Time spent inside outrigger per request until the response head, upstream time and deliberate waits excluded.",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["route"],
        )?;
        r.register(Box::new(proxy_overhead.clone()))?;
        let latency_inflation = GaugeVec::new(
            Opts::new(
                "outrigger_upstream_latency_inflation_ratio",
                "Recent upstream latency (moving average) over its long-term baseline; 1 is normal, 2 is twice as slow.",
            ),
            &["upstream"],
        )?;
        r.register(Box::new(latency_inflation.clone()))?;
        let spans_exported = IntCounter::new(
            "outrigger_spans_exported_total",
            "Spans accepted by the OTLP collector.",
        )?;
        r.register(Box::new(spans_exported.clone()))?;
        let spans_dropped = counter(
            &r,
            "outrigger_spans_dropped_total",
            "Spans not exported: queue_full (the collector is slower than the traffic) or export_failed (the collector refused or was unreachable).",
            &["reason"],
        )?;
        for reason in ["queue_full", "export_failed"] {
            spans_dropped.with_label_values(&[reason]);
        }
        Ok(Metrics {
            latency_inflation,
            spans_exported,
            spans_dropped,
            proxy_overhead,
            server_duration,
            client_duration,
            in_flight: gauge(
                &r,
                "outrigger_requests_in_flight",
                "Requests being served, by route.",
                &["route"],
            )?,
            retries: counter(
                &r,
                "outrigger_retries_total",
                "Retries made, by route and the reason for the retry.",
                &["route", "reason"],
            )?,
            retry_budget_exhausted: counter(
                &r,
                "outrigger_retry_budget_exhausted_total",
                "Retries not made because the route's retry budget was spent; the failure was returned instead.",
                &["route"],
            )?,
            breaker_state: gauge(
                &r,
                "outrigger_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["upstream"],
            )?,
            breaker_transitions: counter(
                &r,
                "outrigger_circuit_breaker_transitions_total",
                "Circuit breaker state changes.",
                &["upstream", "from", "to"],
            )?,
            outlier_ejections: counter(
                &r,
                "outrigger_outlier_ejections_total",
                "Endpoints taken out of balancing by outlier detection.",
                &["upstream"],
            )?,
            endpoints_healthy: gauge(
                &r,
                "outrigger_endpoints_healthy",
                "Endpoints in rotation (resolved and not ejected).",
                &["upstream"],
            )?,
            fallbacks: counter(
                &r,
                "outrigger_fallbacks_total",
                "Fallback responses served instead of an upstream failure.",
                &["route"],
            )?,
            faults_injected: counter(
                &r,
                "outrigger_faults_injected_total",
                "Faults injected for rehearsals (delays and aborts).",
                &["route"],
            )?,
            stale_served: counter(
                &r,
                "outrigger_stale_served_total",
                "Kept answers (stale_if_error) served instead of an upstream failure.",
                &["route"],
            )?,
            stale_bytes: gauge(
                &r,
                "outrigger_stale_bytes",
                "Memory held by a route's kept answers (stale_if_error), heads and bodies; never above its max_bytes.",
                &["route"],
            )?,
            redirected_connections: counter(
                &r,
                "outrigger_redirected_connections_total",
                "Connections redirected to a listener (transparent mode), by what became of them: http (served by routes), passthrough (forwarded as TCP to their original destination), refused.",
                &["listener", "outcome"],
            )?,
            config_reloads,
            ready: {
                let g = prometheus::IntGauge::new(
                    "outrigger_ready",
                    "1 when /readyz answers 200 (listeners serving, not draining, every needed background task well).",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            route_info: gauge(
                &r,
                "outrigger_route_info",
                "Always 1 per configured route; critical=\"true\" for routes marked critical (alerts page for those only).",
                &["http_route", "upstream", "critical"],
            )?,
            config_info: gauge(
                &r,
                "outrigger_config_info",
                "Always 1; the label is the first 12 hex digits of the SHA-256 of the live config file.",
                &["hash"],
            )?,
            config_last_reload_successful: {
                let g = prometheus::IntGauge::new(
                    "outrigger_config_last_reload_successful",
                    "1 when the last config reload (or the start) succeeded; 0 after a rejected reload, until one succeeds.",
                )?;
                r.register(Box::new(g.clone()))?;
                g.set(1);
                g
            },
            config_last_reload_success: {
                let g = prometheus::Gauge::new(
                    "outrigger_config_last_reload_success_timestamp_seconds",
                    "When the live config was applied (Unix time): the start, then each successful reload.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            task_restarts: counter(
                &r,
                "outrigger_task_restarts_total",
                "Background tasks (dns, tls_watch, log_summary) restarted after they failed or panicked.",
                &["task"],
            )?,
            tls_handshake_failures: counter(
                &r,
                "outrigger_tls_handshake_failures_total",
                "Inbound TLS handshakes that failed, by listener and reason (no_client_cert, unknown_ca, expired, bad_certificate, protocol_version, other).",
                &["listener", "reason"],
            )?,
            tls_certificate_expiry: {
                let g = GaugeVec::new(
                    prometheus::Opts::new(
                        "outrigger_tls_certificate_expiry_timestamp_seconds",
                        "When a certificate expires (Unix time of not_after): a listener's own; for an upstream, the earlier of outrigger's client certificate and the one the upstream last presented.",
                    ),
                    &["scope", "name"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            tls_certificate_reloads: counter(
                &r,
                "outrigger_tls_certificate_reloads_total",
                "Certificate, key and CA files re-read after they changed: success, or rejected (the previous ones keep serving).",
                &["scope", "name", "result"],
            )?,
            log_lines_suppressed: counter(
                &r,
                "outrigger_log_lines_suppressed_total",
                "Log lines dropped by rate limiting, by kind.",
                &["kind"],
            )?,
            internal_errors: {
                let c = IntCounter::new(
                    "outrigger_internal_errors_total",
                    "Bugs in outrigger: requests answered 500 internal (see the error log).",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            registry: r,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_build_info_and_declared_families() {
        let m = Metrics::new("1.2.3", "abc").unwrap();
        m.server_duration
            .with_label_values(&["default", "GET", "200", "", ""])
            .observe(0.01);
        let text = m.render();
        assert!(
            text.contains(r#"outrigger_build_info{commit="abc",version="1.2.3"} 1"#),
            "{text}"
        );
        assert!(text.contains("http_server_request_duration_seconds_count{"), "{text}");
        assert!(
            text.contains(r#"outrigger_config_reloads_total{result="rejected"} 0"#),
            "{text}"
        );
    }
}
