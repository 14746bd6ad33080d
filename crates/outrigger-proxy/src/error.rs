//! The one domain error type of the data path, and its rendering to the wire.
//!
//! Every response outrigger makes itself comes from a [`ProxyError`]: a stable snake_case
//! `code` (in JSON, metrics and the `outrigger-error` header), an HTTP status, a gRPC status,
//! an impact class and whether a retry may help. Foreign errors (hyper, io) are converted
//! where they happen, with the route and upstream attached, so the detail sentence can name
//! them. Adding a code means adding a variant: every `match` below is exhaustive.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ProxyBody;

/// Who has to act on a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad input: the caller must change something.
    Client,
    /// A dependency failed: not the caller's fault.
    Upstream,
    /// outrigger itself: overload, shutdown, a bug.
    Proxy,
}

impl ErrorClass {
    /// The label value used in JSON, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Client => "client",
            ErrorClass::Upstream => "upstream",
            ErrorClass::Proxy => "proxy",
        }
    }
}

/// What went wrong, with the facts the detail sentence needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request (framing, smuggling attempt, bad header).
    BadRequest {
        /// What was wrong with it, for a person.
        reason: &'static str,
    },
    /// No route matches.
    RouteNotFound,
    /// The request head is larger than the listener allows.
    HeaderTooLarge {
        /// The listener's limit.
        limit: usize,
    },
    /// Could not connect (refused, DNS, timeout).
    UpstreamConnectFailed {
        /// Why, in a few words ("connection refused", "timed out after 1s").
        reason: String,
    },
    /// The connection closed or reset before a full response.
    UpstreamReset,
    /// The upstream sent something that is not a valid HTTP response.
    UpstreamProtocolError,
    /// No answer within the route timeout.
    UpstreamTimeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The upstream's circuit breaker is open (or half-open with every probe slot taken).
    CircuitOpen {
        /// Time until calls are let through again.
        retry_after: Duration,
        /// Why it opened, as logged at the transition.
        why: Option<String>,
    },
    /// The upstream's concurrency limit (`circuit_breaker.max_in_flight`) is reached.
    CircuitSaturated {
        /// The limit.
        limit: u32,
    },
    /// Every endpoint is ejected, or no endpoint address is known.
    NoHealthyEndpoints {
        /// Endpoints known (0: none resolved).
        known: usize,
    },
    /// The listener's `max_in_flight` is reached: load shed.
    Overloaded {
        /// The limit.
        limit: usize,
    },
    /// A configured fault rehearsal answered instead of the upstream.
    FaultInjected {
        /// The status configured or asked for.
        status: u16,
    },
    /// A bug in outrigger.
    Internal,
}

/// A failure of one request, with where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The route, once one matched.
    pub route: Option<String>,
    /// The upstream, once one was chosen.
    pub upstream: Option<String>,
    /// The endpoint the failed attempt went to.
    pub endpoint: Option<String>,
}

impl ProxyError {
    /// An error not yet tied to a route.
    pub fn new(kind: ErrorKind) -> Self {
        ProxyError {
            kind,
            route: None,
            upstream: None,
            endpoint: None,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest { .. } => "bad_request",
            ErrorKind::RouteNotFound => "route_not_found",
            ErrorKind::HeaderTooLarge { .. } => "header_too_large",
            ErrorKind::UpstreamConnectFailed { .. } => "upstream_connect_failed",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamProtocolError => "upstream_protocol_error",
            ErrorKind::UpstreamTimeout { .. } => "upstream_timeout",
            ErrorKind::CircuitOpen { .. } | ErrorKind::CircuitSaturated { .. } => "circuit_open",
            ErrorKind::NoHealthyEndpoints { .. } => "no_healthy_endpoints",
            ErrorKind::Overloaded { .. } => "overloaded",
            ErrorKind::FaultInjected { .. } => "fault_injected",
            ErrorKind::Internal => "internal",
        }
    }

