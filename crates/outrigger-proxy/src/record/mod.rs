//! The record of one request: its attempts, its outcome, and — exactly once, when the
//! response body has been delivered or abandoned — its metrics and its access-log line.

pub(crate) mod series;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::{Method, Request, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use outrigger_resilience::{humanize as humanize_ms, humanize_into};
use outrigger_telemetry::Level;
use outrigger_telemetry::logging::JsonLine;
use outrigger_telemetry::spans::{
    Attribute, FinishedSpan, SpanContext, SpanEvents, SpanId, SpanKind, SpanLinks, SpanQueue, Status, TraceFlags,
    TraceId, TraceState,
};

use crate::error::{Code, ErrorClass, ProxyError};
use crate::policy::retry::Reason;
use crate::record::series::{method_label, status_label};
use crate::upstream::pool::{ConnInfo, EndpointPool};
use outrigger_resilience::BreakerState;

/// Where finished requests are recorded: the metrics, the access log with its switches,
/// sampling, rate limit and redaction, and the span queue. Made once per config and shared
/// by every request's record.
pub(crate) struct Sinks {
    pub(crate) metrics: outrigger_telemetry::Metrics,
    pub(crate) access_log: bool,
    /// Share of successful requests that get an access line.
    pub(crate) access_sample_ratio: f64,
    /// Bounds the access lines of failures per (code, route).
    pub(crate) log_limiter: Arc<outrigger_telemetry::ratelimit::LogLimiter>,
    /// Query parameters whose values never reach a log (`telemetry.logs.redact_query_params`).
    pub(crate) redact_query: Vec<String>,
    /// Finished spans go here when `telemetry.tracing.otlp_endpoint` is set.
    pub(crate) spans: Option<SpanQueue>,
}

/// What a request's record needs of its route, resolved once per route: names, the
/// pre-rendered log members, the metric children, and the body idle limit its response
/// keeps to.
pub(crate) struct RouteRecord {
    /// The route's name (the `http_route` label).
    pub(crate) name: Arc<str>,
    /// Its upstream's name.
    pub(crate) upstream: Arc<str>,
    /// `"route":…,"upstream":…` as its access lines carry them.
    pub(crate) log_members: outrigger_telemetry::logging::Rendered,
    /// After the head, the longest silence allowed in the response body.
    pub(crate) body_idle: Duration,
    pub(crate) in_flight: prometheus::IntGauge,
    pub(crate) overhead: prometheus::Histogram,
    /// `http_server_request_duration_seconds` of its successful requests.
    pub(crate) succeeded: series::SuccessSeries,
    /// `http_client_request_duration_seconds` of its upstream's answered attempts.
    pub(crate) answered: Arc<series::SuccessSeries>,
}

/// One try at the upstream, as the access log and metrics tell it.
pub(crate) struct Attempt {
    pub(crate) endpoint: Arc<EndpointPool>,
    pub(crate) conn: Option<ConnInfo>,
    /// When it started, counted from the request's arrival.
    pub(crate) offset: Duration,
    pub(crate) took: Duration,
    pub(crate) outcome: AttemptOutcome,
    /// The client span's id: the parent id the upstream saw in `traceparent`.
    pub(crate) span_id: u64,
    /// The breaker's state when it let this attempt through.
    pub(crate) circuit_state: BreakerState,
    /// What was decided after it (retry or not, and why).
    pub(crate) next: Option<NextStep>,
}

/// What was decided after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decided {
    /// Another attempt.
    Retry,
    /// No more: attempts or time used up.
    Stop,
    /// No more: the route's retry budget is spent.
    BudgetExhausted,
}

