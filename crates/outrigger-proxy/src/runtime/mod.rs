//! The config compiled for the request path, built once per config: routes with their
//! router, listeners with their admission limits, upstreams with their breakers, balancers
//! and pools, and where finished requests are recorded. The request path (`crate::path`)
//! reads it; nothing here handles a request.
//!
//! A reload builds the next runtime from the previous one: what did not change is carried
//! over (an upstream's pools, breaker, ejections and latency estimates; a route's retry
//! budget; a listener's admission counters), so a reload loses no state that traffic built.

pub(crate) mod supervise;
pub(crate) mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderValue;
use prometheus::IntCounter;

use outrigger_config::{Config, Fault, Role};
use outrigger_telemetry::Metrics;

use crate::policy::retry::RetryRt;
use crate::record::series::SuccessSeries;
use crate::record::{RouteRecord, Sinks};
use crate::router::Router;
use crate::sys::counter::Slot;
use upstream::UpstreamRt;

/// A route at run time.
pub(crate) struct RouteRt {
    /// The route's name (the `http_route` label).
    pub name: Arc<str>,
    /// Where it sends traffic.
    pub upstream: Arc<UpstreamRt>,
    /// The whole request, retries included, must get its response head within this.
    pub timeout: Duration,
    /// What a request's record needs of its route (names, series, the body idle limit).
    pub(crate) record: Arc<RouteRecord>,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) retry: RetryRt,
    pub(crate) fallback: Option<FallbackRt>,
    pub(crate) fault: Option<Fault>,
    /// Only these client identities may use the route.
    pub(crate) allow: Option<outrigger_config::Allow>,
    pub(crate) fallbacks: IntCounter,
    /// The route's last good answers (`stale_if_error`).
    pub(crate) stale: Option<Arc<crate::policy::stale::StaleStore>>,
    pub(crate) faults: IntCounter,
}

pub(crate) struct FallbackRt {
    pub(crate) status: StatusCode,
    pub(crate) content_type: HeaderValue,
    pub(crate) body: Bytes,
}

/// A listener's settings the request path needs.
pub(crate) struct ListenerRt {
    /// Inbound or outbound.
    pub role: Role,
    /// Largest request head.
    pub max_header_bytes: usize,
    pub(crate) max_in_flight: usize,
    /// Requests in flight, kept across reloads (a request holds its slot until it ends,
    /// whichever config it started under).
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Requests admitted so far (the drain watches the outbound side go quiet).
    pub(crate) admitted: Arc<AtomicU64>,
    /// A client body that sends nothing for this long is cut off (408).
    pub(crate) body_idle: Duration,
    /// The listener's name (logs, the handshake failure metric).
    pub(crate) name: Arc<str>,
    /// Its TLS, when it terminates TLS.
    pub(crate) tls: Option<Arc<crate::tls::rotate::LiveServer>>,
    /// What becomes of a redirected connection no route takes.
    pub(crate) unmatched: outrigger_config::Unmatched,
}

impl ListenerRt {
    pub(crate) fn admit(&self) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Some(Slot::taken(self.in_flight.clone()))
    }
}

/// The runtime in use: each request loads it once; a reload swaps it. Requests in flight
/// finish on the runtime they loaded.
pub(crate) type LiveRuntime = arc_swap::ArcSwap<Runtime>;

