//! The request path, top to bottom, in the order a request meets each step.
//!
//! ```text
//! context    request id (keep a sane inbound x-request-id, else a new UUID v7), start time
//! admission  the listener's max_in_flight -> 503 overloaded (no queue)
//! guard      request head within the listener's limit (framing is checked by hyper)
//! route      host / path / method / headers -> route_not_found; absolute-form needs a host rule
//! fault      configured (or, if allowed, requested) delay and abort, for rehearsals
//! deadline   route timeout, shortened by an inbound grpc-timeout
//! rewrite    hop-by-hop headers out, forwarding headers in (inbound listeners), origin-form URI
//! retry      attempts within the deadline, per-try timeout, backoff, budget, replay buffer
//!   breaker    the upstream's circuit breaker and concurrency limit -> circuit_open
//!   balance    P2C over healthy endpoints -> no_healthy_endpoints
//!   pool       a pooled or fresh connection, HTTP/1.1 or HTTP/2
//! fallback   the route's degraded answer for upstream-class failures
//! respond    the upstream's head and streaming body, or the error rendered for the caller
//! finish     metrics and one access-log line when the body has been delivered (record.rs)
//! ```

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use outrigger_config::Role;
use outrigger_resilience::BreakerState;
use outrigger_resilience::deadline::{format_grpc_timeout, parse_grpc_timeout};

use crate::body::replay::ReplayBody;
use crate::body::{ClientBody, RequestBody};
use crate::error::{self, ErrorClass, ErrorKind, ProxyError, RenderContext};
use crate::http::headers::{self, X_REQUEST_ID};
use crate::http::trace::{TRACEPARENT, TRACESTATE, TraceContext};
use crate::policy::balance::Health;
use crate::policy::fault::{self, FAULT_HEADER};
use crate::policy::retry::{self, Decision, Reason};
use crate::record::{Attempt, AttemptOutcome, Completion, NextStep};
use crate::respond::{ProxyBody, ResponseBody};
use crate::router::{RouteQuery, split_authority};
use crate::runtime::upstream::{AttemptResponse, UpstreamRt};
use crate::runtime::{FallbackRt, RouteRt, Runtime};

