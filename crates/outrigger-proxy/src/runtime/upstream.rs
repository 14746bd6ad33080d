//! An upstream at run time: its endpoints and balancer, its circuit breaker, and the
//! translation of transport failures into [`ErrorKind`]s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Version};
use tokio::time::Instant;

use outrigger_config::{LatencyInflation, Protocol, Upstream};
use outrigger_resilience::inflation::{Change, InflationSettings, LatencyBaseline};
use outrigger_telemetry::Metrics;
use prometheus::Gauge;

use crate::body::RequestBody;
use crate::error::ErrorKind;
use crate::policy::balance::Endpoints;
use crate::policy::circuit::Circuit;
use crate::upstream::pool::{ConnInfo, EndpointPool, SendError, UpstreamBody};

/// One upstream's endpoints, breaker and protocol.
pub(crate) struct UpstreamRt {
    /// The upstream's name from config.
    pub name: Arc<str>,
    /// Its endpoints and balancer.
    pub endpoints: Endpoints,
    /// Its circuit breaker.
    pub circuit: Arc<Circuit>,
    protocol: Protocol,
    idle_timeout: Duration,
    races: Mutex<RaceTracker>,
    latency: Arc<LatencyWatch>,
    /// The settings it was built from (a reload compares them to the new ones).
    pub(crate) config: Upstream,
    /// `http_client_request_duration_seconds` of attempts that got a response head.
    pub(crate) answered: Arc<crate::record::series::SuccessSeries>,
}

/// The upstream's latency against its own baseline: the inflation gauge and its warning.
struct LatencyWatch {
    baseline: Mutex<LatencyBaseline>,
    ratio: Gauge,
    settings: LatencyInflation,
}

/// The result of one attempt that failed.
pub(crate) struct AttemptFailure {
    /// What went wrong, as an error code.
    pub kind: ErrorKind,
    /// The connection used, when one was established.
    pub conn: Option<ConnInfo>,
}

/// The result of one attempt that got a response head.
pub(crate) struct AttemptResponse {
    /// The response, body still streaming.
    pub response: Response<UpstreamBody>,
    /// The connection used.
    pub conn: ConnInfo,
}

impl UpstreamRt {
    /// The runtime form of a configured upstream (no connection is made yet), given the one
    /// of the same name before a reload:
    /// the very same one when none of its settings changed (pools, breaker, ejections and
    /// latency estimates all kept); otherwise a new one that still keeps the breaker when the
    /// breaker's settings are the same, the latency baseline when its settings are the same,
    /// and each endpoint still listed (its pool, ejection and estimate) when the connection
    /// settings are the same.
    pub(crate) fn carried(
        cfg: &Upstream,
        inflation: &LatencyInflation,
        metrics: &Metrics,
        tls: Option<Arc<crate::tls::rotate::LiveClient>>,
        previous: Option<&Arc<UpstreamRt>>,
    ) -> Arc<Self> {
        match previous {
            Some(p) if p.config == *cfg && p.latency.settings == *inflation => p.clone(),
            _ => Arc::new(Self::build(cfg, inflation, metrics, tls, previous.map(|p| &**p))),
        }
    }

    fn build(
        cfg: &Upstream,
        inflation: &LatencyInflation,
        metrics: &Metrics,
        tls: Option<Arc<crate::tls::rotate::LiveClient>>,
        previous: Option<&UpstreamRt>,
    ) -> Self {
        let name = cfg.name.as_str();
        let same_connections = |p: &&UpstreamRt| {
            let was = &p.config;
            (was.protocol, was.connect_timeout, &was.pool, &was.tls)
                == (cfg.protocol, cfg.connect_timeout, &cfg.pool, &cfg.tls)
        };
        let circuit = previous
            .filter(|p| p.config.circuit_breaker == cfg.circuit_breaker)
            .map(|p| p.circuit.clone());
        let latency = previous
            .filter(|p| p.latency.settings == *inflation)
            .map(|p| p.latency.clone());
        UpstreamRt {
            name: name.into(),
            endpoints: Endpoints::new(
                cfg,
                tls,
                metrics.outlier_ejections.with_label_values(&[name]),
                metrics.endpoints_healthy.with_label_values(&[name]),
                previous.filter(same_connections).map(|p| &p.endpoints),
            ),
            circuit: circuit.unwrap_or_else(|| {
                Arc::new(Circuit::new(
                    name,
                    &cfg.circuit_breaker,
                    metrics.breaker_state.with_label_values(&[name]),
                    metrics.breaker_transitions.clone(),
                ))
            }),
            protocol: cfg.protocol,
            idle_timeout: cfg.pool.idle_timeout,
            races: Mutex::new(RaceTracker::default()),
            answered: Arc::new(crate::record::series::SuccessSeries::new(
                metrics.client_duration.clone(),
                name,
                1,
            )),
            config: cfg.clone(),
            latency: latency.unwrap_or_else(|| Self::latency_watch(name, inflation, metrics)),
        }
    }

