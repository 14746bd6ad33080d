//! The one domain error type of the data path, and its rendering to the wire.
//!
//! Every response outrigger makes itself comes from a [`ProxyError`]: a stable snake_case
//! `code` (in JSON, metrics and the `outrigger-error` header), an HTTP status, a gRPC status,
//! an impact class and whether a retry may help. Foreign errors (hyper, io) are converted
//! where they happen, with the route and upstream attached, so the detail sentence can name
//! them. The taxonomy is one table ([`ALL_SPECS`]); adding a code means a row there and a
//! variant of [`ErrorKind`], and the exhaustive matches show what else to write.

use std::time::Duration;

use http::StatusCode;

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

/// The fixed facts of one error code: one row of DESIGN.md's table.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    /// Stable snake_case code (JSON, metrics, the `outrigger-error` header).
    pub code: &'static str,
    /// The code as a type.
    pub id: Code,
    /// HTTP status; `None` where it is configured (fault_injected) or kept (upstream_error).
    pub status: Option<u16>,
    /// gRPC status; `None` where it follows the HTTP status.
    pub grpc: Option<u8>,
    /// Who must act.
    pub class: ErrorClass,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// A short title.
    pub title: &'static str,
}

macro_rules! specs {
    ($($name:ident / $variant:ident = $code:literal, $status:expr, $grpc:expr, $class:ident, $retry:literal, $title:literal;)*) => {
        $(const $name: Spec = Spec { code: $code, id: Code::$variant, status: $status, grpc: $grpc, class: ErrorClass::$class, retryable: $retry, title: $title };)*
        /// Every error code, in DESIGN.md's order.
        pub const ALL_SPECS: &[&Spec] = &[$(&$name),*];

        /// The error codes as a type, one per row of the taxonomy: code that acts on a code
        /// matches these exhaustively, so a new code cannot silently fall into a default.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $title] $variant,)*
        }

        impl Code {
            /// The stable snake_case name (JSON, metrics, the `outrigger-error` header).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }
        }
    };
}