impl Decided {
    fn as_str(self) -> &'static str {
        match self {
            Decided::Retry => "retry",
            Decided::Stop => "stop",
            Decided::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// The retry decision taken after a failed attempt, with the budget it was taken against.
pub(crate) struct NextStep {
    what: Decided,
    reason: Reason,
    wait: Option<Duration>,
    budget_left: Option<f64>,
}

impl NextStep {
    pub(crate) fn retry(reason: Reason, wait: Duration, budget_left: Option<f64>) -> Self {
        NextStep {
            what: Decided::Retry,
            reason,
            wait: Some(wait),
            budget_left,
        }
    }

    pub(crate) fn stop(reason: Reason) -> Self {
        NextStep {
            what: Decided::Stop,
            reason,
            wait: None,
            budget_left: None,
        }
    }

    pub(crate) fn budget_exhausted(reason: Reason) -> Self {
        NextStep {
            what: Decided::BudgetExhausted,
            reason,
            wait: None,
            budget_left: Some(0.0),
        }
    }
}

/// A finished request's error code and class (`None` when it succeeded).
#[derive(Clone, Copy)]
struct Outcome {
    code: Option<&'static str>,
    class: Option<&'static str>,
}

/// Where in its exchange an attempt failed (DESIGN.md's stages; `dns` comes with
/// resolution errors of their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Connect,
    /// The TLS handshake, after the TCP connect.
    Tls,
    /// Sending the request (the client's body failed on its way).
    WriteRequest,
    /// Waiting for the response head.
    AwaitHeaders,
    /// After the head: the body broke off, stalled or did not parse.
    BodyStream,
    /// The client went away before the response was complete.
    ClientCancelled,
}

impl Stage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::WriteRequest => "write_request",
            Stage::AwaitHeaders => "await_headers",
            Stage::BodyStream => "body_stream",
            Stage::ClientCancelled => "client_cancelled",
        }
    }
}

pub(crate) enum AttemptOutcome {
    /// A response head with this status.
    Status(u16),
    /// Failed with this error code, and the transport's reason when there is one.
    Failed(Code, Option<String>),
    /// The TLS handshake failed (`upstream_connect_failed`, stage `tls`), for this reason.
    TlsFailed(String),
    /// The route timeout expired while waiting.
    TimedOut,
}

impl Attempt {
    fn code(&self) -> &'static str {
        match self.outcome {
            AttemptOutcome::Status(_) => "",
            AttemptOutcome::Failed(code, _) => code.as_str(),
            AttemptOutcome::TlsFailed(_) => Code::UpstreamConnectFailed.as_str(),
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
            AttemptOutcome::Failed(code, None) => {
                format!("attempt {n} to {ep} ({via}) failed after {took}: {}", code.as_str())
            }
            AttemptOutcome::Failed(code, Some(ref why)) => {
                let code = code.as_str();
                format!("attempt {n} to {ep} ({via}) failed after {took}: {code} ({why})")
            }
            AttemptOutcome::TlsFailed(ref why) => {
                format!(
                    "attempt {n} to {ep} ({via}) failed after {took}: upstream_connect_failed (TLS handshake: {why})"
                )
            }
            AttemptOutcome::TimedOut => {
                format!("attempt {n} to {ep} had no response head after {took} (route timeout)")
            }
        }
    }

    /// The attempt as an element of the access line's `attempts` array; `body_code` is the
    /// error of the last attempt's response body when it ended early (stage `body_stream`).
    fn write_json(&self, n: usize, body_code: Option<Code>, f: &mut JsonLine) {
        f.begin_object("");
        f.uint("n", n as u64);
        f.hex("span_id", u128::from(self.span_id), 16);
        f.members(self.endpoint.log_member());
        if let Some(c) = self.conn {
            f.members(if c.reused {
                r#""connection":"reused""#
            } else {
                r#""connection":"fresh""#
            });
            if c.reused {
                f.millis("idle_ms", micros(c.idle_for));
            }
        }
        f.millis("duration_ms", micros(self.took));
        match self.outcome {
            AttemptOutcome::Status(s) => f.uint("status", u64::from(s)),
            _ => f.str("code", self.code()),
        };
        if let Some(code) = body_code {
            f.str("code", code.as_str());
            f.str("stage", Stage::BodyStream.as_str());
        } else if let Some(stage) = self.stage() {
            f.str("stage", stage.as_str());
        }
        match self.circuit_state {
            BreakerState::Closed => f.members(r#""circuit_state":"closed""#),
            state @ (BreakerState::Open | BreakerState::HalfOpen) => f.str("circuit_state", state.as_str()),
        };
        if let Some(next) = &self.next {
            f.str("next", next.what.as_str());
            f.str("retry_reason", next.reason.as_str());
            if let Some(w) = next.wait {
                f.millis("backoff_ms", micros(w));
            }
            if let Some(b) = next.budget_left {
                f.num("retry_budget_left", (b * 10.0).round() / 10.0);
            }
        }
        f.end_object();
    }

    /// Where a failed attempt failed: `connect`, `write_request` (the client's body),
    /// `await_headers`. Timeouts name no stage: the attempt was cut off wherever it was.
    fn stage(&self) -> Option<Stage> {
        let code = match self.outcome {
            AttemptOutcome::Failed(code, _) => code,
            AttemptOutcome::TlsFailed(_) => return Some(Stage::Tls),
            AttemptOutcome::Status(_) => return None,
            AttemptOutcome::TimedOut => Code::UpstreamTimeout,
        };
        // A timeout with no connection was still connecting; with one, the request was
        // being written or its head awaited (not told apart: no stage is claimed).
        if code == Code::UpstreamTimeout && self.conn.is_none() {
            return Some(Stage::Connect);
        }
        match code {
            Code::UpstreamConnectFailed => Some(Stage::Connect),
            Code::UpstreamReset | Code::UpstreamProtocolError => Some(Stage::AwaitHeaders),
            Code::PayloadTooLarge | Code::RequestTimeout | Code::BadRequest => Some(Stage::WriteRequest),
            // Codes an attempt does not fail with, or (a timeout) not at one place.
            Code::UpstreamTimeout
            | Code::RouteNotFound
            | Code::MethodNotAllowed
            | Code::Forbidden
            | Code::HeaderTooLarge
            | Code::UpstreamError
            | Code::CircuitOpen
            | Code::NoHealthyEndpoints
            | Code::Overloaded
            | Code::ShuttingDown
            | Code::FaultInjected
            | Code::Internal => None,
        }
    }
}

