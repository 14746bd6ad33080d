//! The explanation as data: what `--format json` prints (the schema in docs/explain.md),
//! and what the text and brief renderings are made from.

use serde::Serialize;

/// The whole explanation of a set of logs.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The time the logs cover.
    pub window: Window,
    /// Incidents, critical routes first, then by start time.
    pub incidents: Vec<Incident>,
    /// Every route's requests and how many were hurt, critical first.
    pub blast_radius: Vec<RouteImpact>,
    /// Callers' mistakes (client-class errors), kept apart: never an outage.
    pub client_errors: Vec<ClientErrors>,
    /// Lines not used: junk, other programs', bad times, cut-off last lines.
    pub skipped_lines: u64,
    /// What was read.
    pub input: Input,
}

/// From the first line's time to the last's (RFC 3339).
#[derive(Debug, Serialize)]
pub struct Window {
    pub start: Option<String>,
    pub end: Option<String>,
}

/// Failures of one upstream that belong together in time.
#[derive(Debug, Serialize)]
pub struct Incident {
    /// 1, 2, ... in the order shown.
    pub id: usize,
    pub upstream: String,
    /// The failure that started it (not the breaker's fast failures that followed).
    pub code: String,
    /// `upstream` or `proxy`.
    pub class: String,
    /// Failed requests by code.
    pub codes: Vec<CodeCount>,
    /// First failure (or the slowdown's first notice).
    pub start: String,
    /// Last failure; `null` while it is still going on at the end of the logs.
    pub end: Option<String>,
    /// When requests succeeded again, if they did.
    pub recovered_at: Option<String>,
    /// Whether a critical route was hit.
    pub critical: bool,
    /// Requests that failed or were served a fallback in its place.
    pub requests: u64,
    /// All requests to the upstream from start to end.
    pub requests_total: u64,
    /// `requests / requests_total`.
    pub share: f64,
    /// Routes hit, critical first.
    pub routes: Vec<RouteImpact>,
    /// Median upstream latency in the minute before and during, in milliseconds.
    pub latency_ms: Latency,
    /// Breaker transitions of this upstream during the incident and its recovery.
    pub breaker: Vec<BreakerChange>,
    pub retries: Retries,
    /// What happened, in order, as sentences.
    pub story: Vec<String>,
    /// What to do first.
    pub first_actions: Vec<String>,
    /// A few failed requests, as examples.
    pub samples: Vec<SampleOut>,
}

/// A code and how many requests failed with it.
#[derive(Debug, Serialize)]
pub struct CodeCount {
    pub code: String,
    pub requests: u64,
}

/// Median latencies around an incident.
#[derive(Debug, Serialize, Default)]
pub struct Latency {
    pub before_p50: Option<f64>,
    pub during_p50: Option<f64>,
}

/// One breaker transition.
#[derive(Debug, Serialize)]
pub struct BreakerChange {
    pub at: String,
    pub to: String,
    pub why: String,
}

/// Retries during an incident.
#[derive(Debug, Serialize, Default)]
pub struct Retries {
    pub made: u64,
    /// Retries the retry budget did not allow.
    pub held_by_budget: u64,
}

/// One route's requests and the harm done to them.
#[derive(Debug, Serialize, Clone)]
pub struct RouteImpact {
    pub route: String,
    pub upstream: Option<String>,
    pub critical: bool,
    pub requests: u64,
    /// Upstream- or proxy-class failures the callers saw.
    pub failed: u64,
    /// Answered by the route's fallback instead.
    pub fallback: u64,
    /// Callers' mistakes.
    pub client_errors: u64,
    /// `(failed + fallback) / requests`.
    pub share: f64,
}

/// Callers' mistakes on one route with one code.
#[derive(Debug, Serialize)]
pub struct ClientErrors {
    pub route: String,
    pub code: String,
    pub status: u16,
    pub requests: u64,
}

/// An example failure.
#[derive(Debug, Serialize)]
pub struct SampleOut {
    pub ts: String,
    pub request_id: String,
    pub trace_id: String,
    pub route: String,
    pub request: String,
    pub status: Option<u16>,
    pub code: String,
    pub cause: String,
}

/// What was read.
#[derive(Debug, Serialize)]
pub struct Input {
    pub lines: u64,
    /// Lines not used, by reason (`not_json`, `not_outrigger`, `bad_timestamp`, `truncated`).
    pub skipped: serde_json::Map<String, serde_json::Value>,
    pub sources: Vec<SourceOut>,
    /// Logs whose clocks disagree, seen on requests that crossed both.
    pub clock_skew: Vec<Skew>,
    /// State changes beyond the kept maximum (counted, not used).
    pub events_dropped: u64,
}

/// One file (or stdin).
#[derive(Debug, Serialize)]
pub struct SourceOut {
    pub name: String,
    pub lines: u64,
    pub skipped: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    pub truncated: bool,
}

/// Two logs whose clocks disagree.
#[derive(Debug, Serialize)]
pub struct Skew {
    /// The log whose times run ahead (its hops end after their caller's attempt).
    pub ahead: String,
    pub behind: String,
    /// At least this far apart (median over the requests seen).
    pub by_ms: f64,
    /// Requests crossing both logs whose times contradict each other.
    pub requests: u64,
}
