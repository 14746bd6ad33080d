//! The request path, top to bottom, in the order a request meets each step.
//!
//! ```text
//! context   request id (keep a sane inbound x-request-id, else a new UUID v7), start time
//! guard     request head within the listener's limit (framing is checked by hyper)
//! route     host / path / method / headers -> route_not_found; absolute-form needs a host rule
//! rewrite   hop-by-hop headers out, forwarding headers in (inbound listeners), origin-form URI
//! forward   one attempt to the upstream within the route timeout
//! respond   the upstream's head and streaming body, or the error rendered for the caller
//! finish    metrics and one access-log line when the body has been delivered (Completion)
//! ```
//!
//! Later layers (retries, breakers, fallbacks) slot in between `route` and `respond`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use prometheus::IntGauge;
use serde_json::{Map, Value};
use tokio::time::Instant;

use outrigger_config::{Config, Role};
use outrigger_telemetry::{Level, Metrics};

use crate::body::{ProxyBody, RequestBody, ResponseBody};
use crate::error::{self, ErrorClass, ErrorKind, ProxyError, RenderContext};
use crate::headers::{self, X_REQUEST_ID};
use crate::pool::{ConnInfo, EndpointPool};
use crate::router::{RouteQuery, Router, split_authority};
use crate::upstream::UpstreamRt;

/// A route at run time.
pub struct RouteRt {
    /// The route's name (the `http_route` label).
    pub name: Arc<str>,
    /// Where it sends traffic.
    pub upstream: Arc<UpstreamRt>,
    /// The whole request must get its response head within this.
    pub timeout: Duration,
    in_flight: IntGauge,
}

/// A listener's settings the request path needs.
pub struct ListenerRt {
    /// Its name.
    pub name: Arc<str>,
    /// Inbound or outbound.
    pub role: Role,
    /// Largest request head.
    pub max_header_bytes: usize,
}

/// Everything the request path needs, built once from a config.
pub struct Shared {
    router: Router<Arc<RouteRt>>,
    listeners: Vec<ListenerRt>,
    metrics: Metrics,
    type_base: Arc<str>,
    access_log: bool,
}

/// Facts about the client connection a request arrived on.
pub struct ConnCtx {
    /// Index of the listener in the config.
    pub listener: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// Requests in flight on this connection (the idle timeout only closes at zero).
    pub active: Arc<AtomicUsize>,
}

