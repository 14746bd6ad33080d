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
        let http2 = upstream.uses_http2(grpc, upgrading);
        let attempt_start = Instant::now();
        let outcome = tokio::time::timeout(route.timeout, upstream.send(upstream_req, http2)).await;
        let attempt_time = attempt_start.elapsed();
        done.upstream_time = Some(attempt_time);

        // --- respond ---
        let attempt = match outcome {
            Err(_elapsed) => {
                done.attempt(
                    None,
                    false,
                    Duration::ZERO,
                    attempt_time,
                    None,
                    Some("upstream_timeout"),
                );
                let err = self.located(ErrorKind::UpstreamTimeout { after: route.timeout }, &route, None);
                return self.fail(done, err, grpc);
            }
            Ok(Err(failure)) => {
                let code_err = ProxyError::new(failure.kind.clone());
                let (reused, idle) = failure.conn.map_or((false, Duration::ZERO), |c| (c.reused, c.idle_for));
                done.attempt(
                    Some(&failure.endpoint),
                    reused,
                    idle,
                    attempt_time,
                    None,
                    Some(code_err.code()),
                );
                let err = self.located(failure.kind, &route, Some(failure.endpoint));
                return self.fail(done, err, grpc);
            }
            Ok(Ok(attempt)) => attempt,
        };
        let status = attempt.response.status();
        done.attempt(
            Some(&attempt.endpoint),
            attempt.conn.reused,
            attempt.conn.idle_for,
            attempt_time,
            Some(status.as_u16()),
            None,
        );
        done.endpoint = Some(attempt.endpoint);
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

    fn located(&self, kind: ErrorKind, route: &RouteRt, endpoint: Option<String>) -> ProxyError {
        ProxyError {
            kind,
            route: Some(route.name.to_string()),
            upstream: Some(route.upstream.name.to_string()),
            endpoint,
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
    endpoint: Option<String>,
    upstream_time: Option<Duration>,
    attempts: Vec<Value>,
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
            endpoint: None,
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

    fn attempt(
        &mut self,
        endpoint: Option<&str>,
        reused: bool,
        idle: Duration,
        took: Duration,
        status: Option<u16>,
        code: Option<&str>,
    ) {
        let mut a = Map::new();
        a.insert("n".into(), (self.attempts.len() + 1).into());
        if let Some(e) = endpoint {
            a.insert("endpoint".into(), e.into());
            a.insert("connection".into(), if reused { "reused" } else { "fresh" }.into());
            if reused {
                a.insert("idle_ms".into(), (idle.as_millis() as u64).into());
            }
        }
        a.insert("duration_ms".into(), ms(took).into());
        if let Some(s) = status {
            a.insert("status".into(), s.into());
        }
        if let Some(c) = code {
            a.insert("code".into(), c.into());
        }
        if let Some(route) = &self.route {
            let status_label = status.map(|s| s.to_string()).unwrap_or_default();
            self.shared
                .metrics
                .client_duration
                .with_label_values(&[
                    &route.upstream.name,
                    method_label(&self.method),
                    &status_label,
                    code.unwrap_or(""),
                ])
                .observe(took.as_secs_f64());
        }
        self.attempts.push(Value::Object(a));
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

    fn record(&mut self) {
        let duration = self.start.elapsed();
        let route_name = self.route.as_ref().map_or("", |r| &*r.name);
        let upstream_name = self.route.as_ref().map(|r| r.upstream.name.clone());
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
        let (level, msg, cause) = match (&self.error, self.status, &self.body_error) {
            (Some(e), _, _) => {
                let level = match e.class() {
                    ErrorClass::Client => Level::INFO,
                    ErrorClass::Upstream => Level::WARN,
                    ErrorClass::Proxy => Level::ERROR,
                };
                (level, e.detail(), Some(e.detail()))
            }
            (None, None, _) => (
                Level::INFO,
                format!(
                    "The client went away after {} before a response was ready.",
                    humanize_ms(duration)
                ),
                Some("client closed the connection while waiting for the upstream".to_owned()),
            ),
            (None, Some(_), Some(body_error)) => (
                Level::WARN,
                format!("{} {path}: {body_error}.", self.method),
                Some(body_error.clone()),
            ),
            (None, Some(s), None) if self.client_gone => (
                Level::INFO,
                format!(
                    "{} {path} answered {s}, but the client went away before the response body was complete.",
                    self.method
                ),
                Some("client closed the connection during the response body".to_owned()),
            ),
            (None, Some(s), None) => (
                Level::INFO,
                format!(
                    "{} {path} answered {s} by {} in {}.",
                    self.method,
                    upstream_name.as_deref().unwrap_or("-"),
                    humanize_ms(duration)
                ),
                None,
            ),
        };
        let mut f = Map::with_capacity(16);
        f.insert("request_id".into(), self.request_id.to_str().unwrap_or("").into());
        if let Some(r) = &self.route {
            f.insert("route".into(), (&*r.name).into());
            f.insert("upstream".into(), (&*r.upstream.name).into());
        }
        if let Some(e) = &self.endpoint {
            f.insert("endpoint".into(), e.as_str().into());
        }
        f.insert("method".into(), self.method.as_str().into());
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
            f.insert("attempts".into(), Value::Array(std::mem::take(&mut self.attempts)));
        }
        if let Some(c) = cause {
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
