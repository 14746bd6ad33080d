//! The typed configuration: what a valid file means, with every default filled in.
//!
//! These types are plain data. Every field has its default here (and in
//! `config/outrigger.yaml`, which documents them); the proxy compiles them into its runtime
//! form. Reading a file into these types is in [`crate::load`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

/// A whole, valid configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where traffic comes in. At least one.
    pub listeners: Vec<Listener>,
    /// Shutdown behaviour.
    pub drain: Drain,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/debug/*`).
    pub admin: Admin,
    /// Named groups of endpoints, in file order.
    pub upstreams: Vec<Upstream>,
    /// Routes, in file order: the first that matches wins.
    pub routes: Vec<Route>,
    /// How errors are rendered.
    pub errors: Errors,
    /// Metrics, traces and logs.
    pub telemetry: Telemetry,
}

impl Config {
    /// The upstream with this name.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// Which way a listener's traffic flows; decides drain behaviour and forwarding headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Traffic to this service instance.
    Inbound,
    /// The app's calls to its dependencies (`HTTP_PROXY` or direct).
    Outbound,
}

impl Role {
    /// The config word for this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inbound => "inbound",
            Role::Outbound => "outbound",
        }
    }
}

/// A port outrigger accepts traffic on.
#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    /// Unique name, used by routes' `listener:` and in logs.
    pub name: String,
    /// Inbound or outbound.
    pub role: Role,
    /// `IP:port` to bind.
    pub address: SocketAddr,
    /// Terminate TLS here (certificate and key files).
    pub tls: Option<ListenerTls>,
    /// Protection against slow and oversized clients.
    pub limits: ListenerLimits,
    /// What happens to a redirected connection (transparent mode) that no route takes.
    pub unmatched: Unmatched,
}

/// What a listener does with a connection redirected to it (`outrigger init-iptables`) that
/// no route takes: its original destination matches no route, or it does not speak HTTP
/// (TLS the app originates, a database protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// Forward it as plain TCP to where it was going, untouched (the outbound default: an
    /// app's calls to dependencies nobody configured keep working).
    Passthrough,
    /// Close it (the inbound default: nothing reaches the app around the listener's routes,
    /// TLS and `allow` rules).
    Refuse,
}

impl Unmatched {
    /// The default for a listener of this role.
    pub fn default_for(role: Role) -> Self {
        match role {
            Role::Inbound => Unmatched::Refuse,
            Role::Outbound => Unmatched::Passthrough,
        }
    }

    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::Passthrough => "passthrough",
            Unmatched::Refuse => "refuse",
        }
    }
}

/// TLS settings of a listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Per-listener limits.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerLimits {
    /// Largest request head (request line and headers) accepted; beyond it: 431.
    pub max_header_bytes: usize,
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Requests in flight on this listener before new ones are shed (503 overloaded).
    pub max_in_flight: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_in_flight: 10_000,
        }
    }
}

/// Shutdown behaviour on SIGTERM.
#[derive(Clone, Debug, PartialEq)]
pub struct Drain {
    /// Readiness off, keep serving this long while endpoints update.
    pub delay: Duration,
    /// Then let in-flight requests finish for at most this long.
    pub timeout: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            delay: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The admin listener.
#[derive(Clone, Debug, PartialEq)]
pub struct Admin {
    /// `IP:port` of `/metrics`, `/healthz`, `/readyz`, `/debug/*` and `/shutdown`.
    pub address: SocketAddr,
    /// Sources that may use `/debug/*` and `POST /shutdown` (default: loopback only).
    pub debug_from: Vec<ipnet::IpNet>,
}

impl Admin {
    /// Loopback: `127.0.0.0/8` and `::1/128`.
    pub fn loopback() -> Vec<ipnet::IpNet> {
        vec![
            ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::LOCALHOST, 8)),
            ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::LOCALHOST, 128)),
        ]
    }

    /// Whether `peer` may use `/debug/*` and `POST /shutdown` (an IPv4 address carried in
    /// IPv6 is checked as IPv4).
    pub fn may_debug(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.debug_from.iter().any(|net| net.contains(&peer))
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: SocketAddr::from(([0, 0, 0, 0], 15090)),
            debug_from: Admin::loopback(),
        }
    }
}

/// HTTP version spoken to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (h2c prior knowledge without TLS).
    Http2,
    /// HTTP/2 for gRPC requests, HTTP/1.1 for the rest.
    Auto,
}

impl Protocol {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Auto => "auto",
        }
    }
}

/// One `host:port` of an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP address or a DNS name.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A named group of endpoints that routes send traffic to.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    /// Unique name, used by routes and in metrics.
    pub name: String,
    /// Where to connect. At least one.
    pub endpoints: Vec<Endpoint>,
    /// HTTP version spoken to the endpoints.
    pub protocol: Protocol,
    /// Give up connecting after this long (upstream_connect_failed).
    pub connect_timeout: Duration,
    /// How often DNS names are resolved again.
    pub resolve_every: Duration,
    /// Connect with TLS.
    pub tls: Option<UpstreamTls>,
    /// Keep-alive connection pool.
    pub pool: Pool,
    /// Fail fast when the upstream is failing.
    pub circuit_breaker: CircuitBreaker,
    /// Take failing endpoints out of rotation.
    pub outlier_detection: OutlierDetection,
}

/// TLS towards an upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamTls {
    /// Name checked against the certificate (default: the endpoint's host).
    pub server_name: Option<String>,
    /// PEM CA bundle (default: the bundled Mozilla roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    pub cert: Option<PathBuf>,
    /// PEM client key for mTLS.
    pub key: Option<PathBuf>,
}

/// Connection pool settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// An idle connection is closed after this long. Keep it below the upstream's own
    /// keep-alive timeout, or a request can race the upstream's close ("connection reset").
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle_timeout: Duration::from_secs(4),
            max_idle_per_endpoint: 64,
        }
    }
}

/// Circuit breaker settings (per upstream).
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreaker {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Or open when at least this share of the window failed.
    pub failure_rate: f64,
    /// The sliding window of the rate rule.
    pub window: Duration,
    /// The rate rule needs this many calls in the window.
    pub min_requests: u32,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period (it doubles on each re-open).
    pub max_open_for: Duration,
    /// Trial calls allowed while half-open.
    pub half_open_probes: u32,
    /// Also open when too many calls are slow.
    pub slow_call: Option<SlowCall>,
    /// Concurrency limit: fail fast beyond this many calls in flight.
    pub max_in_flight: u32,
    /// Count upstream 5xx answers as failures (connect failures, resets and timeouts always
    /// count; 4xx never do).
    pub trip_on_5xx: bool,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 3,
            slow_call: None,
            max_in_flight: 1024,
            trip_on_5xx: true,
        }
    }
}

/// The slow-call rule of a breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct SlowCall {
    /// A call slower than this is slow.
    pub duration: Duration,
    /// Open when at least this share of the window was slow.
    pub rate: f64,
}

/// Passive outlier detection settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// Eject an endpoint after this many failures in a row.
    pub consecutive_failures: u32,
    /// For this long (growing with repeats).
    pub eject_for: Duration,
    /// Never eject more than this share of endpoints (percent).
    pub max_ejected_percent: f64,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            eject_for: Duration::from_secs(30),
            max_ejected_percent: 50.0,
        }
    }
}

/// A route: which requests go to which upstream, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Unique name, used in metrics (`http_route`) and logs.
    pub name: String,
    /// Which requests this route takes.
    pub matcher: RouteMatch,
    /// The upstream's name (checked to exist).
    pub upstream: String,
    /// Only on this listener (default: every listener).
    pub listener: Option<String>,
    /// Largest request body (413 beyond it).
    pub max_body_bytes: Option<u64>,
    /// A business-critical path.
    pub critical: bool,
    /// The whole request, retries included, must get an answer within this.
    pub timeout: Duration,
    /// After the response head, the longest silence in the response body (default: `timeout`).
    pub body_idle_timeout: Duration,
    /// Retry policy (none: one attempt).
    pub retry: Option<Retry>,
    /// A degraded answer for upstream-class failures.
    pub fallback: Option<Fallback>,
    /// Fault injection for rehearsals.
    pub fault: Option<Fault>,
    /// Only these client identities may use the route (mTLS listeners).
    pub allow: Option<Allow>,
    /// Answer from the last good response when the upstream fails.
    pub stale_if_error: Option<StaleIfError>,
}

/// A route's stale-if-error store (RFC 5861 in spirit): the last good answer to each
/// idempotent GET, served when the upstream fails for an upstream-class reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleIfError {
    /// An answer older than this is never served.
    pub max_age: Duration,
    /// Memory for kept answers (heads and bodies) on this route; the least recently used
    /// go first. One answer may take at most an eighth of it.
    pub max_bytes: u64,
    /// Also keep answers to requests that carry `Authorization` or `Cookie`, each under its
    /// own credentials (off: such requests are never answered from the store).
    pub key_by_credentials: bool,
}

impl StaleIfError {
    /// The largest single answer kept.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_bytes / 8
    }
}

/// Who may use a route: client identities from mTLS certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    /// Identities, each exact or a prefix ending in `*`. Never empty.
    pub identities: Vec<String>,
}

impl Allow {
    /// Whether `identity` is one of the allowed (exactly, or by a `*` prefix).
    pub fn admits(&self, identity: &str) -> bool {
        self.identities.iter().any(|allowed| match allowed.strip_suffix('*') {
            Some(prefix) => identity.starts_with(prefix),
            None => identity == allowed,
        })
    }
}

/// What a route matches. Every condition set must hold.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    /// The path equals this.
    pub path: Option<String>,
    /// The path starts with this (segment-unaware, like Envoy's `prefix`).
    pub path_prefix: Option<String>,
    /// The whole path matches this regex.
    pub path_regex: Option<Regex>,
    /// The request's host (Host header, `:authority`, or an absolute-form URI's authority).
    pub host: Option<HostMatch>,
    /// The method is one of these (empty: any).
    pub methods: Vec<Method>,
    /// These headers have exactly these values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Where the client's connection was going: its original destination when it was
    /// redirected (transparent mode), else the listener's own address.
    pub destination: Option<DestinationMatch>,
}

/// `10.0.0.0/8:443`, `[fd00::/8]:443`, `10.1.2.3:80` or `:8080`: a connection's original
/// destination, by address range and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestinationMatch {
    /// The address range (none: any address).
    pub net: Option<ipnet::IpNet>,
    /// The port.
    pub port: u16,
}

impl DestinationMatch {
    /// Whether `dst` is in the range and on the port (an IPv4 address carried in IPv6 is
    /// checked as IPv4).
    pub fn matches(&self, dst: SocketAddr) -> bool {
        dst.port() == self.port && self.net.is_none_or(|n| n.contains(&dst.ip().to_canonical()))
    }
}

impl std::fmt::Display for DestinationMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.net {
            Some(ipnet::IpNet::V6(n)) => write!(f, "[{n}]:{}", self.port),
            Some(n) => write!(f, "{n}:{}", self.port),
            None => write!(f, ":{}", self.port),
        }
    }
}

/// Two matchers are equal when they match the same way (a regex compares by its pattern).
impl PartialEq for RouteMatch {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.path_prefix == other.path_prefix
            && self.path_regex.as_ref().map(Regex::as_str) == other.path_regex.as_ref().map(Regex::as_str)
            && self.host == other.host
            && self.methods == other.methods
            && self.headers == other.headers
            && self.destination == other.destination
    }
}

/// A host pattern: `api.example.com`, `*.example.com`, optionally with `:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMatch {
    /// Lower-case host; a leading `*.` matches any subdomain.
    pub host: String,
    /// When set, the port must match too.
    pub port: Option<u16>,
}

impl HostMatch {
    /// Whether an authority (`host` or `host:port`, any case) matches.
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if self.port.is_some() && self.port != port {
            return false;
        }
        match self.host.strip_prefix("*.") {
            // Compared as bytes: a host from the wire may hold any byte, and slicing a str
            // at a non-character boundary would panic.
            Some(suffix) => {
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                h.len() > s.len() + 1
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                    && h[h.len() - s.len() - 1] == b'.'
            }
            None => host.eq_ignore_ascii_case(&self.host),
        }
    }
}

/// When a retry is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    /// The connection could not be made.
    ConnectFailure,
    /// The connection was reset before a response.
    Reset,
    /// The upstream answered 503.
    Unavailable,
    /// The upstream answered 502, 503 or 504.
    Gateway,
    /// An attempt timed out (`per_try_timeout`).
    Timeout,
}

impl RetryOn {
    /// Every condition's config word, in the order documented.
    pub const WORDS: [&'static str; 5] = ["connect_failure", "reset", "unavailable", "gateway", "timeout"];

    fn from_word(w: &str) -> Option<Self> {
        Some(match w {
            "connect_failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "unavailable" => RetryOn::Unavailable,
            "gateway" => RetryOn::Gateway,
            "timeout" => RetryOn::Timeout,
            _ => return None,
        })
    }

    pub(crate) fn parse(w: &str) -> Option<Self> {
        Self::from_word(w)
    }

    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect_failure",
            RetryOn::Reset => "reset",
            RetryOn::Unavailable => "unavailable",
            RetryOn::Gateway => "gateway",
            RetryOn::Timeout => "timeout",
        }
    }
}

/// A route's retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Total tries including the first.
    pub attempts: u32,
    /// Each try must answer within this (default: the route timeout).
    pub per_try_timeout: Option<Duration>,
    /// Conditions that allow a retry.
    pub on: Vec<RetryOn>,
    /// Further statuses that allow a retry.
    pub retriable_status: Vec<u16>,
    /// Retry only GET, HEAD, OPTIONS, PUT, DELETE, TRACE.
    pub idempotent_only: bool,
    /// A request body larger than this is sent once.
    pub replay_buffer_bytes: usize,
    /// Wait between tries.
    pub backoff: Backoff,
    /// Limit on retries relative to requests.
    pub budget: RetryBudget,
}

/// Exponential backoff with full jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// First wait's upper bound.
    pub base: Duration,
    /// Largest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// Retries may not exceed `min_per_second × 10 + ratio × requests` in a 10 s window.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryBudget {
    /// Share of requests that may be retried.
    pub ratio: f64,
    /// Retries always allowed per second.
    pub min_per_second: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10.0,
        }
    }
}

/// A degraded answer served on upstream-class failures, marked `outrigger-fallback`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    /// Its status.
    pub status: u16,
    /// Its content type.
    pub content_type: String,
    /// Its body.
    pub body: String,
}

/// Fault injection for rehearsals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// Delay a share of requests.
    pub delay: Option<FaultDelay>,
    /// Fail a share of requests.
    pub abort: Option<FaultAbort>,
    /// A request may ask for a fault with `x-outrigger-fault`.
    pub allow_header: bool,
}

/// Injected delay.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultDelay {
    /// Percent of requests (0–100).
    pub percent: f64,
    /// How long.
    pub duration: Duration,
}

/// Injected failure.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultAbort {
    /// Percent of requests (0–100).
    pub percent: f64,
    /// The status answered.
    pub status: u16,
}

/// Error rendering.
#[derive(Clone, Debug, PartialEq)]
pub struct Errors {
    /// Replace non-problem upstream 5xx bodies with problem+json.
    pub normalize_upstream_5xx: bool,
    /// Problem `type` = this + code.
    pub type_base: String,
}

impl Default for Errors {
    fn default() -> Self {
        Errors {
            normalize_upstream_5xx: true,
            type_base: "urn:outrigger:error:".to_owned(),
        }
    }
}

/// Metrics, traces and logs.
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    /// `service.name` of spans and logs.
    pub service_name: String,
    /// Tracing.
    pub tracing: Tracing,
    /// Logs.
    pub logs: Logs,
    /// Upstream latency against its own baseline.
    pub latency_inflation: LatencyInflation,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            service_name: "outrigger".to_owned(),
            tracing: Tracing::default(),
            logs: Logs::default(),
            latency_inflation: LatencyInflation::default(),
        }
    }
}

/// `outrigger_upstream_latency_inflation_ratio` and its warning.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyInflation {
    /// Time constant of the long-term average.
    pub baseline: Duration,
    /// Time constant of the recent average.
    pub recent: Duration,
    /// Recent over baseline at which a warning is logged (0: never).
    pub alert_ratio: f64,
}

impl Default for LatencyInflation {
    fn default() -> Self {
        LatencyInflation {
            baseline: Duration::from_secs(600),
            recent: Duration::from_secs(10),
            alert_ratio: 2.0,
        }
    }
}

/// Trace propagation formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// W3C `traceparent`/`tracestate`.
    TraceContext,
    /// Zipkin B3 (single and multi header), accepted on input.
    B3,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
}

/// Tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracing {
    /// Export spans here (none: no export).
    pub otlp_endpoint: Option<http::Uri>,
    /// OTLP transport.
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces sampled.
    pub sample_ratio: f64,
    /// Accepted inbound formats.
    pub propagate: Vec<Propagation>,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.0,
            propagate: vec![Propagation::TraceContext],
        }
    }
}

/// Log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal.
    Info,
    /// Only problems.
    Warn,
    /// Only what an operator must act on.
    Error,
}

impl LogLevel {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Logs.
#[derive(Clone, Debug, PartialEq)]
pub struct Logs {
    /// Least severe level written.
    pub level: LogLevel,
    /// One line per request.
    pub access_log: bool,
    /// Share of successful requests logged (failures always are, rate-limited).
    pub access_sample_ratio: f64,
    /// Per message kind.
    pub rate_limit: RateLimit,
    /// Header values never written anywhere (lower case).
    pub redact_headers: Vec<String>,
    /// Query parameter values never written anywhere.
    pub redact_query_params: Vec<String>,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            level: LogLevel::Info,
            access_log: true,
            access_sample_ratio: 1.0,
            rate_limit: RateLimit::default(),
            redact_headers: [
                "authorization",
                "cookie",
                "set-cookie",
                "proxy-authorization",
                "x-api-key",
            ]
            .map(String::from)
            .to_vec(),
            redact_query_params: ["token", "access_token", "api_key", "password"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// A token bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained lines per second.
    pub per_second: f64,
    /// Burst.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 50.0,
            burst: 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HostMatch;

    #[test]
    fn host_patterns_match_case_insensitively_and_never_panic() {
        let exact = HostMatch {
            host: "api.example.com".into(),
            port: None,
        };
        assert!(exact.matches("API.Example.com", Some(80)));
        assert!(!exact.matches("x.api.example.com", None));
        let wild = HostMatch {
            host: "*.example.com".into(),
            port: Some(8080),
        };
        assert!(wild.matches("a.EXAMPLE.com", Some(8080)));
        assert!(!wild.matches("a.example.com", Some(80)));
        assert!(!wild.matches("example.com", Some(8080)));
        assert!(!wild.matches(".example.com", Some(8080)));
        assert!(!wild.matches("aexample.com", Some(8080)));
        assert!(!wild.matches("é.example.cöm", Some(8080)));
        assert!(!wild.matches("ö", Some(8080)));
    }
}