    fn latency_watch(name: &str, inflation: &LatencyInflation, metrics: &Metrics) -> Arc<LatencyWatch> {
        Arc::new(LatencyWatch {
            baseline: Mutex::new(LatencyBaseline::new(
                InflationSettings {
                    baseline: inflation.baseline,
                    recent: inflation.recent,
                    alert_ratio: if inflation.alert_ratio > 0.0 {
                        inflation.alert_ratio
                    } else {
                        f64::INFINITY
                    },
                },
                Instant::now().into_std(),
            )),
            ratio: metrics.latency_inflation.with_label_values(&[name]),
            settings: inflation.clone(),
        })
    }

    /// Folds one attempt's time to its response head (or to its timeout) into the latency
    /// baseline; logs when the upstream becomes (or stops being) much slower than usual.
    pub(crate) fn observe_latency(&self, took: Duration, now: Instant) {
        let finished = self
            .latency
            .baseline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(took, now.into_std());
        let Some((reading, change)) = finished else { return };
        self.latency.ratio.set((reading.ratio * 100.0).round() / 100.0);
        let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
        let window = humantime::format_duration(self.latency.settings.baseline);
        match change {
            Some(Change::Inflated(r)) => tracing::warn!(
                kind = "latency",
                upstream = %self.name,
                ratio = (r.ratio * 10.0).round() / 10.0,
                recent_ms = ms(r.recent),
                baseline_ms = ms(r.baseline),
                "'{}' is {:.1}x slower than its {window} baseline (recent average {} vs {}).",
                self.name,
                r.ratio,
                outrigger_resilience::humanize(r.recent),
                outrigger_resilience::humanize(r.baseline),
            ),
            Some(Change::Recovered(r)) => tracing::info!(
                kind = "latency",
                upstream = %self.name,
                ratio = (r.ratio * 10.0).round() / 10.0,
                recent_ms = ms(r.recent),
                baseline_ms = ms(r.baseline),
                "'{}' is back to {:.1}x its {window} baseline (recent average {} vs {}).",
                self.name,
                r.ratio,
                outrigger_resilience::humanize(r.recent),
                outrigger_resilience::humanize(r.baseline),
            ),
            None => {}
        }
    }

    /// Whether a request goes out over HTTP/2: always for `http2`, for gRPC under `auto`,
    /// never for a protocol upgrade (WebSocket needs HTTP/1.1).
    pub(crate) fn uses_http2(&self, grpc: bool, upgrade: bool) -> bool {
        !upgrade
            && match self.protocol {
                Protocol::Http1 => false,
                Protocol::Http2 => true,
                Protocol::Auto => grpc,
            }
    }