impl Shared {
    /// Compiles a validated config into the runtime form.
    pub fn new(config: &Config, metrics: Metrics) -> Self {
        let upstreams: Vec<Arc<UpstreamRt>> = config.upstreams.iter().map(|u| Arc::new(UpstreamRt::new(u))).collect();
        let routes = config
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
                let rt = RouteRt {
                    name: r.name.as_str().into(),
                    upstream: upstreams[i].clone(),
                    timeout: r.timeout,
                    in_flight: metrics.in_flight.with_label_values(&[r.name.as_str()]),
                };
                Some((r.clone(), listeners, Arc::new(rt)))
            })
            .collect();
        Shared {
            router: Router::new(routes),
            listeners: config
                .listeners
                .iter()
                .map(|l| ListenerRt {
                    name: l.name.as_str().into(),
                    role: l.role,
                    max_header_bytes: l.limits.max_header_bytes,
                })
                .collect(),
            metrics,
            type_base: config.errors.type_base.as_str().into(),
            access_log: config.telemetry.logs.access_log,
        }
    }

    /// Serves one request. Never fails: every failure becomes a response.
    pub async fn handle(self: Arc<Self>, mut req: Request<Incoming>, conn: Arc<ConnCtx>) -> Response<ResponseBody> {
        // --- context ---
        let request_id = headers::request_id(req.headers());
        let mut done = Completion::start(self.clone(), &req, request_id.clone(), conn.active.clone());
        let grpc = is_grpc(req.headers());
        let Some(listener) = self.listeners.get(conn.listener) else {
            return self.fail(done, ProxyError::new(ErrorKind::Internal), grpc);
        };

        // --- guard ---
        if headers::head_size(req.method(), req.uri(), req.headers()) > listener.max_header_bytes {
            return self.fail(
                done,
                ProxyError::new(ErrorKind::HeaderTooLarge {
                    limit: listener.max_header_bytes,
                }),
                grpc,
            );
        }
        // Ambiguous framing (Content-Length with Transfer-Encoding, conflicting lengths,
        // obs-fold) never gets this far: hyper frames by Transfer-Encoding alone, drops
        // Content-Length and closes the connection after the response, or answers 400.

        // --- route ---
        let absolute_form = req.version() <= Version::HTTP_11 && req.uri().authority().is_some();
        let authority = if absolute_form || req.version() == Version::HTTP_2 {
            req.uri().authority().map(|a| a.as_str())
        } else {
            req.headers().get(HOST).and_then(|h| h.to_str().ok())
        };
        let (host, port) = authority
            .map(split_authority)
            .map_or((None, None), |(h, p)| (Some(h), p));
        let query = RouteQuery {
            listener: conn.listener,
            host,
            port,
            absolute_form,
        };
        let found = self
            .router
            .find(
                &crate::router::Request {
                    method: req.method(),
                    uri: req.uri(),
                    headers: req.headers(),
                },
                &query,
            )
            .map(|(_, rt)| rt.clone());
        let Some(route) = found else {
            return self.fail(done, ProxyError::new(ErrorKind::RouteNotFound), grpc);
        };
        done.set_route(route.clone());

        // --- rewrite ---
        let upgrading = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if absolute_form {
            if let Some(a) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(HOST, a);
            }
        } else if !parts.headers.contains_key(HOST)
            && let Some(a) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(HOST, a);
        }
        headers::strip_hop_by_hop(&mut parts.headers, upgrading);
        if listener.role == Role::Inbound {
            headers::add_forwarding(&mut parts.headers, conn.peer.ip(), "http");
        }
        parts.headers.insert(X_REQUEST_ID, request_id.clone());
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = Uri::from(pq);
        }
        parts.extensions = http::Extensions::new();
        let body = if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Incoming(body)
        };
        let upstream_req = Request::from_parts(parts, body);

        // --- forward ---
        let upstream = &route.upstream;
        let Some(endpoint) = upstream.pick().cloned() else {
            return self.fail(done, self.located(ErrorKind::Internal, &route), grpc);
        };
        let http2 = upstream.uses_http2(grpc, upgrading);
        let attempt_start = Instant::now();
        let outcome = tokio::time::timeout(route.timeout, UpstreamRt::send_to(&endpoint, upstream_req, http2)).await;
        let took = attempt_start.elapsed();
        done.upstream_time = Some(took);

        // --- respond ---
        let attempt = match outcome {
            Err(_elapsed) => {
                done.attempt(Attempt {
                    endpoint,
                    conn: None,
                    took,
                    outcome: AttemptOutcome::TimedOut,
                });
                let err = self.located(ErrorKind::UpstreamTimeout { after: route.timeout }, &route);
                return self.fail(done, err, grpc);
            }
            Ok(Err(failure)) => {
                let mut err = self.located(failure.kind, &route);
                err.endpoint = Some(endpoint.label().to_owned());
                let why = match &err.kind {
                    ErrorKind::UpstreamConnectFailed { reason } => Some(reason.clone()),
                    _ => None,
                };
                let outcome = AttemptOutcome::Failed(err.code(), why);
                done.attempt(Attempt {
                    endpoint,
                    conn: failure.conn,
                    took,
                    outcome,
                });
                return self.fail(done, err, grpc);
            }
            Ok(Ok(attempt)) => attempt,
        };
        let status = attempt.response.status();
        let outcome = AttemptOutcome::Status(status.as_u16());
        done.attempt(Attempt {
            endpoint,
            conn: Some(attempt.conn),
            took,
            outcome,
        });
        let mut response = attempt.response;
        if let Some(client_upgrade) = client_upgrade.filter(|_| status == http::StatusCode::SWITCHING_PROTOCOLS) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(crate::server::tunnel(
                client_upgrade,
                upstream_upgrade,
                route.upstream.name.clone(),
            ));
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, status == http::StatusCode::SWITCHING_PROTOCOLS);
        parts.headers.insert(X_REQUEST_ID, request_id);
        parts.version = done.version;
        done.status = Some(status.as_u16());
        Response::from_parts(parts, ResponseBody::new(ProxyBody::Upstream(body), Some(done)))
    }

    fn located(&self, kind: ErrorKind, route: &RouteRt) -> ProxyError {
        ProxyError {
            kind,
            route: Some(route.name.to_string()),
            upstream: Some(route.upstream.name.to_string()),
            endpoint: None,
        }
    }

    fn fail(&self, mut done: Completion, err: ProxyError, grpc: bool) -> Response<ResponseBody> {
        let cx = RenderContext {
            request_id: done.request_id.to_str().unwrap_or(""),
            path: done.uri.path(),
            grpc,
            head: done.method == Method::HEAD,
            type_base: &self.type_base,
        };
        let mut response = error::render(&err, &cx);
        let (mut parts, body) = {
            *response.version_mut() = done.version;
            response.into_parts()
        };
        if matches!(err.kind, ErrorKind::BadRequest { .. }) && done.version <= Version::HTTP_11 {
            // After a framing problem the rest of the connection cannot be trusted.
            parts
                .headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        done.status = Some(parts.status.as_u16());
        done.error = Some(err);
        Response::from_parts(parts, ResponseBody::new(body, Some(done)))
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// One try at the upstream, as the access log and metrics tell it.
pub(crate) struct Attempt {
    endpoint: Arc<EndpointPool>,
    conn: Option<ConnInfo>,
    took: Duration,
    outcome: AttemptOutcome,
}

enum AttemptOutcome {
    /// A response head with this status.
    Status(u16),
    /// Failed with this error code, and the transport's reason when there is one.
    Failed(&'static str, Option<String>),
    /// The route timeout expired while waiting.
    TimedOut,
}

impl Attempt {
    fn code(&self) -> &'static str {
        match self.outcome {
            AttemptOutcome::Status(_) => "",
            AttemptOutcome::Failed(code, _) => code,
            AttemptOutcome::TimedOut => "upstream_timeout",
        }
    }

    /// "attempt 1 to 10.0.0.7:8080 (connection reused after 3.9s idle) failed after 2ms: upstream_reset"
    fn describe(&self, n: usize) -> String {
        let via = match self.conn {
            Some(c) if c.reused => format!("connection reused after {} idle", humanize_ms(c.idle_for)),
            Some(_) => "fresh connection".to_owned(),
            None => "no connection".to_owned(),
        };
        let ep = self.endpoint.label();
        let took = humanize_ms(self.took);
        match self.outcome {
            AttemptOutcome::Status(s) => format!("attempt {n} to {ep} ({via}) answered {s} after {took}"),
            AttemptOutcome::Failed(code, None) => format!("attempt {n} to {ep} ({via}) failed after {took}: {code}"),
            AttemptOutcome::Failed(code, Some(ref why)) => {
                format!("attempt {n} to {ep} ({via}) failed after {took}: {code} ({why})")
            }
            AttemptOutcome::TimedOut => {
                format!("attempt {n} to {ep} had no response head after {took} (route timeout)")
            }
        }
    }

    fn to_json(&self, n: usize) -> Value {
        let mut a = Map::with_capacity(7);
        a.insert("n".into(), n.into());
        a.insert("endpoint".into(), self.endpoint.label().into());
        if let Some(c) = self.conn {
            a.insert("connection".into(), if c.reused { "reused" } else { "fresh" }.into());
            if c.reused {
                a.insert("idle_ms".into(), ms(c.idle_for).into());
            }
        }
        a.insert("duration_ms".into(), ms(self.took).into());
        match self.outcome {
            AttemptOutcome::Status(s) => a.insert("status".into(), s.into()),
            _ => a.insert("code".into(), self.code().into()),
        };
        Value::Object(a)
    }
}

/// The record of one request, finished (metrics observed, access line written) exactly once:
/// when the response body is done, or when the request is abandoned.
pub struct Completion {
    shared: Arc<Shared>,
    start: Instant,
    request_id: HeaderValue,
    method: Method,
    uri: Uri,
    version: Version,
    route: Option<Arc<RouteRt>>,
    status: Option<u16>,
    error: Option<ProxyError>,
    upstream_time: Option<Duration>,
    attempts: Vec<Attempt>,
    body_error: Option<String>,
    client_gone: bool,
    conn_active: Arc<AtomicUsize>,
}

impl Completion {
    fn start(
        shared: Arc<Shared>,
        req: &Request<Incoming>,
        request_id: HeaderValue,
        conn_active: Arc<AtomicUsize>,
    ) -> Self {
        conn_active.fetch_add(1, Ordering::Relaxed);
        Completion {
            shared,
            start: Instant::now(),
            request_id,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            route: None,
            status: None,
            error: None,
            upstream_time: None,
            attempts: Vec::new(),
            body_error: None,
            client_gone: false,
            conn_active,
        }
    }

    fn set_route(&mut self, route: Arc<RouteRt>) {
        route.in_flight.inc();
        self.route = Some(route);
    }

    fn attempt(&mut self, attempt: Attempt) {
        if let Some(route) = &self.route {
            let status = match attempt.outcome {
                AttemptOutcome::Status(s) => s.to_string(),
                _ => String::new(),
            };
            self.shared
                .metrics
                .client_duration
                .with_label_values(&[
                    &route.upstream.name,
                    method_label(&self.method),
                    &status,
                    attempt.code(),
                ])
                .observe(attempt.took.as_secs_f64());
        }
        self.attempts.push(attempt);
    }

    /// The response body was delivered (or broke off with `error`).
    pub(crate) fn body_finished(&mut self, error: Option<&hyper::Error>) {
        if let Some(e) = error {
            self.body_error = Some(format!("the response body from upstream broke off mid-stream ({e})"));
        }
    }

    /// The client went away before the response was complete.
    pub(crate) fn client_gone(&mut self) {
        self.client_gone = true;
    }

    /// The why, as one sentence: every attempt, then what happened to the body.
    fn cause(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .attempts
            .iter()
            .enumerate()
            .map(|(i, a)| a.describe(i + 1))
            .collect();
        if let Some(e) = &self.body_error {
            parts.push(e.clone());
        }
        if self.status.is_none() {
            parts.push("the client closed the connection before a response was ready".to_owned());
        } else if self.client_gone {
            parts.push("the client closed the connection before the response body was complete".to_owned());
        }
        let failed = self.error.is_some() || self.body_error.is_some() || self.client_gone || self.status.is_none();
        match (failed, parts.is_empty()) {
            (false, _) => None,
            (true, false) => Some(parts.join("; ")),
            (true, true) => self.error.as_ref().map(ProxyError::detail),
        }
    }

    fn record(&mut self) {
        let duration = self.start.elapsed();
        let route_name = self.route.as_ref().map_or("", |r| &*r.name);
        let (code, class): (Option<&str>, Option<&str>) = match (&self.error, self.status) {
            (Some(e), _) => (Some(e.code()), Some(e.class().as_str())),
            (None, None) => (Some("client_cancelled"), Some(ErrorClass::Client.as_str())),
            (None, Some(_)) => (None, None),
        };
        let status_label = self.status.map(|s| s.to_string()).unwrap_or_default();
        self.shared
            .metrics
            .server_duration
            .with_label_values(&[
                route_name,
                method_label(&self.method),
                &status_label,
                code.unwrap_or(""),
                class.unwrap_or(""),
            ])
            .observe(duration.as_secs_f64());

        if !self.shared.access_log {
            return;
        }
        let path = self.uri.path();
        let method = &self.method;
        let (level, msg) = match (&self.error, self.status) {
            (Some(e), _) => {
                let level = match e.class() {
                    ErrorClass::Client => Level::INFO,
                    ErrorClass::Upstream => Level::WARN,
                    ErrorClass::Proxy => Level::ERROR,
                };
                (level, e.detail())
            }
            (None, None) => (
                Level::INFO,
                format!(
                    "{method} {path}: the client went away after {} before a response was ready.",
                    humanize_ms(duration)
                ),
            ),
            (None, Some(s)) if self.body_error.is_some() => (
                Level::WARN,
                format!("{method} {path} answered {s}, but the upstream's response body broke off mid-stream."),
            ),
            (None, Some(s)) if self.client_gone => (
                Level::INFO,
                format!("{method} {path} answered {s}, but the client went away before the body was complete."),
            ),
            (None, Some(s)) => {
                let by = self.route.as_ref().map_or("-", |r| &*r.upstream.name);
                (
                    Level::INFO,
                    format!("{method} {path} answered {s} by {by} in {}.", humanize_ms(duration)),
                )
            }
        };
        let mut f = Map::with_capacity(16);
        f.insert("request_id".into(), self.request_id.to_str().unwrap_or("").into());
        if let Some(r) = &self.route {
            f.insert("route".into(), (&*r.name).into());
            f.insert("upstream".into(), (&*r.upstream.name).into());
        }
        if let Some(a) = self
            .attempts
            .last()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Status(_)))
        {
            f.insert("endpoint".into(), a.endpoint.label().into());
        }
        f.insert("method".into(), method.as_str().into());
        f.insert("path".into(), path.into());
        f.insert("protocol".into(), version_label(self.version).into());
        f.insert("status".into(), self.status.map_or(Value::Null, Value::from));
        if let Some(c) = code {
            f.insert("code".into(), c.into());
        }
        if let Some(c) = class {
            f.insert("class".into(), c.into());
        }
        f.insert("duration_ms".into(), ms(duration).into());
        if let Some(u) = self.upstream_time {
            f.insert("upstream_ms".into(), ms(u).into());
        }
        if !self.attempts.is_empty() {
            let attempts = self
                .attempts
                .iter()
                .enumerate()
                .map(|(i, a)| a.to_json(i + 1))
                .collect();
            f.insert("attempts".into(), Value::Array(attempts));
        }
        if let Some(c) = self.cause() {
            f.insert("cause".into(), c.into());
        }
        outrigger_telemetry::logging::write_line(level, "access", &msg, f);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.record();
        if let Some(r) = &self.route {
            r.in_flight.dec();
        }
        self.conn_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn humanize_ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else {
        error::humanize(d)
    }
}

/// The method as a bounded metric label: standard methods by name, others `_OTHER`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

fn version_label(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