// The whole taxonomy. Adding a code: a row here, a variant in `ErrorKind`, its arm in
// `ErrorKind::spec` and its sentence in `ProxyError::detail` (the compiler finds both).
specs! {
    BAD_REQUEST / BadRequest = "bad_request", Some(400), Some(13), Client, false, "Bad request";
    ROUTE_NOT_FOUND / RouteNotFound = "route_not_found", Some(404), Some(12), Client, false, "No route for this request";
    METHOD_NOT_ALLOWED / MethodNotAllowed = "method_not_allowed", Some(405), Some(12), Client, false, "Method not allowed";
    FORBIDDEN / Forbidden = "forbidden", Some(403), Some(7), Client, false, "Caller not allowed";
    REQUEST_TIMEOUT / RequestTimeout = "request_timeout", Some(408), Some(4), Client, false, "Request too slow";
    PAYLOAD_TOO_LARGE / PayloadTooLarge = "payload_too_large", Some(413), Some(8), Client, false, "Request body too large";
    HEADER_TOO_LARGE / HeaderTooLarge = "header_too_large", Some(431), Some(8), Client, false, "Request headers too large";
    UPSTREAM_CONNECT_FAILED / UpstreamConnectFailed = "upstream_connect_failed", Some(503), Some(14), Upstream, true, "Could not connect to upstream";
    UPSTREAM_RESET / UpstreamReset = "upstream_reset", Some(502), Some(14), Upstream, true, "Upstream closed the connection";
    UPSTREAM_PROTOCOL_ERROR / UpstreamProtocolError = "upstream_protocol_error", Some(502), Some(13), Upstream, false, "Upstream sent an invalid response";
    UPSTREAM_TIMEOUT / UpstreamTimeout = "upstream_timeout", Some(504), Some(4), Upstream, true, "Upstream timed out";
    UPSTREAM_ERROR / UpstreamError = "upstream_error", None, None, Upstream, true, "Upstream failed";
    CIRCUIT_OPEN / CircuitOpen = "circuit_open", Some(503), Some(14), Upstream, true, "Circuit breaker open";
    NO_HEALTHY_ENDPOINTS / NoHealthyEndpoints = "no_healthy_endpoints", Some(503), Some(14), Upstream, true, "No healthy upstream endpoints";
    OVERLOADED / Overloaded = "overloaded", Some(503), Some(14), Proxy, true, "Proxy overloaded";
    SHUTTING_DOWN / ShuttingDown = "shutting_down", Some(503), Some(14), Proxy, true, "Proxy shutting down";
    FAULT_INJECTED / FaultInjected = "fault_injected", None, None, Proxy, false, "Fault injected";
    INTERNAL / Internal = "internal", Some(500), Some(13), Proxy, false, "Internal proxy error";
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
    /// A route matches everything but the method.
    MethodNotAllowed {
        /// The methods the matching routes allow, for the `Allow` header.
        allowed: Vec<http::Method>,
    },
    /// The caller may not use this route (its `allow`), or this admin endpoint.
    Forbidden {
        /// The caller's identity from its client certificate (`None`: it presented none).
        identity: Option<String>,
    },
    /// A source outside `admin.debug_from` asked for `/debug/*` or `/shutdown`.
    AdminForbidden {
        /// The client's address.
        source: std::net::IpAddr,
    },
    /// The client stopped sending its request body.
    RequestTimeout {
        /// How long it was silent.
        idle: Duration,
    },
    /// The request body is larger than the route allows.
    PayloadTooLarge {
        /// The route's `max_body_bytes`.
        limit: u64,
    },
    /// The request head is larger than the listener allows.
    HeaderTooLarge {
        /// The listener's limit.
        limit: usize,
    },
    /// Could not connect (refused, DNS, timeout, TLS handshake).
    UpstreamConnectFailed {
        /// Why, in a few words ("connection refused", "timed out after 1s", "the certificate
        /// of payments.internal expired 3 days ago (not after 2026-12-02)").
        reason: String,
        /// The TCP connection was made and the TLS handshake failed (attempt stage `tls`).
        tls: bool,
    },
    /// The connection closed or reset before a full response.
    UpstreamReset,
    /// The upstream sent something that is not a valid HTTP response.
    UpstreamProtocolError {
        /// What was wrong with it, for a person ("a chunk extension holds a bare LF").
        what: &'static str,
    },
    /// No answer within the route timeout.
    UpstreamTimeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The upstream answered 5xx with a body that is not problem+json: the body is replaced.
    UpstreamError {
        /// The upstream's status, kept.
        status: u16,
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
    /// The proxy is draining for shutdown.
    ShuttingDown,
    /// A configured fault rehearsal answered instead of the upstream.
    FaultInjected {
        /// The status configured or asked for.
        status: u16,
    },
    /// A bug in outrigger.
    Internal {
        /// What went wrong, for the error log (never shown to the caller).
        context: String,
    },
}

impl ErrorKind {
    /// The row of the taxonomy this error belongs to.
    pub fn spec(&self) -> &'static Spec {
        match self {
            ErrorKind::BadRequest { .. } => &BAD_REQUEST,
            ErrorKind::RouteNotFound => &ROUTE_NOT_FOUND,
            ErrorKind::MethodNotAllowed { .. } => &METHOD_NOT_ALLOWED,
            ErrorKind::Forbidden { .. } | ErrorKind::AdminForbidden { .. } => &FORBIDDEN,
            ErrorKind::RequestTimeout { .. } => &REQUEST_TIMEOUT,
            ErrorKind::PayloadTooLarge { .. } => &PAYLOAD_TOO_LARGE,
            ErrorKind::HeaderTooLarge { .. } => &HEADER_TOO_LARGE,
            ErrorKind::UpstreamConnectFailed { .. } => &UPSTREAM_CONNECT_FAILED,
            ErrorKind::UpstreamReset => &UPSTREAM_RESET,
            ErrorKind::UpstreamProtocolError { .. } => &UPSTREAM_PROTOCOL_ERROR,
            ErrorKind::UpstreamTimeout { .. } => &UPSTREAM_TIMEOUT,
            ErrorKind::UpstreamError { .. } => &UPSTREAM_ERROR,
            ErrorKind::CircuitOpen { .. } | ErrorKind::CircuitSaturated { .. } => &CIRCUIT_OPEN,
            ErrorKind::NoHealthyEndpoints { .. } => &NO_HEALTHY_ENDPOINTS,
            ErrorKind::Overloaded { .. } => &OVERLOADED,
            ErrorKind::ShuttingDown => &SHUTTING_DOWN,
            ErrorKind::FaultInjected { .. } => &FAULT_INJECTED,
            ErrorKind::Internal { .. } => &INTERNAL,
        }
    }

    /// An internal error with the context for the log.
    pub fn internal(context: impl Into<String>) -> Self {
        ErrorKind::Internal {
            context: context.into(),
        }
    }
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
        self.kind.spec().code
    }

    /// The error code as a type ([`Code`]).
    pub fn code_id(&self) -> Code {
        self.kind.spec().id
    }

    /// The HTTP status of the error response.
    pub fn status(&self) -> StatusCode {
        let code = match self.kind {
            ErrorKind::FaultInjected { status } | ErrorKind::UpstreamError { status } => status,
            _ => self.kind.spec().status.unwrap_or(500),
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The gRPC status code for gRPC callers.
    pub fn grpc_status(&self) -> u8 {
        self.kind
            .spec()
            .grpc
            .unwrap_or_else(|| grpc_status_for_http(self.status().as_u16()))
    }

    /// Who has to act.
    pub fn class(&self) -> ErrorClass {
        self.kind.spec().class
    }

    /// Whether the same request may succeed if sent again.
    pub fn retryable(&self) -> bool {
        match self.kind {
            // A 501 or 505 from the upstream will not change on a retry.
            ErrorKind::UpstreamError { status } => matches!(status, 500 | 502 | 503 | 504),
            _ => self.kind.spec().retryable,
        }
    }

    /// A short, stable title.
    pub fn title(&self) -> &'static str {
        self.kind.spec().title
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
            ErrorKind::MethodNotAllowed { allowed } => {
                let list: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
                format!("This path only takes {}; nothing was forwarded.", list.join(", "))
            }
            ErrorKind::Forbidden { identity: Some(id) } => format!(
                "This caller ({id}) is not allowed on route '{}'; nothing was forwarded.",
                self.route.as_deref().unwrap_or("this route")
            ),
            ErrorKind::Forbidden { identity: None } => format!(
                "This caller is not allowed on route '{}': it presented no client certificate; nothing was forwarded.",
                self.route.as_deref().unwrap_or("this route")
            ),
            ErrorKind::AdminForbidden { source } => format!(
                "The admin's /debug/* and /shutdown answer only the sources in admin.debug_from (default: loopback); {source} is not one of them."
            ),
            ErrorKind::RequestTimeout { idle } => {
                format!(
                    "The client sent nothing of its request body for {}; the request was abandoned.",
                    humanize(*idle)
                )
            }
            ErrorKind::PayloadTooLarge { limit } => {
                format!("The request body is larger than this route's limit of {limit} bytes (max_body_bytes).")
            }
            ErrorKind::HeaderTooLarge { limit } => {
                format!("The request line and headers are larger than this listener's limit of {limit} bytes.")
            }
            ErrorKind::UpstreamConnectFailed { reason, tls: false } => {
                format!(
                    "Could not connect to the service '{}'{}: {reason}.",
                    self.upstream_name(),
                    self.at_endpoint()
                )
            }
            ErrorKind::UpstreamConnectFailed { reason, tls: true } => {
                format!(
                    "The TLS handshake with the service '{}'{} failed: {reason}.",
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
            ErrorKind::UpstreamProtocolError { what } => {
                format!(
                    "The service '{}'{} sent a response that is not valid HTTP: {what}.",
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
            ErrorKind::UpstreamError { status } => format!(
                "The service '{}' failed with status {status}; its response body was withheld because it may hold internal details.",
                self.upstream_name()
            ),
            ErrorKind::ShuttingDown => {
                "This outrigger instance is shutting down; send the request to another instance.".to_owned()
            }
            ErrorKind::Internal { .. } => {
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
            ErrorKind::CircuitSaturated { .. } | ErrorKind::Overloaded { .. } | ErrorKind::ShuttingDown => Some(1),
            _ => None,
        }
    }
}

pub use outrigger_resilience::humanize;

mod render;
pub use render::{RenderContext, render, wants_html};

/// One error of every code (both circuit variants), for tests and documentation checks.
#[doc(hidden)]
pub fn example_kinds() -> Vec<ErrorKind> {
    vec![
        ErrorKind::BadRequest {
            reason: "it was malformed",
        },
        ErrorKind::RouteNotFound,
        ErrorKind::MethodNotAllowed {
            allowed: vec![http::Method::GET],
        },
        ErrorKind::Forbidden {
            identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
        },
        ErrorKind::RequestTimeout {
            idle: Duration::from_secs(60),
        },
        ErrorKind::PayloadTooLarge { limit: 1024 },
        ErrorKind::HeaderTooLarge { limit: 1024 },
        ErrorKind::UpstreamConnectFailed {
            reason: "the connection was refused".into(),
            tls: false,
        },
        ErrorKind::UpstreamReset,
        ErrorKind::UpstreamProtocolError {
            what: "a chunk extension holds a bare LF",
        },
        ErrorKind::UpstreamTimeout {
            after: Duration::from_secs(2),
        },
        ErrorKind::UpstreamError { status: 503 },
        ErrorKind::CircuitOpen {
            retry_after: Duration::from_millis(2100),
            why: None,
        },
        ErrorKind::CircuitSaturated { limit: 10 },
        ErrorKind::NoHealthyEndpoints { known: 3 },
        ErrorKind::Overloaded { limit: 10 },
        ErrorKind::ShuttingDown,
        ErrorKind::FaultInjected { status: 503 },
        ErrorKind::internal("example"),
    ]
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn each_code_type_names_its_row_and_each_kind_its_code() {
        for spec in ALL_SPECS {
            assert_eq!(spec.id.as_str(), spec.code);
        }
        for kind in example_kinds() {
            let e = ProxyError::new(kind);
            assert_eq!(e.code_id().as_str(), e.code());
        }
    }

    use super::render::{html_page, percent_encode_grpc, problem_json};
    use super::*;
    use http::header::HeaderValue;

    /// DESIGN.md's error table, row by row: code, HTTP status, gRPC status, class, retryable.
    #[test]
    fn every_code_matches_the_contract_table() {
        let table = [
            ("bad_request", 400, 13, "client", false),
            ("route_not_found", 404, 12, "client", false),
            ("method_not_allowed", 405, 12, "client", false),
            ("forbidden", 403, 7, "client", false),
            ("request_timeout", 408, 4, "client", false),
            ("payload_too_large", 413, 8, "client", false),
            ("header_too_large", 431, 8, "client", false),
            ("upstream_connect_failed", 503, 14, "upstream", true),
            ("upstream_reset", 502, 14, "upstream", true),
            ("upstream_protocol_error", 502, 13, "upstream", false),
            ("upstream_timeout", 504, 4, "upstream", true),
            ("upstream_error", 503, 14, "upstream", true),
            ("circuit_open", 503, 14, "upstream", true),
            ("no_healthy_endpoints", 503, 14, "upstream", true),
            ("overloaded", 503, 14, "proxy", true),
            ("shutting_down", 503, 14, "proxy", true),
            ("fault_injected", 503, 14, "proxy", false),
            ("internal", 500, 13, "proxy", false),
        ];
        let examples = example_kinds();
        assert_eq!(ALL_SPECS.len(), table.len(), "every spec has a row");
        for row in table {
            let kind = examples
                .iter()
                .find(|k| k.spec().code == row.0)
                .unwrap_or_else(|| panic!("no example of {}", row.0));
            let e = ProxyError::new(kind.clone());
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
            html: false,
            trace_id: None,
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
            html: false,
            trace_id: None,
            type_base: "",
        };
        let resp = render(&e, &cx);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(percent_encode_grpc("a%b é"), "a%25b %C3%A9");
    }

    #[test]
    fn browsers_asking_for_html_get_an_escaped_page() {
        assert!(wants_html(Some(&HeaderValue::from_static(
            "text/html,application/xhtml+xml;q=0.9"
        ))));
        assert!(!wants_html(Some(&HeaderValue::from_static(
            "application/json, text/html"
        ))));
        assert!(!wants_html(None));
        let e = ProxyError::new(ErrorKind::BadRequest { reason: "<script>" });
        let cx = RenderContext {
            request_id: "a<b",
            path: "/",
            grpc: false,
            head: false,
            html: true,
            trace_id: None,
            type_base: "",
        };
        let page = html_page(&e, &cx);
        let text = std::str::from_utf8(&page).unwrap();
        assert!(text.contains("&lt;script&gt;") && !text.contains("<script>"), "{text}");
        assert_eq!(render(&e, &cx).headers()["content-type"], "text/html; charset=utf-8");
    }
}