    /// Sends one attempt to `pool`. `head` must carry an origin-form URI and the client's
    /// `Host`; the HTTP/2 form (`:authority`) is derived here. `fresh_only` skips pooled
    /// connections.
    #[allow(
        clippy::too_many_arguments,
        reason = "the attempt's parts, borrowed one by one: a struct of them would be built per attempt for one call"
    )]
    pub(crate) async fn send_to(
        pool: &Arc<EndpointPool>,
        head: &http::request::Parts,
        added: &crate::http::added::Added,
        body: RequestBody,
        http2: bool,
        fresh_only: bool,
        started: tokio::time::Instant,
        seen: &crate::upstream::pool::ConnSeen,
    ) -> Result<AttemptResponse, AttemptFailure> {
        let result = if http2 {
            // hyper's client takes the request by value: the head is copied for it.
            let mut req = Request::new(body);
            *req.method_mut() = head.method.clone();
            *req.headers_mut() = head.headers.clone();
            added.insert_into(req.headers_mut());
            *req.version_mut() = Version::HTTP_2;
            let authority = req
                .headers_mut()
                .remove(http::header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_owned))
                .unwrap_or_else(|| pool.addr().to_string());
            let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
            match http::Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(path)
                .build()
            {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => {
                    let reason = "the Host header is not a valid authority";
                    return Err(AttemptFailure {
                        kind: ErrorKind::BadRequest { reason },
                        conn: None,
                    });
                }
            }
            pool.send_http2(req, fresh_only, seen).await
        } else {
            pool.send_http1(head, added, body, fresh_only, started, seen).await
        };
        match result {
            Ok((response, conn)) => Ok(AttemptResponse { response, conn }),
            Err(e) => Err(classify(e)),
        }
    }

    /// Notes a reused connection that failed before any response (the keep-alive race);
    /// logs once a minute when it keeps happening, naming the setting to change.
    pub(crate) fn keepalive_race(&self, idle_for: Duration) {
        let mut t = self.races.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(t.since) > Duration::from_secs(60) {
            *t = RaceTracker {
                since: now,
                count: 0,
                idle_total: Duration::ZERO,
                warned: t.warned,
            };
        }
        t.count += 1;
        t.idle_total += idle_for;
        let due = t
            .warned
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(60));
        if t.count >= 3 && due {
            t.warned = Some(now);
            let avg = t.idle_total / t.count;
            tracing::warn!(
                kind = "keepalive_race",
                upstream = %self.name,
                count = t.count,
                avg_idle_ms = avg.as_millis() as u64,
                pool_idle_timeout_ms = self.idle_timeout.as_millis() as u64,
                "'{}' closed {} reused connections just as outrigger sent on them in the last minute (idle {} on average). \
                 Its keep-alive timeout is probably shorter than upstreams.{}.pool.idle_timeout ({}): lower that setting below the app's keep-alive timeout.",
                self.name,
                t.count,
                outrigger_resilience::humanize(avg),
                self.name,
                outrigger_resilience::humanize(self.idle_timeout),
            );
        }
    }
}

struct RaceTracker {
    since: Instant,
    count: u32,
    idle_total: Duration,
    warned: Option<Instant>,
}

impl Default for RaceTracker {
    fn default() -> Self {
        RaceTracker {
            since: Instant::now(),
            count: 0,
            idle_total: Duration::ZERO,
            warned: None,
        }
    }
}

fn classify(e: SendError) -> AttemptFailure {
    let (kind, conn) = match e {
        SendError::Connect(c) => (
            ErrorKind::UpstreamConnectFailed {
                reason: c.reason(),
                tls: c.is_tls(),
            },
            None,
        ),
        SendError::Request(e, info) => {
            let kind = if let Some(reason) = crate::tls::refusal_in(&e) {
                ErrorKind::UpstreamConnectFailed { reason, tls: true }
            } else if e.is_parse() || e.is_parse_status() {
                ErrorKind::UpstreamProtocolError {
                    what: "its HTTP/2 response does not parse",
                }
            } else if e.is_user() && !e.is_canceled() {
                // Our side of the exchange failed: the client's body was cut off.
                client_body_error(&e)
            } else {
                ErrorKind::UpstreamReset
            };
            (kind, Some(info))
        }
        SendError::Http1(e, info) => {
            let kind = match e {
                crate::upstream::h1::Error::Protocol(what) => ErrorKind::UpstreamProtocolError { what },
                crate::upstream::h1::Error::Io(e) if let Some(reason) = crate::tls::refusal_in(&e) => {
                    ErrorKind::UpstreamConnectFailed { reason, tls: true }
                }
                crate::upstream::h1::Error::Io(_) | crate::upstream::h1::Error::Closed(_) => ErrorKind::UpstreamReset,
                crate::upstream::h1::Error::Body(e) => client_body_failure(e.downcast_ref()),
            };
            (kind, Some(info))
        }
    };
    AttemptFailure { kind, conn }
}

/// What happened to the client's body, from the cause chain of hyper's error.
fn client_body_error(e: &hyper::Error) -> ErrorKind {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(body) = err.downcast_ref::<crate::body::ClientBodyError>() {
            return client_body_failure(Some(body));
        }
        source = err.source();
    }
    client_body_failure(None)
}

/// The error code for a client body that failed on its way upstream.
fn client_body_failure(why: Option<&crate::body::ClientBodyError>) -> ErrorKind {
    match why {
        Some(crate::body::ClientBodyError::TooLarge(limit)) => ErrorKind::PayloadTooLarge { limit: *limit },
        Some(crate::body::ClientBodyError::Stalled(idle)) => ErrorKind::RequestTimeout { idle: *idle },
        None => ErrorKind::BadRequest {
            reason: "the request body ended before it was complete",
        },
    }
}