/// The record of one request, finished (metrics observed, access line written) exactly once:
/// when the response body is done, or when the request is abandoned.
pub(crate) struct Completion {
    sinks: Arc<Sinks>,
    start: Instant,
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    /// The `Host` (or `:authority`) the client asked for, for `server.address` on the span.
    host: Option<String>,
    route: Option<Arc<RouteRecord>>,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<ProxyError>,
    /// Inline for the usual single attempt: no allocation per request.
    attempts: smallvec::SmallVec<[Attempt; 1]>,
    /// Decisions worth a clause in `cause`: "retry budget exhausted", "breaker open".
    pub(crate) notes: Vec<String>,
    /// The fault injected, as `delay=500ms,abort=503`.
    pub(crate) fault: Option<String>,
    /// A replaced upstream 5xx body: its length (when declared) and content type.
    pub(crate) upstream_body: Option<(Option<u64>, Option<String>)>,
    /// Deliberate waits (backoff, injected delays): not the proxy's overhead.
    pub(crate) waited: Duration,
    /// When the upstream's response head was handed back (for the overhead histogram).
    pub(crate) head_at: Option<Duration>,
    /// The trace this request belongs to.
    pub(crate) trace: crate::http::trace::TraceContext,
    /// The client asked for HTML error pages.
    pub(crate) wants_html: bool,
    /// The fallback served, by the code it stands in for (`stale`: a kept answer).
    pub(crate) fallback: Option<&'static str>,
    /// A kept answer (stale-if-error) was served: its age in seconds.
    pub(crate) stale_age: Option<u64>,
    /// The listener's in-flight slot, held until the response is done.
    pub(crate) admitted: Option<crate::sys::counter::Slot>,
    /// The client's identity from its certificate (mTLS listeners).
    pub(crate) client_identity: Option<Arc<str>>,
    /// The request came over TLS (`url.scheme` https).
    pub(crate) tls: bool,
    body_error: Option<String>,
    body_code: Option<Code>,
    client_gone: bool,
    conn_active: Arc<AtomicUsize>,
}