    /// The HTTP status of the error response.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ErrorKind::RouteNotFound => StatusCode::NOT_FOUND,
            ErrorKind::HeaderTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::UpstreamConnectFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocolError => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::CircuitOpen { .. }
            | ErrorKind::CircuitSaturated { .. }
            | ErrorKind::NoHealthyEndpoints { .. }
            | ErrorKind::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::FaultInjected { status } => {
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for gRPC callers.
    pub fn grpc_status(&self) -> u8 {
        const DEADLINE_EXCEEDED: u8 = 4;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        match self.kind {
            ErrorKind::BadRequest { .. } | ErrorKind::UpstreamProtocolError | ErrorKind::Internal => INTERNAL,
            ErrorKind::RouteNotFound => UNIMPLEMENTED,
            ErrorKind::HeaderTooLarge { .. } => RESOURCE_EXHAUSTED,
            ErrorKind::UpstreamConnectFailed { .. }
            | ErrorKind::UpstreamReset
            | ErrorKind::CircuitOpen { .. }
            | ErrorKind::CircuitSaturated { .. }
            | ErrorKind::NoHealthyEndpoints { .. }
            | ErrorKind::Overloaded { .. } => UNAVAILABLE,
            ErrorKind::UpstreamTimeout { .. } => DEADLINE_EXCEEDED,
            ErrorKind::FaultInjected { status } => grpc_status_for_http(status),
        }
    }

    /// Who has to act.
    pub fn class(&self) -> ErrorClass {
        match self.kind {
            ErrorKind::BadRequest { .. } | ErrorKind::RouteNotFound | ErrorKind::HeaderTooLarge { .. } => {
                ErrorClass::Client
            }
            ErrorKind::UpstreamConnectFailed { .. }
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamProtocolError
            | ErrorKind::UpstreamTimeout { .. }
            | ErrorKind::CircuitOpen { .. }
            | ErrorKind::CircuitSaturated { .. }
            | ErrorKind::NoHealthyEndpoints { .. } => ErrorClass::Upstream,
            ErrorKind::Overloaded { .. } | ErrorKind::FaultInjected { .. } | ErrorKind::Internal => ErrorClass::Proxy,
        }
    }

    /// Whether the same request may succeed if sent again.
    pub fn retryable(&self) -> bool {
        match self.kind {
            ErrorKind::UpstreamConnectFailed { .. }
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamTimeout { .. }
            | ErrorKind::CircuitOpen { .. }
            | ErrorKind::CircuitSaturated { .. }
            | ErrorKind::NoHealthyEndpoints { .. }
            | ErrorKind::Overloaded { .. } => true,
            ErrorKind::BadRequest { .. }
            | ErrorKind::RouteNotFound
            | ErrorKind::HeaderTooLarge { .. }
            | ErrorKind::UpstreamProtocolError
            | ErrorKind::FaultInjected { .. }
            | ErrorKind::Internal => false,
        }
    }

    /// A short, stable title.
    pub fn title(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest { .. } => "Bad request",
            ErrorKind::RouteNotFound => "No route for this request",
            ErrorKind::HeaderTooLarge { .. } => "Request headers too large",
            ErrorKind::UpstreamConnectFailed { .. } => "Could not connect to upstream",
            ErrorKind::UpstreamReset => "Upstream closed the connection",
            ErrorKind::UpstreamProtocolError => "Upstream sent an invalid response",
            ErrorKind::UpstreamTimeout { .. } => "Upstream timed out",
            ErrorKind::CircuitOpen { .. } | ErrorKind::CircuitSaturated { .. } => "Circuit breaker open",
            ErrorKind::NoHealthyEndpoints { .. } => "No healthy upstream endpoints",
            ErrorKind::Overloaded { .. } => "Proxy overloaded",
            ErrorKind::FaultInjected { .. } => "Fault injected",
            ErrorKind::Internal => "Internal proxy error",
        }
    }

    fn upstream_name(&self) -> &str {
        self.upstream.as_deref().unwrap_or("upstream")
    }

