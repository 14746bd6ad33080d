//! The fields this proxy sets on an upstream request (request id, forwarding fields, trace
//! context, `grpc-timeout`), kept beside the client's head instead of inserted into it.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::headers::{
    FORWARDED, Forwarding, GRPC_TIMEOUT, X_FORWARDED_CLIENT_CERT, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID,
    append_to_list,
};
use super::trace::TraceContext;

/// The fields this proxy sets on an upstream request, kept beside the client's fields
/// rather than inserted among them: the HTTP/1.1 client writes them after the client's, with
/// no hashing and no map insertion (costly for non-standard names, which are hashed whole),
/// and HTTP/2 inserts them into its own copy of the map. Where the
/// client sent one of them, [`Added::forward`] and `rewrite` take the client's out of the map.
#[derive(Clone, Debug, Default)]
pub struct Added {
    /// `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// `x-forwarded-for`: the client's list with the peer appended (inbound listeners).
    pub forwarded_for: Option<HeaderValue>,
    /// `x-forwarded-proto`.
    pub forwarded_proto: Option<HeaderValue>,
    /// `forwarded`: the client's list with this hop's element appended.
    pub forwarded: Option<HeaderValue>,
    /// `traceparent`: each attempt's own, kept as its bytes (HTTP/1.1 writes them as they are).
    pub traceparent: Option<super::trace::TraceParent>,
    /// `tracestate`, forwarded with a valid inbound `traceparent`.
    pub tracestate: Option<HeaderValue>,
    /// `grpc-timeout`: the time left, per attempt.
    pub grpc_timeout: Option<HeaderValue>,
    /// `x-forwarded-client-cert`: the client's certificate hash and identity (mTLS).
    pub client_cert: Option<HeaderValue>,
}

impl Added {
    /// Starts with the request id (every upstream request carries one).
    pub fn new(request_id: HeaderValue) -> Self {
        Added {
            request_id: Some(request_id),
            ..Added::default()
        }
    }

    /// Sets the forwarding fields for this hop; `carried` says whether the client sent any,
    /// which are then taken out of `headers` (their lists continue in ours).
    pub fn forward(&mut self, headers: &mut HeaderMap, carried: bool, f: &Forwarding) {
        let (prior_xff, prior_fwd) = if carried {
            headers.remove(X_FORWARDED_PROTO);
            (headers.remove(X_FORWARDED_FOR), headers.remove(FORWARDED))
        } else {
            (None, None)
        };
        self.forwarded_for = match &f.xff {
            Some(xff) => Some(append_to_list(prior_xff, xff)),
            None => prior_xff,
        };
        self.forwarded_proto = Some(HeaderValue::from_static(f.proto));
        self.forwarded = match &f.forwarded {
            Some(fwd) => Some(append_to_list(prior_fwd, fwd)),
            None => prior_fwd,
        };
    }

    /// Sets the propagation fields of one upstream attempt from the request's trace: the
    /// child `traceparent`, and `tracestate` only when it came with a valid inbound
    /// `traceparent` (`rewrite` has taken the client's own out of the head). Returns the
    /// attempt's span id.
    pub fn set_trace(&mut self, trace: &TraceContext) -> u64 {
        let (tp, span) = trace.child();
        self.traceparent = Some(tp);
        self.tracestate.clone_from(&trace.tracestate);
        span
    }

    /// The fields held as header values, in the order they are written.
    fn values(&self) -> [(HeaderName, Option<&HeaderValue>); 7] {
        [
            (X_REQUEST_ID, self.request_id.as_ref()),
            (X_FORWARDED_FOR, self.forwarded_for.as_ref()),
            (X_FORWARDED_PROTO, self.forwarded_proto.as_ref()),
            (FORWARDED, self.forwarded.as_ref()),
            (super::trace::TRACESTATE, self.tracestate.as_ref()),
            (GRPC_TIMEOUT, self.grpc_timeout.as_ref()),
            (X_FORWARDED_CLIENT_CERT, self.client_cert.as_ref()),
        ]
    }

    /// Calls `f` with the name and value of each field that is set, in a fixed order
    /// (`traceparent` last).
    pub fn each(&self, mut f: impl FnMut(&str, &[u8])) {
        for (name, value) in self.values() {
            if let Some(v) = value {
                f(name.as_str(), v.as_bytes());
            }
        }
        if let Some(tp) = &self.traceparent {
            f(super::trace::TRACEPARENT.as_str(), tp.as_bytes());
        }
    }

    /// Puts the fields into a header map (HTTP/2, whose client takes a map).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.values() {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
        if let Some(tp) = &self.traceparent {
            headers.insert(super::trace::TRACEPARENT, tp.to_header_value());
        }
    }
}

/// Appends the peer to `X-Forwarded-For` and `Forwarded`, and sets `X-Forwarded-Proto`.
pub fn add_forwarding(headers: &mut HeaderMap, f: &Forwarding) {
    let mut added = Added::default();
    added.forward(headers, true, f);
    added.insert_into(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::carried;
    use crate::http::trace::{TRACEPARENT, TRACESTATE};

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        add_forwarding(&mut h, &Forwarding::new("::1".parse().unwrap(), "http"));
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.7, ::1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[FORWARDED], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn requests_continue_or_start_traces_and_children_keep_the_trace() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let cx = TraceContext::from_request(&h, carried(&h), false, 0.0);
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.sampled && !cx.rejected);
        let mut added = Added::default();
        let span = added.set_trace(&cx);
        let mut out = HeaderMap::new();
        added.insert_into(&mut out);
        let tp = out[TRACEPARENT].to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
            "{tp}"
        );
        assert_eq!(&tp[36..52], format!("{span:016x}"));
        assert_eq!(out[TRACESTATE], "congo=t61rcWkgMzE");

        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        let cx = TraceContext::from_request(&h, carried(&h), false, 1.0);
        assert!(cx.rejected && cx.parent_id.is_none() && cx.tracestate.is_none());
        assert_ne!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // The orphaned `tracestate` is not forwarded, and a retry clears the one before.
        added.set_trace(&cx);
        assert!(added.tracestate.is_none() && added.traceparent.unwrap().as_bytes() != b"garbage");
    }
}