impl Completion {
    pub(crate) fn start(
        sinks: Arc<Sinks>,
        req: &Request<Incoming>,
        request_id: HeaderValue,
        carried: crate::http::headers::Carried,
        trace: crate::http::trace::TraceContext,
        conn_active: Arc<AtomicUsize>,
        arrived: Instant,
    ) -> Box<Self> {
        conn_active.fetch_add(1, Ordering::Relaxed);
        // Only kept when spans are exported: one allocation the request path need not make.
        let host = sinks.spans.as_ref().and_then(|_| {
            req.uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok().map(str::to_owned))
        });
        // Boxed: the record travels from the request future into the response body, and
        // hyper keeps room for both in every connection, idle or not.
        Box::new(Completion {
            sinks,
            start: arrived,
            request_id,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host,
            route: None,
            status: None,
            error: None,
            attempts: smallvec::SmallVec::new(),
            notes: Vec::new(),
            fault: None,
            fallback: None,
            stale_age: None,
            upstream_body: None,
            trace,
            waited: Duration::ZERO,
            head_at: None,
            wants_html: carried.accept && crate::error::wants_html(req.headers().get(http::header::ACCEPT)),
            admitted: None,
            client_identity: None,
            tls: false,
            body_error: None,
            body_code: None,
            client_gone: false,
            conn_active,
        })
    }

    pub(crate) fn set_route(&mut self, route: Arc<RouteRecord>) {
        route.in_flight.inc();
        self.route = Some(route);
    }

    pub(crate) fn attempt(&mut self, attempt: Attempt) {
        if let Some(route) = &self.route {
            let series = match attempt.outcome {
                AttemptOutcome::Status(s) => route.answered.get(&self.method, Some(s)),
                _ => self.sinks.metrics.client_duration.with_label_values(&[
                    &route.upstream,
                    method_label(&self.method).0,
                    "",
                    attempt.code(),
                ]),
            };
            series.observe(attempt.took.as_secs_f64());
        }
        self.attempts.push(attempt);
    }

    /// Records the retry decision taken after the last attempt.
    pub(crate) fn decided(&mut self, next: NextStep) {
        if let Some(a) = self.attempts.last_mut() {
            a.next = Some(next);
        }
    }

    /// When the request arrived.
    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    /// How many attempts were made so far.
    pub(crate) fn attempts_made(&self) -> usize {
        self.attempts.len()
    }

    /// The response body was delivered, or ended early with this error code and reason.
    pub(crate) fn body_finished(&mut self, error: Option<(Code, String)>) {
        if let Some((code, why)) = error {
            self.body_code = Some(code);
            self.body_error = Some(why);
        }
    }

    /// The longest silence allowed in the upstream's response body (the route's
    /// `body_idle_timeout`); none before a route was chosen.
    pub(crate) fn body_idle_timeout(&self) -> Option<Duration> {
        self.route.as_ref().map(|r| r.body_idle)
    }

    /// The client went away before the response was complete.
    pub(crate) fn client_gone(&mut self) {
        self.client_gone = true;
    }

    /// The why, as one sentence: every attempt, then what happened to the body. None for a
    /// plain success (decided first: the sentence costs several allocations to build).
    fn cause(&self) -> Option<String> {
        let failed = self.error.is_some()
            || self.body_error.is_some()
            || self.client_gone
            || self.status.is_none()
            || self.attempts.len() > 1
            || self.fallback.is_some();
        if !failed {
            return None;
        }
        let mut parts: Vec<String> = self
            .attempts
            .iter()
            .enumerate()
            .map(|(i, a)| a.describe(i + 1))
            .collect();
        parts.extend(self.notes.iter().cloned());
        if let Some(e) = &self.body_error {
            parts.push(e.clone());
        }
        if self.status.is_none() {
            parts.push("the client closed the connection before a response was ready".to_owned());
        } else if self.client_gone {
            parts.push("the client closed the connection before the response body was complete".to_owned());
        }
        if parts.is_empty() {
            self.error.as_ref().map(ProxyError::detail)
        } else {
            Some(parts.join("; "))
        }
    }

    /// Finishes the record, once: the metrics, the spans when sampled, and the access line
    /// when one is due.
    fn record(&mut self) {
        if std::thread::panicking() && self.status.is_none() {
            // The handler panicked: the caller gets a 500 from the panic guard.
            self.status = Some(500);
            self.error = Some(ProxyError::new(crate::error::ErrorKind::internal(
                "the request handler panicked",
            )));
        }
        let duration = self.start.elapsed();
        // Time spent waiting on the upstream: the attempts themselves, not the waits between them.
        let upstream: Duration = self.attempts.iter().map(|a| a.took).sum();
        let outcome = self.outcome();
        self.observe(duration, upstream, outcome);
        if self.trace.sampled
            && let Some(spans) = &self.sinks.spans
        {
            self.export_spans(spans, duration, outcome.code, outcome.class);
        }
        if self.access_line_due(outcome, std::time::Instant::now(), fastrand::f64()) {
            self.write_access_line(duration, upstream, outcome);
        }
    }

    /// The request's error code and class, if it failed: its error, a client that went away
    /// before the head, or a body that broke after it.
    fn outcome(&self) -> Outcome {
        match (&self.error, self.status) {
            (Some(e), _) => Outcome {
                code: Some(e.code()),
                class: Some(e.class().as_str()),
            },
            (None, None) => Outcome {
                code: Some(Stage::ClientCancelled.as_str()),
                class: Some(ErrorClass::Client.as_str()),
            },
            (None, Some(_)) => Outcome {
                code: self.body_code.map(Code::as_str),
                class: self.body_code.map(|_| ErrorClass::Upstream.as_str()),
            },
        }
    }

    /// The request's metrics: its duration (successes through the route's resolved series),
    /// and the proxy's own overhead (the time to the head, less the upstream's and the
    /// deliberate waits).
    fn observe(&self, duration: Duration, upstream: Duration, outcome: Outcome) {
        let route_name = self.route.as_ref().map_or("", |r| &*r.name);
        let series = match (&self.route, outcome.code) {
            (Some(route), None) => route.succeeded.get(&self.method, self.status),
            _ => self.sinks.metrics.server_duration.with_label_values(&[
                route_name,
                method_label(&self.method).0,
                status_label(self.status),
                outcome.code.unwrap_or(""),
                outcome.class.unwrap_or(""),
            ]),
        };
        series.observe(duration.as_secs_f64());
        if let (Some(route), Some(head_at)) = (&self.route, self.head_at) {
            route
                .overhead
                .observe(head_at.saturating_sub(upstream + self.waited).as_secs_f64());
        }
    }

    /// Whether this request gets an access line: failures always, but at most at the
    /// configured rate per code and route (`now`: the caller's clock); successes sampled
    /// (`draw`: a uniform number in `[0, 1)`).
    fn access_line_due(&self, outcome: Outcome, now: std::time::Instant, draw: f64) -> bool {
        if !self.sinks.access_log {
            return false;
        }
        let failed = outcome.code.is_some() || self.fallback.is_some() || self.client_gone;
        if failed {
            let route_name = self.route.as_ref().map_or("(none)", |r| &*r.name);
            let key: Arc<str> = format!("{} on route {route_name}", outcome.code.unwrap_or("fallback")).into();
            self.sinks.log_limiter.allow("access", &key, now)
        } else {
            self.sinks.access_sample_ratio >= 1.0 || draw < self.sinks.access_sample_ratio
        }
    }

    /// The access line: one JSON object with a sentence for a person, the ids, the route,
    /// the attempts and the why.
    fn write_access_line(&self, duration: Duration, upstream: Duration, outcome: Outcome) {
        let (code, class) = (outcome.code, outcome.class);
        let path = self.uri.path();
        let method = &self.method;
        // "GET /pay answered 200 by payments in 4ms." — most lines are this one, so it is
        // written straight into the line; the others are put together first.
        let answered = |msg: &mut String| {
            let by = self.route.as_ref().map_or("-", |r| &*r.upstream);
            let mut digits = itoa::Buffer::new();
            msg.push_str(method.as_str());
            msg.push(' ');
            msg.push_str(path);
            msg.push_str(" answered ");
            msg.push_str(digits.format(self.status.unwrap_or(0)));
            msg.push_str(" by ");
            msg.push_str(by);
            msg.push_str(" in ");
            humanize_into(msg, duration);
            if self.attempts.len() > 1 {
                msg.push_str(" after ");
                msg.push_str(digits.format(self.attempts.len()));
                msg.push_str(" attempts");
            }
            msg.push('.');
        };
        let (level, msg) = match (&self.error, self.status) {
            (e, Some(s)) if let Some(age) = self.stale_age => (
                Level::WARN,
                Some(format!(
                    "{method} {path} was answered {s} from its last good response ({age}s old) instead of {}.",
                    e.as_ref().map_or("upstream_error", |e| e.code())
                )),
            ),
            (_, Some(s)) if self.fallback.is_some() => (
                Level::WARN,
                Some(format!(
                    "{method} {path} was answered {s} by the route's fallback instead of {}.",
                    self.fallback.unwrap_or("a failure")
                )),
            ),
            (Some(e), _) => {
                let level = match e.class() {
                    ErrorClass::Client => Level::INFO,
                    ErrorClass::Upstream => Level::WARN,
                    ErrorClass::Proxy if matches!(e.kind, crate::error::ErrorKind::Internal { .. }) => Level::ERROR,
                    ErrorClass::Proxy => Level::WARN,
                };
                (level, Some(e.detail()))
            }
            (None, None) => (
                Level::INFO,
                Some(format!(
                    "{method} {path}: the client went away after {} before a response was ready.",
                    humanize_ms(duration)
                )),
            ),
            (None, Some(s)) if self.body_error.is_some() => (
                Level::WARN,
                Some(format!(
                    "{method} {path} answered {s}, but the response body ended early."
                )),
            ),
            (None, Some(s)) if self.client_gone => (
                Level::INFO,
                Some(format!(
                    "{method} {path} answered {s}, but the client went away before the body was complete."
                )),
            ),
            (None, Some(_)) => (Level::INFO, None),
        };
        let mut f = match msg {
            Some(msg) => JsonLine::new(level, "access", &msg),
            None => JsonLine::new_with(level, "access", answered),
        };
        f.str("request_id", self.request_id.to_str().unwrap_or(""));
        f.hex("trace_id", self.trace.trace_id, 32);
        f.hex("span_id", u128::from(self.trace.span_id), 16);
        // The caller's span (its attempt's client span when the caller is another
        // outrigger): `outrigger explain --trace` links the hops of a journey by it.
        if let Some(parent) = self.trace.parent_id {
            f.hex("parent_span_id", u128::from(parent), 16);
        }
        if let Some(r) = &self.route {
            f.members(&r.log_members);
        }
        if let Some(id) = &self.client_identity {
            f.str("client_identity", id);
        }
        if let Some(a) = self
            .attempts
            .last()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Status(_)))
        {
            f.members(a.endpoint.log_member());
        }
        match method_member(method) {
            Some(member) => f.members(member),
            None => f.str("method", method.as_str()),
        };
        f.str("path", path);
        if let Some(q) = self.uri.query().filter(|q| !q.is_empty()) {
            f.str("query", &redact_query(q, &self.sinks.redact_query));
        }
        f.members(protocol_member(self.version));
        match self.status {
            Some(s) => f.uint("status", u64::from(s)),
            None => f.null("status"),
        };
        if let Some(c) = code {
            f.str("code", c);
        }
        if let Some(c) = class {
            f.str("class", c);
        }
        f.millis("duration_ms", micros(duration));
        if !self.attempts.is_empty() {
            f.millis("upstream_ms", micros(upstream));
            f.begin_array("attempts");
            let last = self.attempts.len();
            for (i, a) in self.attempts.iter().enumerate() {
                let body_code = self.body_code.filter(|_| i + 1 == last);
                a.write_json(i + 1, body_code, &mut f);
            }
            f.end_array();
        }
        if self.status.is_none() {
            f.str("stage", Stage::ClientCancelled.as_str());
        }
        if let Some(fault) = &self.fault {
            f.str("fault", fault);
        }
        if let Some((len, ty)) = &self.upstream_body {
            match len {
                Some(l) => f.uint("upstream_body_bytes", *l),
                None => f.null("upstream_body_bytes"),
            };
            match ty {
                Some(t) => f.str("upstream_content_type", t),
                None => f.null("upstream_content_type"),
            };
        }
        if let Some(code) = self.fallback {
            f.str("fallback", code);
        }
        if let Some(age) = self.stale_age {
            f.uint("stale_age_s", age);
        }
        if let Some(c) = self.cause() {
            f.str("cause", &c);
        }
        if code.is_some() || self.fallback.is_some() {
            f.remember();
        }
        f.finish();
    }
}