    /// One sentence for a person: what happened, naming the route, upstream and limit.
    pub fn detail(&self) -> String {
        match &self.kind {
            ErrorKind::BadRequest { reason } => {
                format!("The request was rejected before reaching any service: {reason}.")
            }
            ErrorKind::RouteNotFound => {
                "No route matches this request's host, path and method; nothing was forwarded.".to_owned()
            }
            ErrorKind::HeaderTooLarge { limit } => {
                format!("The request line and headers are larger than this listener's limit of {limit} bytes.")
            }
            ErrorKind::UpstreamConnectFailed { reason } => {
                format!(
                    "Could not connect to the service '{}'{}: {reason}.",
                    self.upstream_name(),
                    self.at_endpoint()
                )
            }
            ErrorKind::UpstreamReset => {
                format!(
                    "The service '{}'{} closed the connection before sending a complete response.",
                    self.upstream_name(),
                    self.at_endpoint()
                )
            }
            ErrorKind::UpstreamProtocolError => {
                format!(
                    "The service '{}'{} sent a response that is not valid HTTP.",
                    self.upstream_name(),
                    self.at_endpoint()
                )
            }
            ErrorKind::UpstreamTimeout { after } => {
                format!(
                    "The service '{}' did not answer within {}.",
                    self.upstream_name(),
                    humanize(*after)
                )
            }
            ErrorKind::CircuitOpen { retry_after, why } => {
                let why = why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
                format!(
                    "The circuit breaker for '{}' is open{why}: failing fast without calling it; retry in {}.",
                    self.upstream_name(),
                    humanize(*retry_after)
                )
            }
            ErrorKind::CircuitSaturated { limit } => format!(
                "'{}' already has {limit} requests in flight (circuit_breaker.max_in_flight); failing fast instead of queueing.",
                self.upstream_name()
            ),
            ErrorKind::NoHealthyEndpoints { known: 0 } => {
                format!(
                    "No address is known for '{}': its endpoints did not resolve.",
                    self.upstream_name()
                )
            }
            ErrorKind::NoHealthyEndpoints { known } => format!(
                "All {known} endpoints of '{}' are ejected by outlier detection after repeated failures.",
                self.upstream_name()
            ),
            ErrorKind::Overloaded { limit } => {
                format!("outrigger is at its limit of {limit} requests in flight on this listener; shedding load.")
            }
            ErrorKind::FaultInjected { status } => {
                format!(
                    "A configured fault rehearsal answered {status} instead of '{}'.",
                    self.upstream_name()
                )
            }
            ErrorKind::Internal => {
                "outrigger hit an internal error while handling this request; it has been logged.".to_owned()
            }
        }
    }

    fn at_endpoint(&self) -> String {
        self.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
    }

    /// Seconds the caller should wait before retrying, when known (rounded up).
    pub fn retry_after(&self) -> Option<u64> {
        match &self.kind {
            ErrorKind::CircuitOpen { retry_after, .. } => Some(retry_after.as_millis().div_ceil(1000).max(1) as u64),
            ErrorKind::CircuitSaturated { .. } | ErrorKind::Overloaded { .. } => Some(1),
            _ => None,
        }
    }
}

pub use outrigger_resilience::humanize;

/// The gRPC status for an HTTP status (grpc `doc/http-grpc-status-mapping.md`).
pub fn grpc_status_for_http(status: u16) -> u8 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// What the renderer needs to know about the request besides the error.
pub struct RenderContext<'a> {
    /// The request id (also in `x-request-id`).
    pub request_id: &'a str,
    /// The request path without its query, for `instance`.
    pub path: &'a str,
    /// The caller speaks gRPC: answer trailers-only.
    pub grpc: bool,
    /// `HEAD`: headers only.
    pub head: bool,
    /// Prefix of the problem `type`.
    pub type_base: &'a str,
}

