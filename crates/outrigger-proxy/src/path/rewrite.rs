//! The client's request turned into the upstream's: its head rewritten, the proxy's own
//! fields beside it, and a plan for its body (sent as it comes, or kept for a replay).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HOST, HeaderValue};
use http::request::Parts;
use http::{Request, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use outrigger_config::Role;

use crate::body::replay::ReplayBody;
use crate::body::{ClientBody, RequestBody};
use crate::http::added::Added;
use crate::http::headers::{self, X_REQUEST_ID};
use crate::http::trace::{TRACEPARENT, TRACESTATE};
use crate::policy::fault::FAULT_HEADER;
use crate::runtime::{ListenerRt, RouteRt};

use super::ConnCtx;

/// What the earlier phases decided that the rewrite and the attempts need.
pub(super) struct Target {
    pub(super) request_id: HeaderValue,
    pub(super) carried: headers::Carried,
    pub(super) absolute_form: bool,
    pub(super) grpc: bool,
    /// The client's `grpc-timeout`, when it sent one (each attempt sends the time left).
    pub(super) grpc_timeout: Option<Duration>,
    /// The request's time: the route timeout, or a shorter `grpc-timeout`.
    pub(super) budget: Duration,
    /// When that time runs out.
    pub(super) deadline: Instant,
}

/// A request on its way to its route's upstream: everything the attempts share.
pub(crate) struct Forward {
    pub(super) route: Arc<RouteRt>,
    /// The upstream request's head, written as it is (HTTP/1.1) or copied (HTTP/2) by each
    /// attempt, never cloned per attempt.
    pub(super) parts: Parts,
    /// The proxy's own fields, beside the head; each attempt sets its trace and time left.
    pub(super) added: Added,
    /// The body for the first attempt; later ones replay `replay`.
    pub(super) first_body: Option<RequestBody>,
    pub(super) replay: Option<ReplayBody>,
    /// The request has no body at all (every attempt sends none).
    pub(super) body_empty: bool,
    /// How much of the body may be kept for a retry (`None`: this request is not retried).
    pub(super) replay_limit: Option<usize>,
    /// The client's side of a protocol upgrade (WebSocket), when one was asked for.
    pub(super) client_upgrade: Option<OnUpgrade>,
    pub(super) http2: bool,
    pub(super) target: Target,
}

impl Forward {
    /// The rewrite phase: `req` as its upstream gets it.
    pub(super) fn new(
        mut req: Request<Incoming>,
        route: Arc<RouteRt>,
        listener: &ListenerRt,
        conn: &ConnCtx,
        target: Target,
    ) -> Self {
        let carried = target.carried;
        let upgrading = req.version() == Version::HTTP_11 && carried.upgrade && headers::is_upgrade(req.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let mut added = Added::new(target.request_id.clone());
        added.client_cert = conn.identity.as_ref().map(|id| id.xfcc.clone());
        rewrite(
            &mut parts,
            &mut added,
            target.absolute_form,
            upgrading,
            carried,
            listener.role,
            &conn.forwarding,
        );
        if target.grpc_timeout.is_some() {
            parts.headers.remove(headers::GRPC_TIMEOUT);
        }
        let replay_limit = route.retry.replay_limit(&parts.method);
        let empty = body.is_end_stream();
        let body = ClientBody::new(body, route.max_body_bytes, listener.body_idle);
        let (first_body, replay) = if empty {
            (Some(RequestBody::Empty), None)
        } else if let Some(limit) = replay_limit.filter(|l| body.size_hint().lower() <= *l as u64) {
            let handle = ReplayBody::new(body, limit);
            (handle.replay().map(RequestBody::Replay), Some(handle))
        } else {
            // Declared larger than the replay buffer (or not retryable): sent once, as it comes.
            (Some(RequestBody::Incoming(Box::new(body))), None)
        };
        let body_empty = replay.is_none() && matches!(first_body, Some(RequestBody::Empty));
        let http2 = route.upstream.uses_http2(target.grpc, upgrading);
        Forward {
            route,
            parts,
            added,
            first_body,
            replay,
            body_empty,
            replay_limit,
            client_upgrade,
            http2,
            target,
        }
    }

    /// The body for the next attempt: the first one's, then a replay; `None` when there is
    /// nothing to send again (the loop retries only replayable requests).
    pub(super) fn next_body(&mut self) -> Option<RequestBody> {
        match self.first_body.take() {
            Some(b) => Some(b),
            None if self.body_empty => Some(RequestBody::Empty),
            None => self
                .replay
                .as_ref()
                .and_then(ReplayBody::replay)
                .map(RequestBody::Replay),
        }
    }

    /// Whether another attempt could send the body again.
    pub(super) fn can_replay(&self) -> bool {
        self.body_empty || self.replay.as_ref().is_some_and(ReplayBody::is_replayable)
    }
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