// --- spans: the same record, as OpenTelemetry spans ---

impl Completion {
    /// One server span for the request and one client span per attempt, with the ids that
    /// went out in `traceparent` (so the upstream's spans hang under the right attempt).
    fn export_spans(&self, spans: &SpanQueue, duration: Duration, code: Option<&str>, class: Option<&str>) {
        let start = crate::sys::clock::wall_at(self.start.into_std());
        let end = start.checked_add(duration).unwrap_or(start);
        let trace_id = TraceId::from(self.trace.trace_id);
        let server_id = SpanId::from(self.trace.span_id);
        let method = method_label(&self.method).0;
        let route = self.route.as_ref().map(|r| &*r.name);

        let mut attrs = Vec::with_capacity(14);
        attrs.push(Attribute::new("http.request.method", method));
        if method == "_OTHER" {
            attrs.push(Attribute::new("http.request.method_original", self.method.to_string()));
        }
        if let Some(r) = route {
            attrs.push(Attribute::new("http.route", r.to_owned()));
        }
        attrs.push(Attribute::new("url.path", self.uri.path().to_owned()));
        attrs.push(Attribute::new(
            "url.scheme",
            self.uri
                .scheme_str()
                .unwrap_or(if self.tls { "https" } else { "http" })
                .to_owned(),
        ));
        attrs.push(Attribute::new("network.protocol.name", "http"));
        attrs.push(Attribute::new(
            "network.protocol.version",
            &version_label(self.version)["HTTP/".len()..],
        ));
        if let Some(host) = &self.host {
            let (name, port) = split_host(host);
            attrs.push(Attribute::new("server.address", name.to_owned()));
            if let Some(p) = port {
                attrs.push(Attribute::new("server.port", i64::from(p)));
            }
        }
        if let Some(s) = self.status {
            attrs.push(Attribute::new("http.response.status_code", i64::from(s)));
        }
        if let Some(c) = code {
            attrs.push(Attribute::new("error.type", c.to_owned()));
        }
        if let Some(c) = class {
            attrs.push(Attribute::new("outrigger.error_class", c.to_owned()));
        }
        attrs.push(Attribute::new(
            "outrigger.request_id",
            self.request_id.to_str().unwrap_or("").to_owned(),
        ));
        if let Some(r) = &self.route {
            attrs.push(Attribute::new("outrigger.upstream", (*r.upstream).to_owned()));
        }
        attrs.push(Attribute::new("outrigger.attempts", self.attempts.len() as i64));
        if let Some(fb) = self.fallback {
            attrs.push(Attribute::new("outrigger.fallback", fb));
        }
        if let Some(id) = &self.client_identity {
            attrs.push(Attribute::new("outrigger.client.identity", id.to_string()));
        }
        let failed = code.is_some() && class != Some(ErrorClass::Client.as_str());
        if failed && let Some(c) = self.cause() {
            attrs.push(Attribute::new("outrigger.cause", c));
        }
        let status = match (failed, code) {
            (true, Some(c)) => Status::error(c.to_owned()),
            _ => Status::Unset,
        };
        let name = match route {
            Some(r) => format!("{method} {r}"),
            None => method.to_owned(),
        };
        spans.submit(span(
            spans,
            SpanContext::new(trace_id, server_id, TraceFlags::SAMPLED, false, TraceState::NONE),
            self.trace.parent_id.map_or(SpanId::INVALID, SpanId::from),
            self.trace.parent_id.is_some(),
            SpanKind::Server,
            name,
            (start, end),
            attrs,
            status,
        ));

        let last = self.attempts.len();
        for (i, a) in self.attempts.iter().enumerate() {
            let n = i + 1;
            let a_start = start + a.offset;
            let mut attrs = Vec::with_capacity(12);
            attrs.push(Attribute::new("http.request.method", method));
            let addr = a.endpoint.addr();
            attrs.push(Attribute::new("server.address", addr.ip().to_string()));
            attrs.push(Attribute::new("server.port", i64::from(addr.port())));
            attrs.push(Attribute::new("outrigger.attempt", n as i64));
            attrs.push(Attribute::new("outrigger.circuit_state", a.circuit_state.as_str()));
            let error_type = match a.outcome {
                AttemptOutcome::Status(s) => {
                    attrs.push(Attribute::new("http.response.status_code", i64::from(s)));
                    // The client-span convention: 4xx and 5xx answers are errors, typed by status.
                    (s >= 400).then(|| s.to_string())
                }
                _ => Some(a.code().to_owned()),
            };
            let stage = if n == last && self.body_code.is_some() {
                Some(Stage::BodyStream)
            } else {
                a.stage()
            };
            if let Some(stage) = stage {
                attrs.push(Attribute::new("outrigger.stage", stage.as_str()));
            }
            if let Some(c) = a.conn {
                attrs.push(Attribute::new(
                    "outrigger.connection",
                    if c.reused { "reused" } else { "fresh" },
                ));
                if c.reused {
                    attrs.push(Attribute::new("outrigger.connection.idle_ms", ms(c.idle_for)));
                }
            }
            if let Some(next) = &a.next {
                attrs.push(Attribute::new("outrigger.retry.next", next.what.as_str()));
                attrs.push(Attribute::new("outrigger.retry.reason", next.reason.as_str()));
                if let Some(b) = next.budget_left {
                    attrs.push(Attribute::new("outrigger.retry.budget_left", b));
                }
            }
            let status = match &error_type {
                Some(t) => {
                    attrs.push(Attribute::new("error.type", t.clone()));
                    Status::error(a.describe(n))
                }
                None => Status::Unset,
            };
            spans.submit(span(
                spans,
                SpanContext::new(
                    trace_id,
                    SpanId::from(a.span_id),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                ),
                server_id,
                false,
                SpanKind::Client,
                method.to_owned(),
                (a_start, a_start + a.took),
                attrs,
                status,
            ));
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one plain constructor for the SDK's span record"
)]
fn span(
    spans: &SpanQueue,
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    kind: SpanKind,
    name: String,
    (start, end): (SystemTime, SystemTime),
    attributes: Vec<Attribute>,
    status: Status,
) -> FinishedSpan {
    FinishedSpan {
        span_context: context,
        parent_span_id: parent,
        parent_span_is_remote: parent_is_remote,
        span_kind: kind,
        name: name.into(),
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: spans.scope().clone(),
    }
}

/// `host[:port]` (or `[v6]:port`) split for `server.address` and `server.port`.
fn split_host(host: &str) -> (&str, Option<u16>) {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.is_empty() && (!n.contains(':') || n.ends_with(']')) => (n, p.parse().ok()),
        _ => (host, None),
    };
    (name.trim_start_matches('[').trim_end_matches(']'), port)
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
    micros(d) as f64 / 1000.0
}