/// Renders an error as the response the caller sees: problem+json for HTTP, trailers-only
/// for gRPC. Always carries `x-request-id` and `outrigger-error`.
pub fn render(err: &ProxyError, cx: &RenderContext<'_>) -> Response<ProxyBody> {
    let code = err.code();
    let mut builder = Response::builder()
        .header("outrigger-error", HeaderValue::from_static(code))
        .header(crate::headers::X_REQUEST_ID, cx.request_id);
    if let Some(secs) = err.retry_after() {
        builder = builder.header(RETRY_AFTER, secs);
    }
    let response = if cx.grpc {
        builder
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", u16::from(err.grpc_status()))
            .header("grpc-message", percent_encode_grpc(&err.detail()))
            .body(ProxyBody::empty())
    } else {
        let body = problem_json(err, cx);
        builder
            .status(err.status())
            .header(CONTENT_TYPE, "application/problem+json")
            .header(CONTENT_LENGTH, body.len())
            .body(if cx.head {
                ProxyBody::empty()
            } else {
                ProxyBody::full(body)
            })
    };
    // Every header above is built from valid static parts or checked ids; should that ever
    // not hold, a bare 500 still reaches the caller instead of a dropped connection.
    response.unwrap_or_else(|_| {
        let mut r = Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn problem_json(err: &ProxyError, cx: &RenderContext<'_>) -> Bytes {
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), format!("{}{}", cx.type_base, err.code()).into());
    obj.insert("title".into(), err.title().into());
    obj.insert("status".into(), err.status().as_u16().into());
    obj.insert("detail".into(), err.detail().into());
    obj.insert("instance".into(), cx.path.into());
    obj.insert("code".into(), err.code().into());
    obj.insert("class".into(), err.class().as_str().into());
    obj.insert("retryable".into(), err.retryable().into());
    obj.insert("request_id".into(), cx.request_id.into());
    if let Some(r) = &err.route {
        obj.insert("route".into(), r.as_str().into());
    }
    if let Some(u) = &err.upstream {
        obj.insert("upstream".into(), u.as_str().into());
    }
    if let Some(s) = err.retry_after() {
        obj.insert("retry_after_s".into(), s.into());
    }
    Bytes::from(serde_json::Value::Object(obj).to_string())
}

/// gRPC's `grpc-message` encoding: percent-encode everything outside printable ASCII and `%`.
fn percent_encode_grpc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ErrorKind> {
        vec![
            ErrorKind::BadRequest { reason: "x" },
            ErrorKind::RouteNotFound,
            ErrorKind::HeaderTooLarge { limit: 1 },
            ErrorKind::UpstreamConnectFailed {
                reason: "refused".into(),
            },
            ErrorKind::UpstreamReset,
            ErrorKind::UpstreamProtocolError,
            ErrorKind::UpstreamTimeout {
                after: Duration::from_secs(2),
            },
            ErrorKind::CircuitOpen {
                retry_after: Duration::from_millis(2100),
                why: None,
            },
            ErrorKind::CircuitSaturated { limit: 10 },
            ErrorKind::NoHealthyEndpoints { known: 3 },
            ErrorKind::Overloaded { limit: 10 },
            ErrorKind::FaultInjected { status: 503 },
            ErrorKind::Internal,
        ]
    }

    /// DESIGN.md's error table, row by row: code, HTTP status, gRPC status, class, retryable.
    #[test]
    fn every_code_matches_the_contract_table() {
        let table = [
            ("bad_request", 400, 13, "client", false),
            ("route_not_found", 404, 12, "client", false),
            ("header_too_large", 431, 8, "client", false),
            ("upstream_connect_failed", 503, 14, "upstream", true),
            ("upstream_reset", 502, 14, "upstream", true),
            ("upstream_protocol_error", 502, 13, "upstream", false),
            ("upstream_timeout", 504, 4, "upstream", true),
            ("circuit_open", 503, 14, "upstream", true),
            ("circuit_open", 503, 14, "upstream", true),
            ("no_healthy_endpoints", 503, 14, "upstream", true),
            ("overloaded", 503, 14, "proxy", true),
            ("fault_injected", 503, 14, "proxy", false),
            ("internal", 500, 13, "proxy", false),
        ];
        for (kind, row) in all().into_iter().zip(table) {
            let e = ProxyError::new(kind);
            assert_eq!(
                (
                    e.code(),
                    e.status().as_u16(),
                    e.grpc_status(),
                    e.class().as_str(),
                    e.retryable()
                ),
                row
            );
            assert!(!e.title().is_empty() && e.detail().ends_with('.'), "{}", e.detail());
        }
    }

    #[test]
    fn problem_json_has_the_contract_members() {
        let mut e = ProxyError::new(ErrorKind::UpstreamTimeout {
            after: Duration::from_secs(2),
        });
        e.route = Some("checkout".into());
        e.upstream = Some("payments".into());
        let cx = RenderContext {
            request_id: "abc",
            path: "/checkout",
            grpc: false,
            head: false,
            type_base: "urn:outrigger:error:",
        };
        let resp = render(&e, &cx);
        assert_eq!(resp.status(), 504);
        assert_eq!(resp.headers()["outrigger-error"], "upstream_timeout");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body = problem_json(&e, &cx);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:outrigger:error:upstream_timeout");
        assert_eq!(v["detail"], "The service 'payments' did not answer within 2s.");
        assert_eq!(v["class"], "upstream");
        assert_eq!(v["retryable"], true);
        assert_eq!(v["route"], "checkout");
        assert_eq!(v["instance"], "/checkout");
    }

    #[test]
    fn grpc_errors_are_trailers_only_with_encoded_message() {
        let e = ProxyError::new(ErrorKind::RouteNotFound);
        let cx = RenderContext {
            request_id: "abc",
            path: "/x",
            grpc: true,
            head: false,
            type_base: "",
        };
        let resp = render(&e, &cx);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(percent_encode_grpc("a%b é"), "a%25b %C3%A9");
    }
}
