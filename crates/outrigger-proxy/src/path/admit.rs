//! Admission (may this listener take another request now?) and the guard over the request's
//! head (is it one the proxy may forward at all?).

use std::sync::atomic::Ordering;

use http::{Method, Request};
use hyper::body::Incoming;

use outrigger_config::Role;

use crate::error::{ErrorKind, ProxyError};
use crate::http::headers;
use crate::record::Completion;
use crate::runtime::{ListenerRt, Runtime};

use super::ConnCtx;

impl Runtime {
    /// The request's listener, once it has admitted the request: not while draining (inbound
    /// listeners), and only within its `max_in_flight` (no queue: 503 `overloaded` beyond).
    /// The admission slot is held by the request's record until it is finished. Returns the
    /// listener and its index in this runtime.
    pub(super) fn admit(&self, conn: &ConnCtx, done: &mut Completion) -> Result<(usize, &ListenerRt), ProxyError> {
        // A reload removed the listener: its connections are closing; the client retries on
        // a new one.
        let (index, listener) = self
            .listener(&conn.listener, conn.listener_hint)
            .ok_or(ProxyError::new(ErrorKind::ShuttingDown))?;
        if listener.role == Role::Inbound && self.draining.load(Ordering::Relaxed) {
            return Err(ProxyError::new(ErrorKind::ShuttingDown));
        }
        let admitted = listener.admit().ok_or(ProxyError::new(ErrorKind::Overloaded {
            limit: listener.max_in_flight,
        }))?;
        done.admitted = Some(admitted);
        Ok((index, listener))
    }
}

/// Refuses a head the proxy may not forward: larger than the listener allows (431), a path
/// with a broken `%` escape, or `CONNECT` (400). Ambiguous framing (Content-Length with
/// Transfer-Encoding, conflicting lengths, obs-fold) never gets this far: hyper frames by
/// Transfer-Encoding alone, drops Content-Length and closes the connection after the
/// response, or answers 400.
pub(super) fn guard(req: &Request<Incoming>, listener: &ListenerRt) -> Result<(), ProxyError> {
    if headers::head_size(req.method(), req.uri(), req.headers()) > listener.max_header_bytes {
        return Err(ProxyError::new(ErrorKind::HeaderTooLarge {
            limit: listener.max_header_bytes,
        }));
    }
    if !headers::valid_percent_encoding(req.uri().path()) {
        let reason = "its path has a `%` not followed by two hex digits";
        return Err(ProxyError::new(ErrorKind::BadRequest { reason }));
    }
    if req.method() == Method::CONNECT {
        let reason = "CONNECT is not supported (outrigger forwards HTTP requests; it does not open tunnels)";
        return Err(ProxyError::new(ErrorKind::BadRequest { reason }));
    }
    Ok(())
}