/// `d` in whole microseconds, rounded: access lines print it as milliseconds (`4.124`).
fn micros(d: Duration) -> u64 {
    (d.as_secs_f64() * 1_000_000.0).round() as u64
}

/// The `method` member of an access line for the common methods, rendered ahead of time.
fn method_member(m: &Method) -> Option<&'static str> {
    Some(match m.as_str() {
        "GET" => r#""method":"GET""#,
        "POST" => r#""method":"POST""#,
        "PUT" => r#""method":"PUT""#,
        "DELETE" => r#""method":"DELETE""#,
        "PATCH" => r#""method":"PATCH""#,
        "HEAD" => r#""method":"HEAD""#,
        "OPTIONS" => r#""method":"OPTIONS""#,
        _ => return None,
    })
}

/// The `protocol` member of an access line, rendered ahead of time.
fn protocol_member(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => r#""protocol":"HTTP/0.9""#,
        Version::HTTP_10 => r#""protocol":"HTTP/1.0""#,
        Version::HTTP_2 => r#""protocol":"HTTP/2""#,
        Version::HTTP_3 => r#""protocol":"HTTP/3""#,
        _ => r#""protocol":"HTTP/1.1""#,
    }
}

/// `HTTP/1.1` and the like: the value in [`protocol_member`].
fn version_label(v: Version) -> &'static str {
    let member = protocol_member(v);
    &member[r#""protocol":""#.len()..member.len() - 1]
}

/// The query string with the values of the listed parameters replaced by `[redacted]`
/// (names compared case-insensitively, before and after percent-decoding is not needed:
/// a parameter name with escapes is redacted too, to be safe).
pub(crate) fn redact_query(query: &str, redact: &[String]) -> String {
    query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let plain = name.to_ascii_lowercase();
            if value.is_empty() || (!redact.contains(&plain) && !name.contains('%')) {
                pair.to_owned()
            } else {
                format!("{name}=[redacted]")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::redact_query;

    #[test]
    fn listed_parameters_lose_their_values() {
        let r = vec!["token".to_owned(), "password".to_owned()];
        assert_eq!(
            redact_query("card=1&token=abc&TOKEN=x&password=&flag", &r),
            "card=1&token=[redacted]&TOKEN=[redacted]&password=&flag"
        );
        assert_eq!(
            redact_query("to%6Ben=abc", &r),
            "to%6Ben=[redacted]",
            "escaped names are redacted to be safe"
        );
    }
}
