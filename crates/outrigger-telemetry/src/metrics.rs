//! Every metric outrigger exports, declared once in one registry.
//!
//! Names follow the OpenTelemetry HTTP semantic conventions in their Prometheus form for the
//! standard `http_*` histograms (so existing dashboards work) and `outrigger_*` for our own.
//! Label values come only from config (route and upstream names) and from closed sets
//! (methods, status codes, error codes) — never from paths, ids or peer addresses.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Histogram buckets for request durations: the OpenTelemetry defaults with sub-millisecond
/// buckets in front, since a sidecar's own answers (errors, fast upstreams) are that quick.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
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
    /// `outrigger_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
}

impl Metrics {
    /// Creates the registry with every metric declared, and `outrigger_build_info` set.
    /// Fails only if a definition here is invalid (a bug caught by the tests).
    pub fn new(version: &str, commit: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let server_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, from the request head to the end of the response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &[
                "http_route",
                "http_request_method",
                "http_response_status_code",
                "error_type",
                "error_class",
            ],
        )?;
        let client_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_client_request_duration_seconds",
                "Duration of HTTP requests to upstreams, one observation per attempt, until the response head.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &[
                "upstream",
                "http_request_method",
                "http_response_status_code",
                "error_type",
            ],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("outrigger_requests_in_flight", "Requests being served, by route."),
            &["route"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "outrigger_config_reloads_total",
                "Config reloads, by result (success or rejected).",
            ),
            &["result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("outrigger_build_info", "Always 1; labels say which build is running."),
            &["version", "commit"],
        )?;
        build_info.with_label_values(&[version, commit]).set(1);
        for r in ["success", "rejected"] {
            config_reloads.with_label_values(&[r]);
        }
        for c in [
            Box::new(server_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(client_duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(config_reloads.clone()),
            Box::new(build_info),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            server_duration,
            client_duration,
            in_flight,
            config_reloads,
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