/// Everything the request path needs, built once from a config.
pub(crate) struct Runtime {
    /// The config this was built from (`/debug/config`, the admin access list, the drain).
    pub(crate) config: Arc<Config>,
    /// The first 12 hex digits of the SHA-256 of the config file (`outrigger_config_info`).
    pub(crate) hash: Arc<str>,
    pub(crate) router: Router<Arc<RouteRt>>,
    /// The routes in match order, with their config (`/debug/routes`).
    pub(crate) routes: Vec<(outrigger_config::Route, Arc<RouteRt>)>,
    pub(crate) listeners: Vec<ListenerRt>,
    pub(crate) upstreams: Vec<Arc<UpstreamRt>>,
    pub(crate) metrics: Metrics,
    /// Where finished requests are recorded (shared with every request's record).
    pub(crate) sinks: Arc<Sinks>,
    pub(crate) type_base: Arc<str>,
    /// Test hook: a request for exactly this path panics (`OUTRIGGER_TEST_PANIC_PATH`), to
    /// prove a bug in one request cannot take the proxy down. Unset in production.
    pub(crate) panic_path: Option<String>,
    pub(crate) normalize_5xx: bool,
    /// Accept B3 on input (`telemetry.tracing.propagate` has `b3`).
    pub(crate) accept_b3: bool,
    pub(crate) sample_ratio: f64,
    /// Set once draining has passed `drain.delay`: inbound requests get `shutting_down`.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

impl Runtime {
    /// Compiles a validated config into the runtime form.
    /// `spans`: where finished spans go, when `telemetry.tracing.otlp_endpoint` is set.
    /// `tls`: the listeners' and upstreams' TLS configs, loaded.
    /// `previous`: the runtime this one replaces (a reload), whose state is carried over
    /// where the config did not change.
    pub(crate) fn new(
        config: Arc<Config>,
        hash: Arc<str>,
        metrics: Metrics,
        spans: Option<outrigger_telemetry::spans::SpanQueue>,
        tls: &crate::tls::rotate::Live,
        previous: Option<&Runtime>,
    ) -> Self {
        let upstreams: Vec<Arc<UpstreamRt>> = config
            .upstreams
            .iter()
            .zip(&tls.upstreams)
            .map(|(u, live)| {
                let before = previous.and_then(|p| p.upstreams.iter().find(|x| *x.name == *u.name));
                UpstreamRt::carried(u, &config.telemetry.latency_inflation, &metrics, live.clone(), before)
            })
            .collect();
        let routes: Vec<(outrigger_config::Route, Vec<usize>, Arc<RouteRt>)> = config
            .routes
            .iter()
            .filter_map(|r| {
                // Validation guarantees the upstream and listener exist.
                let i = config.upstreams.iter().position(|u| u.name == r.upstream)?;
                let listeners = r
                    .listener
                    .as_ref()
                    .map(|l| config.listeners.iter().position(|x| &x.name == l).into_iter().collect())
                    .unwrap_or_default();
                let name = r.name.as_str();
                let before = previous.and_then(|p| p.routes.iter().find(|(c, _)| c.name == r.name));
                let rt = RouteRt {
                    name: name.into(),
                    upstream: upstreams[i].clone(),
                    timeout: r.timeout,
                    record: Arc::new(RouteRecord {
                        name: name.into(),
                        upstream: upstreams[i].name.clone(),
                        // `critical` lets `outrigger explain` put what matters first.
                        log_members: {
                            let members = outrigger_telemetry::logging::rendered(&[
                                ("route", name),
                                ("upstream", &upstreams[i].name),
                            ]);
                            if r.critical {
                                outrigger_telemetry::logging::Rendered::from(format!(
                                    "{}{}",
                                    &*members, r#","critical":true"#
                                ))
                            } else {
                                members
                            }
                        },
                        body_idle: r.body_idle_timeout,
                        in_flight: metrics.in_flight.with_label_values(&[name]),
                        overhead: metrics.proxy_overhead.with_label_values(&[name]),
                        succeeded: SuccessSeries::new(metrics.server_duration.clone(), name, 2),
                        answered: upstreams[i].answered.clone(),
                    }),
                    max_body_bytes: r.max_body_bytes,
                    retry: RetryRt::new(
                        name,
                        r.retry.clone(),
                        &metrics.retries,
                        metrics.retry_budget_exhausted.with_label_values(&[name]),
                        before.map(|(_, rt)| &rt.retry),
                    ),
                    fallback: r.fallback.as_ref().map(|f| FallbackRt {
                        status: StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        content_type: HeaderValue::from_str(&f.content_type)
                            .unwrap_or(HeaderValue::from_static("text/plain")),
                        body: Bytes::from(f.body.clone()),
                    }),
                    fault: r.fault.clone(),
                    allow: r.allow.clone(),
                    // Kept answers outlive a reload that left the route's store as it was.
                    stale: r.stale_if_error.as_ref().map(|cfg| {
                        match before
                            .and_then(|(_, rt)| rt.stale.as_ref())
                            .filter(|s| s.config() == cfg)
                        {
                            Some(kept) => kept.clone(),
                            None => Arc::new(crate::policy::stale::StaleStore::new(
                                cfg.clone(),
                                metrics.stale_served.with_label_values(&[name]),
                                metrics.stale_bytes.with_label_values(&[name]),
                            )),
                        }
                    }),
                    fallbacks: metrics.fallbacks.with_label_values(&[name]),
                    faults: metrics.faults_injected.with_label_values(&[name]),
                };
                Some((r.clone(), listeners, Arc::new(rt)))
            })
            .collect();
        let suppressed = metrics.log_lines_suppressed.clone();
        let rate_limit = &config.telemetry.logs.rate_limit;
        // Lines already held back by the limiter are summarised by the limiter that counted them.
        let log_limiter = previous
            .filter(|p| p.config.telemetry.logs.rate_limit == *rate_limit)
            .map_or_else(
                || {
                    Arc::new(outrigger_telemetry::ratelimit::LogLimiter::new(
                        rate_limit.per_second,
                        rate_limit.burst,
                        suppressed,
                    ))
                },
                |p| p.sinks.log_limiter.clone(),
            );
        Runtime {
            routes: routes.iter().map(|(cfg, _, rt)| (cfg.clone(), rt.clone())).collect(),
            router: Router::new(routes),
            listeners: config
                .listeners
                .iter()
                .zip(&tls.listeners)
                .map(|(l, live)| {
                    // Counters follow the listener's name: requests admitted under the old
                    // config still count against the limit and the drain.
                    let before = previous.and_then(|p| p.listeners.iter().find(|x| *x.name == *l.name));
                    ListenerRt {
                        name: before.map_or_else(|| l.name.as_str().into(), |b| b.name.clone()),
                        tls: live.clone(),
                        role: l.role,
                        unmatched: l.unmatched,
                        max_header_bytes: l.limits.max_header_bytes,
                        max_in_flight: l.limits.max_in_flight,
                        in_flight: before.map_or_else(Arc::default, |b| b.in_flight.clone()),
                        admitted: before.map_or_else(Arc::default, |b| b.admitted.clone()),
                        body_idle: l.limits.idle_timeout,
                    }
                })
                .collect(),
            upstreams,
            sinks: Arc::new(Sinks {
                metrics: metrics.clone(),
                access_log: config.telemetry.logs.access_log,
                access_sample_ratio: config.telemetry.logs.access_sample_ratio,
                log_limiter,
                redact_query: config
                    .telemetry
                    .logs
                    .redact_query_params
                    .iter()
                    .map(|p| p.to_ascii_lowercase())
                    .collect(),
                spans,
            }),
            metrics,
            type_base: config.errors.type_base.as_str().into(),
            panic_path: std::env::var("OUTRIGGER_TEST_PANIC_PATH")
                .ok()
                .filter(|p| p.starts_with('/')),
            normalize_5xx: config.errors.normalize_upstream_5xx,
            accept_b3: config
                .telemetry
                .tracing
                .propagate
                .contains(&outrigger_config::Propagation::B3),
            sample_ratio: config.telemetry.tracing.sample_ratio,
            draining: std::sync::atomic::AtomicBool::new(false),
            config,
            hash,
        }
    }

    /// The listener a connection was accepted on, found by name: a reload may have reordered
    /// the listeners (`hint` is its index when the connection was accepted). `None`: a reload
    /// removed it.
    pub(crate) fn listener(&self, name: &Arc<str>, hint: usize) -> Option<(usize, &ListenerRt)> {
        match self.listeners.get(hint) {
            Some(l) if Arc::ptr_eq(&l.name, name) => Some((hint, l)),
            _ => self.listeners.iter().enumerate().find(|(_, l)| *l.name == **name),
        }
    }

    /// Publishes which config is live: `outrigger_config_info{hash}` and one
    /// `outrigger_route_info` per route (the previous config's series are removed).
    pub(crate) fn show_config(&self) {
        let m = &self.metrics;
        m.config_info.reset();
        m.config_info.with_label_values(&[&self.hash]).set(1);
        m.route_info.reset();
        for (r, _) in &self.routes {
            let critical = if r.critical { "true" } else { "false" };
            m.route_info.with_label_values(&[&r.name, &r.upstream, critical]).set(1);
        }
    }

    /// Every upstream (for DNS refresh and debug endpoints).
    pub(crate) fn upstreams(&self) -> &[Arc<UpstreamRt>] {
        &self.upstreams
    }
}