/// Facts about the client connection a request arrived on.
pub struct ConnCtx {
    /// Index of the listener in the config.
    pub listener: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// Requests in flight on this connection (the idle timeout only closes at zero).
    pub active: Arc<AtomicUsize>,
    /// The forwarding header values for this peer, made once.
    pub forwarding: headers::Forwarding,
    /// The timer of this connection's attempts, kept between them ([`ConnCtx::attempt_timer`]).
    pub(crate) attempt_timer: std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnCtx {
    /// A timer set to `deadline` for one upstream attempt: the connection's own, reset, when
    /// no other attempt holds it. A fresh timer per attempt was registered with the runtime's
    /// timer wheel and removed again each time (about 2.5 % of a request's instructions);
    /// moving a registered timer later is one atomic update. Concurrent attempts (HTTP/2
    /// streams) beyond the first get a timer of their own. Give it back with
    /// [`ConnCtx::keep_attempt_timer`].
    fn attempt_timer(&self, deadline: Instant) -> Pin<Box<tokio::time::Sleep>> {
        let kept = self
            .attempt_timer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match kept {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn keep_attempt_timer(&self, timer: Pin<Box<tokio::time::Sleep>>) {
        *self
            .attempt_timer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(timer);
    }
}

/// `work`'s output, or `None` if `timer` fires first (`work` is polled first, so an answer
/// that is ready when the time runs out still counts). `work` is pinned by the caller: moving
/// an attempt's state (about 1.1 KiB) into this future cost two copies per attempt.
async fn before<F: Future>(mut timer: Pin<&mut tokio::time::Sleep>, mut work: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// How one attempt ended, before deciding whether to retry.
enum Tried {
    Answered(AttemptResponse),
    Failed(ProxyError),
}

impl Runtime {
    /// Serves one request. Never fails: every failure becomes a response.
    /// `request_id` is the sane inbound `x-request-id` or a new one ([`headers::request_id`]).
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ConnCtx>,
        request_id: HeaderValue,
        carried: headers::Carried,
        arrived: Instant,
    ) -> Response<ResponseBody> {
        // --- context ---
        let trace = TraceContext::from_request(req.headers(), carried, self.accept_b3, self.sample_ratio);
        let mut done = Completion::start(
            self.sinks.clone(),
            &req,
            request_id.clone(),
            carried,
            trace,
            conn.active.clone(),
            arrived,
        );
        let grpc = carried.content_type && is_grpc(req.headers());
        let Some(listener) = self.listeners.get(conn.listener) else {
            return self.fail(
                done,
                ProxyError::new(ErrorKind::internal(
                    "the connection names a listener this config does not have",
                )),
                grpc,
            );
        };

        // --- admission ---
        if listener.role == Role::Inbound && self.draining.load(Ordering::Relaxed) {
            return self.fail(done, ProxyError::new(ErrorKind::ShuttingDown), grpc);
        }
        let Some(admitted) = listener.admit() else {
            return self.fail(
                done,
                ProxyError::new(ErrorKind::Overloaded {
                    limit: listener.max_in_flight,
                }),
                grpc,
            );
        };
        done.admitted = Some(admitted);

        // --- guard ---
        // Ambiguous framing (Content-Length with Transfer-Encoding, conflicting lengths,
        // obs-fold) never gets this far: hyper frames by Transfer-Encoding alone, drops
        // Content-Length and closes the connection after the response, or answers 400.
        if headers::head_size(req.method(), req.uri(), req.headers()) > listener.max_header_bytes {
            let err = ProxyError::new(ErrorKind::HeaderTooLarge {
                limit: listener.max_header_bytes,
            });
            return self.fail(done, err, grpc);
        }
        if !headers::valid_percent_encoding(req.uri().path()) {
            let reason = "its path has a `%` not followed by two hex digits";
            return self.fail(done, ProxyError::new(ErrorKind::BadRequest { reason }), grpc);
        }
        if req.method() == Method::CONNECT {
            let reason = "CONNECT is not supported (outrigger forwards HTTP requests; it does not open tunnels)";
            return self.fail(done, ProxyError::new(ErrorKind::BadRequest { reason }), grpc);
        }

        // --- route ---
        let absolute_form = req.version() <= Version::HTTP_11 && req.uri().authority().is_some();
        // What is routed on here is what the upstream gets as `Host` (`rewrite`).
        let authority = match routed_authority(&req, carried.host, absolute_form) {
            Ok(a) => a,
            Err(reason) => return self.fail(done, ProxyError::new(ErrorKind::BadRequest { reason }), grpc),
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
        let request = crate::router::Request {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        };
        let Some(route) = self.router.find(&request, &query).map(|(_, rt)| rt.clone()) else {
            let allowed = self.router.allowed_methods(&request, &query);
            let kind = if allowed.is_empty() {
                ErrorKind::RouteNotFound
            } else {
                ErrorKind::MethodNotAllowed { allowed }
            };
            return self.fail(done, ProxyError::new(kind), grpc);
        };
        done.set_route(route.record.clone());
        if let Some(limit) = route.max_body_bytes
            && req.body().size_hint().lower() > limit
        {
            return self.fail(done, located(ErrorKind::PayloadTooLarge { limit }, &route), grpc);
        }
        if self.panic_path.as_deref() == Some(req.uri().path()) {
            panic!("OUTRIGGER_TEST_PANIC_PATH requested a panic for {}", req.uri().path());
        }

        // --- fault ---
        if let Some(f) = &route.fault {
            let chosen = match fault::choose(f, req.headers()) {
                Ok(c) => c,
                Err(reason) => return self.fail(done, located(ErrorKind::BadRequest { reason }, &route), grpc),
            };
            if chosen.delay.is_some() || chosen.abort.is_some() {
                route.faults.inc();
                done.fault = Some(chosen.describe());
            }
            if let Some(d) = chosen.delay {
                tokio::time::sleep(d).await;
                done.waited += d;
            }
            if let Some(status) = chosen.abort {
                return self.fail(done, located(ErrorKind::FaultInjected { status }, &route), grpc);
            }
        }

        // --- deadline ---
        let grpc_timeout = if grpc {
            req.headers()
                .get(headers::GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        } else {
            None
        };
        let budget = grpc_timeout.map_or(route.timeout, |t| t.min(route.timeout));
        // Counted from the request's arrival (one clock read serves the record and this).
        // Config durations are bounded, but a clock overflow must never be a panic here.
        let deadline = done
            .started()
            .checked_add(budget)
            .unwrap_or_else(|| done.started() + Duration::from_secs(365 * 24 * 3600));

        // --- rewrite ---
        let upgrading = req.version() == Version::HTTP_11 && carried.upgrade && headers::is_upgrade(req.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let mut added = crate::http::added::Added::new(request_id.clone());
        rewrite(
            &mut parts,
            &mut added,
            absolute_form,
            upgrading,
            carried,
            listener.role,
            &conn.forwarding,
        );
        if grpc_timeout.is_some() {
            parts.headers.remove(headers::GRPC_TIMEOUT);
        }
        let replay_limit = route.retry.replay_limit(&parts.method);
        let empty = body.is_end_stream();
        let body = ClientBody::new(body, route.max_body_bytes, listener.body_idle);
        let (mut first_body, replay) = if empty {
            (Some(RequestBody::Empty), None)
        } else if let Some(limit) = replay_limit.filter(|l| body.size_hint().lower() <= *l as u64) {
            let handle = ReplayBody::new(body, limit);
            (handle.replay().map(RequestBody::Replay), Some(handle))
        } else {
            // Declared larger than the replay buffer (or not retryable): sent once, as it comes.
            (Some(RequestBody::Incoming(Box::new(body))), None)
        };
        let body_empty = replay.is_none() && matches!(first_body, Some(RequestBody::Empty));

        // --- retry ---
        let upstream = route.upstream.clone();
        let http2 = upstream.uses_http2(grpc, upgrading);
        route.retry.deposit(done.started());
        let mut fresh_only = false;
        let mut race_retried = false;
        let tried = loop {
            let n = done.attempts_made() as u32 + 1;
            // One clock read per attempt start and one per attempt end: the breaker, the
            // balancer, the pool, the latency baseline and the attempt timer take their time
            // from these.
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            if remaining.is_zero() {
                break Tried::Failed(located(ErrorKind::UpstreamTimeout { after: budget }, &route));
            }
            // --- breaker ---
            let permit = match upstream.circuit.admit(started) {
                Ok(p) => p,
                Err(kind) => break Tried::Failed(located(kind, &route)),
            };
            // --- balance ---
            let Some(endpoint) = upstream.endpoints.pick(started) else {
                let known = upstream.endpoints.len();
                break Tried::Failed(located(ErrorKind::NoHealthyEndpoints { known }, &route));
            };
            // --- pool ---
            let body = match first_body.take() {
                Some(b) => b,
                None if body_empty => RequestBody::Empty,
                None => match replay.as_ref().and_then(ReplayBody::replay) {
                    Some(r) => RequestBody::Replay(r),
                    // Cannot happen: the loop only continues when a replay exists.
                    None => {
                        break Tried::Failed(located(
                            ErrorKind::internal("a retry was started without a replayable body"),
                            &route,
                        ));
                    }
                },
            };
            // Each attempt's own fields (its span in `traceparent`, the time left in
            // `grpc-timeout`) replace the previous attempt's beside the client's head, which
            // is written as it is (HTTP/1.1) or copied once (HTTP/2), never cloned per attempt.
            let span_id = added.set_trace(&done.trace);
            if grpc_timeout.is_some() {
                added.grpc_timeout = HeaderValue::from_str(&format_grpc_timeout(remaining)).ok();
            }
            let per_try = route.retry.per_try_timeout().filter(|p| *p < remaining);
            let in_flight = endpoint.start();
            // Not boxed: hyper keeps room for this request future in every client connection,
            // idle or not, so the send's state (about 1.1 KiB) costs each idle connection
            // about 0.5 KiB of RSS; boxing it cost a large allocation and a copy per attempt
            // (1.8 % of the proxy's instructions per request, benches/instructions.sh).
            let mut timer = conn.attempt_timer(started + per_try.unwrap_or(remaining));
            let work = std::pin::pin!(UpstreamRt::send_to(
                &endpoint.pool,
                &parts,
                &added,
                body,
                http2,
                fresh_only,
                started
            ));
            let mut sent = before(timer.as_mut(), work).await;
            conn.keep_attempt_timer(timer);
            let finished = Instant::now();
            let took = finished.saturating_duration_since(started);
            drop(in_flight);
            if let Some(Ok(answer)) = &mut sent {
                answer.response.body_mut().headed_at(finished);
            }

            let (tried, conn_info) = match sent {
                None => {
                    let after = per_try.unwrap_or(budget);
                    (
                        Tried::Failed(located(ErrorKind::UpstreamTimeout { after }, &route)),
                        None,
                    )
                }
                Some(Err(f)) => {
                    let mut err = located(f.kind, &route);
                    err.endpoint = Some(endpoint.pool.label().to_owned());
                    (Tried::Failed(err), f.conn)
                }
                Some(Ok(answer)) => {
                    let conn = answer.conn;
                    (Tried::Answered(answer), Some(conn))
                }
            };

            // What the breaker, the balancer and the record make of it.
            let (failed, what, outcome, backoff) = match &tried {
                Tried::Answered(a) => {
                    let status = a.response.status();
                    let backoff = (status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE)
                        .then(|| retry::retry_after(a.response.headers()).unwrap_or(Duration::from_secs(1)))
                        .filter(|_| {
                            status == StatusCode::TOO_MANY_REQUESTS
                                || a.response.headers().contains_key(http::header::RETRY_AFTER)
                        });
                    let failed = upstream.circuit.status_fails(status.as_u16());
                    (
                        failed,
                        // Only a failure's description is ever read (by the breaker's "why").
                        if failed {
                            format!("status {}", status.as_u16())
                        } else {
                            String::new()
                        },
                        AttemptOutcome::Status(status.as_u16()),
                        backoff,
                    )
                }
                Tried::Failed(e) => {
                    let why = match &e.kind {
                        ErrorKind::UpstreamConnectFailed { reason } => Some(reason.clone()),
                        ErrorKind::UpstreamProtocolError { what } => Some((*what).to_owned()),
                        _ => None,
                    };
                    let timed_out = matches!(e.kind, ErrorKind::UpstreamTimeout { .. }) && per_try.is_none();
                    let outcome = if timed_out {
                        AttemptOutcome::TimedOut
                    } else {
                        AttemptOutcome::Failed(e.code(), why)
                    };
                    // A client whose upload broke off says nothing about the upstream.
                    let upstream_fault = e.class() == ErrorClass::Upstream;
                    (upstream_fault, e.code().to_owned(), outcome, None)
                }
            };
            let circuit_state = permit.state();
            match upstream.circuit.record(finished, permit, failed, took, &what) {
                Some(BreakerState::Open) => done.notes.push(format!("the breaker of '{}' opened", upstream.name)),
                Some(BreakerState::Closed) => done.notes.push(format!("the breaker of '{}' closed", upstream.name)),
                _ => {}
            }
            let latency = match &tried {
                Tried::Answered(_) => Some(took),
                Tried::Failed(e) if matches!(e.kind, ErrorKind::UpstreamTimeout { .. }) => Some(took),
                Tried::Failed(_) => None,
            };
            if let Some(took) = latency {
                upstream.observe_latency(took, finished);
            }
            if let Health::Ejected(period) = upstream.endpoints.record(finished, &endpoint, failed, latency, backoff) {
                tracing::warn!(
                    kind = "outlier",
                    upstream = %upstream.name,
                    endpoint = %endpoint.pool.label(),
                    eject_for_ms = period.as_millis() as u64,
                    "Endpoint {} of '{}' ejected for {} after repeated failures (last: {what}).",
                    endpoint.pool.label(),
                    upstream.name,
                    outrigger_resilience::humanize(period),
                );
            }
            done.attempt(Attempt {
                endpoint: endpoint.pool.clone(),
                conn: conn_info,
                offset: started.saturating_duration_since(done.started()),
                took,
                outcome,
                span_id,
                circuit_state: circuit_state.as_str(),
                next: None,
            });

            // --- retry decision ---
            let can_replay = body_empty || replay.as_ref().is_some_and(ReplayBody::is_replayable);
            let reused = conn_info.filter(|c| c.reused);
            if let (Tried::Failed(e), Some(c)) = (&tried, reused)
                && matches!(e.kind, ErrorKind::UpstreamReset)
                && !race_retried
                && can_replay
                && retry::idempotent(&parts.method)
            {
                // The keep-alive race: the upstream closed an idle connection as we reused
                // it. Once, on a fresh connection, outside the budget.
                upstream.keepalive_race(c.idle_for);
                race_retried = true;
                fresh_only = true;
                route.retry.count(Reason::KeepAliveRace);
                done.decided(NextStep::retry(Reason::KeepAliveRace, Duration::ZERO, None));
                continue;
            }
            fresh_only = false;
            let reason = match &tried {
                Tried::Answered(a) => route
                    .retry
                    .reason_for_response(a.response.status(), a.response.headers()),
                Tried::Failed(e) => route.retry.reason_for_failure(&e.kind),
            };
            let Some(reason) = reason.filter(|_| can_replay && replay_limit.is_some()) else {
                break tried;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let upstream_wait = match &tried {
                Tried::Answered(a) => retry::retry_after(a.response.headers()),
                Tried::Failed(_) => None,
            };
            match route.retry.decide(n, reason, remaining, upstream_wait) {
                Decision::Stop => {
                    done.decided(NextStep::stop(reason));
                    break tried;
                }
                Decision::BudgetExhausted => {
                    done.notes.push(format!(
                        "no retry: the route's retry budget is spent ({reason} not retried)",
                        reason = reason.as_str()
                    ));
                    done.decided(NextStep::budget_exhausted(reason));
                    break tried;
                }
                Decision::RetryAfter(wait, reason) => {
                    route.retry.count(reason);
                    done.decided(NextStep::retry(reason, wait, Some(route.retry.budget_left())));
                    drop(tried);
                    tokio::time::sleep(wait).await;
                    done.waited += wait;
                }
            }
        };

        // --- fallback ---
        let answer = match tried {
            Tried::Failed(err) => {
                if err.class() == ErrorClass::Upstream
                    && let Some(fb) = &route.fallback
                {
                    return self.fallback(done, &route, fb, err.code(), Some(err));
                }
                return self.fail(done, err, grpc);
            }
            Tried::Answered(a) => a,
        };
        let status = answer.response.status();
        if status.is_server_error() {
            if let Some(fb) = &route.fallback {
                return self.fallback(done, &route, fb, "upstream_error", None);
            }
            if self.normalize_5xx && !is_problem_json(answer.response.headers()) {
                return self.normalized(done, &route, answer, grpc);
            }
        }

        // --- respond ---
        // The request's head is done with: its map serves a later response ([`headers::spare_map`]).
        headers::recycle_map(std::mem::take(&mut parts.headers));
        let mut response = answer.response;
        if let Some(client_upgrade) = client_upgrade.filter(|_| status == StatusCode::SWITCHING_PROTOCOLS)
            && let Some(upstream_upgrade) = response.body_mut().take_upgrade()
        {
            tokio::spawn(crate::respond::tunnel(
                client_upgrade,
                upstream_upgrade,
                upstream.name.clone(),
            ));
        }
        let (mut head, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut head.headers, status == StatusCode::SWITCHING_PROTOCOLS);
        head.headers.insert(X_REQUEST_ID, request_id);
        head.version = done.version;
        done.status = Some(status.as_u16());
        done.head_at = Some(done.started().elapsed());
        let body = ResponseBody::new(ProxyBody::Upstream(body), Some(done));
        let body = if grpc_timeout.is_some() {
            body.with_deadline(deadline, budget)
        } else {
            body
        };
        Response::from_parts(head, body)
    }

    /// An upstream 5xx whose body is not problem+json: keep the status and headers, replace
    /// the body (it may hold stack traces, SQL, secrets) with problem+json `upstream_error`,
    /// and log only the original body's length and type.
    fn normalized(
        &self,
        mut done: Box<Completion>,
        route: &RouteRt,
        answer: AttemptResponse,
        grpc: bool,
    ) -> Response<ResponseBody> {
        let (head, _dropped_body) = answer.response.into_parts();
        let status = head.status.as_u16();
        done.upstream_body = Some((
            head.headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            head.headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ));
        let mut response = self.fail(done, located(ErrorKind::UpstreamError { status }, route), grpc);
        if !grpc {
            let mut kept = head.headers;
            headers::strip_hop_by_hop(&mut kept, false);
            for name in [
                CONTENT_LENGTH,
                CONTENT_TYPE,
                http::header::CONTENT_ENCODING,
                http::header::TRANSFER_ENCODING,
            ] {
                kept.remove(name);
            }
            for (name, value) in kept {
                if let Some(name) = name {
                    response.headers_mut().entry(name).or_insert(value);
                }
            }
        }
        response
    }

    fn fallback(
        &self,
        mut done: Box<Completion>,
        route: &RouteRt,
        fb: &FallbackRt,
        code: &'static str,
        err: Option<ProxyError>,
    ) -> Response<ResponseBody> {
        route.fallbacks.inc();
        let mut r = Response::new(ProxyBody::full(fb.body.clone()));
        *r.status_mut() = fb.status;
        *r.version_mut() = done.version;
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, fb.content_type.clone());
        h.insert(CONTENT_LENGTH, HeaderValue::from(fb.body.len()));
        h.insert("outrigger-fallback", HeaderValue::from_static(code));
        h.insert(X_REQUEST_ID, done.request_id.clone());
        done.status = Some(fb.status.as_u16());
        done.fallback = Some(code);
        done.error = err;
        let (head, body) = r.into_parts();
        let body = if done.method == Method::HEAD {
            ProxyBody::empty()
        } else {
            body
        };
        Response::from_parts(head, ResponseBody::new(body, Some(done)))
    }

    fn fail(&self, mut done: Box<Completion>, err: ProxyError, grpc: bool) -> Response<ResponseBody> {
        let cx = RenderContext {
            request_id: done.request_id.to_str().unwrap_or(""),
            path: done.uri.path(),
            grpc,
            head: done.method == Method::HEAD,
            html: done.wants_html,
            trace_id: Some(done.trace.trace_id_hex()),
            type_base: &self.type_base,
        };
        let mut response = error::render(&err, &cx);
        *response.version_mut() = done.version;
        let (mut parts, body) = response.into_parts();
        if matches!(err.kind, ErrorKind::BadRequest { .. } | ErrorKind::ShuttingDown)
            && done.version <= Version::HTTP_11
        {
            // After a malformed request the rest of the connection cannot be trusted.
            parts
                .headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ErrorKind::Internal { context } = &err.kind {
            self.metrics.internal_errors.inc();
            tracing::error!(kind = "internal", request_id = %done.request_id.to_str().unwrap_or(""), context = %context,
                "Bug in outrigger while serving {} {}: {context}. The request was answered 500; please report this line.", done.method, done.uri.path());
        }
        done.status = Some(parts.status.as_u16());
        done.error = Some(err);
        Response::from_parts(parts, ResponseBody::new(ProxyBody::rendered(body), Some(done)))
    }

    /// The answer to a request whose handler panicked: 500 internal, counted and logged at
    /// error level. The connection and the process carry on.
    pub fn panicked(
        &self,
        request_id: &HeaderValue,
        version: Version,
        panic: &(dyn std::any::Any + Send),
    ) -> Response<ResponseBody> {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        self.metrics.internal_errors.inc();
        tracing::error!(kind = "internal", request_id = %request_id.to_str().unwrap_or(""), panic = %what,
            "Bug in outrigger: a request handler panicked ({what}). The request was answered 500 and the proxy keeps serving; please report this line.");
        let err = ProxyError::new(ErrorKind::internal(what));
        let cx = RenderContext {
            request_id: request_id.to_str().unwrap_or(""),
            path: "",
            grpc: false,
            head: false,
            html: false,
            trace_id: None,
            type_base: &self.type_base,
        };
        let mut response = error::render(&err, &cx);
        *response.version_mut() = version;
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, ResponseBody::new(ProxyBody::rendered(body), None))
    }
}

fn located(kind: ErrorKind, route: &RouteRt) -> ProxyError {
    ProxyError {
        kind,
        route: Some(route.name.to_string()),
        upstream: Some(route.upstream.name.to_string()),
        endpoint: None,
    }
}

/// The authority a request is routed on, and the `Host` its upstream gets: the request
/// target's when it has one (absolute form, or HTTP/2's `:authority`: RFC 9112 §3.2.2,
/// RFC 9113 §8.3.1), else its one `Host` field. Two `Host` fields, an invalid one, or an
/// HTTP/1.1 request without one are malformed (RFC 9112 §3.2): the reason, for a 400.
fn routed_authority(
    req: &Request<Incoming>,
    carries_host: bool,
    absolute_form: bool,
) -> Result<Option<&str>, &'static str> {
    let mut host = None;
    if carries_host {
        let headers = req.headers();
        host = headers.get(HOST);
        // Only a map with a repeated name can hold two `Host` fields (the count is free).
        if headers.len() != headers.keys_len() && headers.get_all(HOST).iter().nth(1).is_some() {
            return Err("it has more than one Host field");
        }
    }
    let host = match host {
        Some(h) => Some(
            h.to_str()
                .ok()
                .filter(|h| headers::valid_authority(h.as_bytes()))
                .ok_or("its Host field is not a valid host[:port]")?,
        ),
        None if req.version() == Version::HTTP_11 => return Err("an HTTP/1.1 request must carry a Host field"),
        None => None,
    };
    if (absolute_form || req.version() == Version::HTTP_2)
        && let Some(a) = req.uri().authority()
    {
        return Ok(Some(a.as_str()));
    }
    Ok(host)
}

/// Turns the client's request head into the upstream's: origin-form URI, `Host` set to the
/// authority the request was routed on ([`routed_authority`]; empty when it had none, as
/// RFC 9112 §3.2 asks), hop-by-hop headers out, forwarding fields set on inbound listeners,
/// no fault header, and the client's own copies of the fields this proxy sets (`added`:
/// request id, trace context) taken out.
fn rewrite(
    parts: &mut Parts,
    added: &mut crate::http::added::Added,
    absolute_form: bool,
    upgrading: bool,
    carried: headers::Carried,
    role: Role,
    forwarding: &headers::Forwarding,
) {
    let target_authority = if absolute_form || parts.version == Version::HTTP_2 {
        parts.uri.authority()
    } else {
        None
    };
    if let Some(a) = target_authority {
        // Carved, not allocated (`arena`); an authority the URI parser took is a valid value.
        if let Ok(a) = HeaderValue::from_maybe_shared(crate::sys::arena::copy(a.as_str().as_bytes())) {
            parts.headers.insert(HOST, a);
        }
    } else if !carried.host {
        parts.headers.insert(HOST, HeaderValue::from_static(""));
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgrading);
    if role == Role::Inbound {
        added.forward(&mut parts.headers, carried.forwarding, forwarding);
    }
    // Most requests carry none of these: the scan said which to look for.
    if carried.request_id {
        parts.headers.remove(X_REQUEST_ID);
    }
    if carried.traceparent {
        parts.headers.remove(TRACEPARENT);
    }
    if carried.tracestate {
        parts.headers.remove(TRACESTATE);
    }
    if carried.fault {
        parts.headers.remove(FAULT_HEADER);
    }
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = Uri::from(pq);
    }
    parts.extensions = http::Extensions::new();
}

fn is_problem_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
