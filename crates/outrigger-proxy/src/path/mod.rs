//! The request path, top to bottom, in the order a request meets each phase.
//!
//! ```text
//! context    request id (keep a sane inbound x-request-id, else a new UUID v7), trace, start time
//! admission  draining? the listener's max_in_flight -> 503 shutting_down / overloaded (admit.rs)
//! guard      head within the listener's limit, valid path escapes, no CONNECT (admit.rs)
//! route      Host / :authority, path, method, headers -> route_not_found (route.rs)
//! fault      configured (or, if allowed, requested) delay and abort, for rehearsals (route.rs)
//! deadline   route timeout, shortened by an inbound grpc-timeout
//! rewrite    Host, hop-by-hop headers out, forwarding fields in, origin-form URI, body plan (rewrite.rs)
//! retry      attempts within the deadline, per-try timeout, backoff, budget (attempt.rs), each:
//!   breaker    the upstream's circuit breaker and concurrency limit -> circuit_open
//!   balance    P2C over healthy endpoints -> no_healthy_endpoints
//!   pool       a pooled or fresh connection, HTTP/1.1 or HTTP/2
//! fallback   the route's degraded answer for upstream-class failures (answer.rs)
//! respond    the upstream's head and streaming body, or the error rendered (answer.rs)
//! finish     metrics and one access-log line when the body has been delivered (crate::record)
//! ```

mod admit;
mod answer;
mod attempt;
mod rewrite;
mod route;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use outrigger_resilience::deadline::parse_grpc_timeout;

use crate::error::{ErrorKind, ProxyError};
use crate::http::headers;
use crate::http::trace::TraceContext;
use crate::record::Completion;
use crate::respond::ResponseBody;
use crate::runtime::{ListenerRt, RouteRt, Runtime};

pub(crate) use rewrite::Forward;
use rewrite::Target;

/// Facts about the client connection a request arrived on.
pub(crate) struct ConnCtx {
    /// The listener's name: a reload may reorder or remove listeners, so a request finds
    /// its listener in the live runtime by name.
    pub listener: Arc<str>,
    /// The listener's index in the runtime that was live when the connection was accepted
    /// (almost always still right: checked, then used without a search).
    pub listener_hint: usize,
    /// Requests in flight on this connection (the idle timeout only closes at zero).
    pub active: Arc<AtomicUsize>,
    /// The forwarding header values for this peer, made once.
    pub forwarding: headers::Forwarding,
    /// The client's identity from its certificate (mTLS listeners).
    pub(crate) identity: Option<crate::tls::PeerIdentity>,
    /// Where the client's connection was going: its original destination when it was
    /// redirected to the listener (transparent mode), else the listener's own address.
    pub(crate) destination: std::net::SocketAddr,
    /// The connection was redirected to the listener (transparent mode).
    pub(crate) redirected: bool,
    /// The timer of this connection's attempts, kept between them ([`ConnCtx::attempt_timer`]).
    pub(crate) attempt_timer: std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnCtx {
    /// A timer set to `deadline` for one upstream attempt: the connection's own, reset, when
    /// no other attempt holds it: a fresh timer per attempt is registered with the runtime's
    /// timer wheel and removed again each time, while moving a registered timer later is one
    /// atomic update (docs/performance.md has the cost). Concurrent attempts (HTTP/2
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

impl Runtime {
    /// Serves one request. Never fails: every failure becomes a response.
    /// `request_id` is the sane inbound `x-request-id` or a new one ([`headers::request_id`]).
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
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
        if let Some(id) = &conn.identity {
            done.client_identity = Some(id.id.clone());
        }
        done.tls = conn.forwarding.proto == "https";
        let grpc = carried.content_type && is_grpc(req.headers());

        // --- admission, guard, route ---
        let (listener, route, absolute_form) = match self.admit_and_route(&req, &conn, carried, &mut done) {
            Ok(admitted) => admitted,
            Err(err) => return self.fail(done, err, grpc),
        };
        // --- fault ---
        if let Err(err) = route::inject_fault(&route, req.headers(), &mut done).await {
            return self.fail(done, err, grpc);
        }
        // --- deadline ---
        let target = Target::new(&req, &route, request_id.clone(), carried, absolute_form, grpc, &done);
        // --- rewrite ---
        let mut forward = Forward::new(req, route, listener, &conn, target);
        // --- retry: per attempt the breaker, the balancer, a pooled connection ---
        let tried = attempt::run(&mut forward, &conn, &mut done).await;
        // --- fallback, respond ---
        self.answer(done, &mut forward, tried, request_id, grpc)
    }

    /// The admission, guard and route phases, in order; the first that refuses the request
    /// says why. Returns the listener, the route and whether the request is in absolute form.
    fn admit_and_route(
        &self,
        req: &Request<Incoming>,
        conn: &ConnCtx,
        carried: headers::Carried,
        done: &mut Completion,
    ) -> Result<(&ListenerRt, Arc<RouteRt>, bool), ProxyError> {
        let (index, listener) = self.admit(conn, done)?;
        admit::guard(req, listener)?;
        let (route, absolute_form) = self.route(req, index, conn, carried, done)?;
        Ok((listener, route, absolute_form))
    }
}

impl Target {
    /// The deadline phase: the route timeout, shortened by an inbound `grpc-timeout`, counted
    /// from the request's arrival (one clock read serves the record and this).
    fn new(
        req: &Request<Incoming>,
        route: &RouteRt,
        request_id: HeaderValue,
        carried: headers::Carried,
        absolute_form: bool,
        grpc: bool,
        done: &Completion,
    ) -> Target {
        let grpc_timeout = if grpc {
            req.headers()
                .get(headers::GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        } else {
            None
        };
        let budget = grpc_timeout.map_or(route.timeout, |t| t.min(route.timeout));
        // Config durations are bounded, but a clock overflow must never be a panic here.
        let deadline = done
            .started()
            .checked_add(budget)
            .unwrap_or_else(|| done.started() + Duration::from_secs(365 * 24 * 3600));
        Target {
            request_id,
            carried,
            absolute_form,
            grpc,
            grpc_timeout,
            budget,
            deadline,
        }
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

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
