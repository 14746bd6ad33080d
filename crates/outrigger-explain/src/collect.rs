//! The streaming half: every line is folded into per-second counts, latency histograms and
//! a bounded list of state changes, so that memory depends on the span of time and the
//! number of routes and upstreams, never on the number of lines.

use std::collections::HashMap;

use crate::line::{Line, Skip};

/// A name (route, upstream, code, endpoint) as a small number.
pub type Id = u32;

/// At most this many state changes (breaker, latency, reload, ...) are kept; more are counted.
const MAX_EVENTS: usize = 100_000;
/// At most this many example failures in all (two per upstream, code and minute).
const MAX_SAMPLES: usize = 20_000;
/// Samples kept per upstream, code and minute.
const SAMPLES_PER_MINUTE: usize = 2;
/// At most this many trace hops remembered to measure clock skew between logs.
const MAX_HOPS: usize = 200_000;

/// Names, each stored once.
#[derive(Default)]
pub struct Names {
    ids: HashMap<Box<str>, Id>,
    names: Vec<Box<str>>,
}

impl Names {
    /// The id of `name`, added if new.
    pub fn id(&mut self, name: &str) -> Id {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as Id;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    /// The id of `name` if it was seen.
    pub fn get(&self, name: &str) -> Option<Id> {
        self.ids.get(name).copied()
    }

    /// The name of `id`.
    pub fn name(&self, id: Id) -> &str {
        self.names.get(id as usize).map_or("?", |n| n)
    }
}

/// One upstream in one second.
#[derive(Clone, Copy, Default, Debug)]
pub struct UpSecond {
    /// Requests routed to it (answered, failed, or served a fallback in its place).
    pub requests: u64,
    /// Requests it answered well.
    pub ok: u64,
    /// Requests that failed for an upstream- or proxy-class reason (fallbacks included).
    pub failed: u64,
    /// Retries made.
    pub retries: u64,
    /// Retries the budget did not allow.
    pub held_by_budget: u64,
}

/// One route in one second.
#[derive(Clone, Copy, Default, Debug)]
pub struct RouteSecond {
    pub requests: u64,
    /// Upstream- or proxy-class failures the caller saw.
    pub failed: u64,
    /// Answered by the route's fallback instead of a failure.
    pub fallback: u64,
    /// Callers' mistakes (client class).
    pub client: u64,
}

/// What is known of a route from its lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteMeta {
    pub upstream: Option<Id>,
    pub critical: bool,
}

/// A latency histogram: bucket `i` holds values up to `0.01 ms × 1.2^i` (a quantile read
/// from it is within 10 % of the truth).
#[derive(Clone, Debug)]
pub struct Hist(pub [u32; HIST_BUCKETS]);

/// Buckets of [`Hist`]: 0.01 ms up to about 40 minutes.
pub const HIST_BUCKETS: usize = 106;

/// Each bucket's bound over the previous one's.
const GROWTH: f64 = 1.2;

impl Hist {
    fn bucket(ms: f64) -> usize {
        // NaN and anything at or below the first bound go in the first bucket.
        if ms.is_nan() || ms <= 0.01 {
            return 0;
        }
        ((ms / 0.01).ln() / GROWTH.ln())
            .ceil()
            .clamp(0.0, (HIST_BUCKETS - 1) as f64) as usize
    }

    /// The upper bound of bucket `i`, in milliseconds.
    pub fn upper(i: usize) -> f64 {
        0.01 * GROWTH.powi(i as i32)
    }

    /// Adds another histogram.
    pub fn add(&mut self, other: &Hist) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// The `q` quantile (the geometric middle of its bucket), if any value was recorded.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.0.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.0.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(if i == 0 {
                    Hist::upper(0)
                } else {
                    Hist::upper(i) / GROWTH.sqrt()
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_ten_percent() {
        for ms in [0.05, 0.9, 4.4, 70.0, 2000.0, 30_000.0] {
            let mut h = Hist::default();
            h.0[Hist::bucket(ms)] += 1;
            let q = h.quantile(0.5).unwrap();
            assert!((q / ms - 1.0).abs() <= 0.1, "{ms} read back as {q}");
        }
    }
}

impl Default for Hist {
    fn default() -> Self {
        Hist([0; HIST_BUCKETS])
    }
}

/// A state change or notable event, kept whole (they are few).
#[derive(Clone, Debug)]
pub struct Event {
    pub ms: i64,
    pub source: Id,
    pub kind: EventKind,
    pub upstream: Option<Id>,
    /// For a breaker: the state it went to; for a reload: `success` or `rejected`.
    pub to: Option<Box<str>>,
    /// For a breaker, why; for a reload, what changed; otherwise the line's sentence.
    pub why: Box<str>,
    /// Latency: recent over baseline, and both in milliseconds.
    pub ratio: Option<f64>,
    pub recent_ms: Option<f64>,
    pub baseline_ms: Option<f64>,
}

/// The kinds of event explanations use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Breaker,
    Latency,
    Outlier,
    KeepaliveRace,
    Reload,
    Dns,
}

impl EventKind {
    fn from_kind(kind: &str) -> Option<EventKind> {
        Some(match kind {
            "breaker" => EventKind::Breaker,
            "latency" => EventKind::Latency,
            "outlier" => EventKind::Outlier,
            "keepalive_race" => EventKind::KeepaliveRace,
            "reload" => EventKind::Reload,
            "dns" => EventKind::Dns,
            _ => return None,
        })
    }
}

/// One failed request kept as an example.
#[derive(Clone, Debug)]
pub struct Sample {
    pub ms: i64,
    pub request_id: Box<str>,
    pub trace_id: Box<str>,
    pub route: Box<str>,
    pub method: Box<str>,
    pub path: Box<str>,
    pub status: Option<u16>,
    pub code: Box<str>,
    pub cause: Box<str>,
}

/// How an upstream's failures of one code went, per minute: where they failed, and on
/// which connections (the keep-alive race fails on reused connections that sat idle).
#[derive(Clone, Debug, Default)]
pub struct Detail {
    pub stages: Vec<(Box<str>, u64)>,
    pub reused: u64,
    pub fresh: u64,
    pub max_idle_ms: f64,
    /// The longest a failed request took: for timeouts, about the route's limit.
    pub max_duration_ms: f64,
    pub endpoints: Vec<(Box<str>, u64)>,
}

fn bump(list: &mut Vec<(Box<str>, u64)>, key: &str) {
    if let Some((_, n)) = list.iter_mut().find(|(k, _)| &**k == key) {
        *n += 1;
    } else if list.len() < 16 {
        list.push((key.into(), 1));
    }
}

/// An access line's attempt, reduced to what skew checks need.
#[derive(Clone, Copy, Debug)]
pub struct Hop {
    pub source: Id,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// Per input source (a file, or stdin).
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub name: String,
    pub lines: u64,
    pub skipped: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub truncated: bool,
}

/// Everything folded from the lines read so far.
#[derive(Default)]
pub struct Collected {
    pub names: Names,
    pub sources: Vec<Source>,
    pub lines: u64,
    pub skipped: [u64; 4],
    pub up_seconds: HashMap<(Id, i64), UpSecond>,
    /// Failures by (upstream, code, second).
    pub failures: HashMap<(Id, Id, i64), u64>,
    pub route_seconds: HashMap<(Id, i64), RouteSecond>,
    pub routes: HashMap<Id, RouteMeta>,
    /// Callers' mistakes by (route, code): count and the last status.
    pub client_errors: HashMap<(Id, Id), (u64, u16)>,
    /// Upstream latency (`upstream_ms`) by (upstream, 10-second slot).
    pub latency: HashMap<(Id, i64), Hist>,
    pub events: Vec<Event>,
    pub events_dropped: u64,
    pub samples: HashMap<(Id, Id, i64), Vec<Sample>>,
    pub sample_count: usize,
    pub details: HashMap<(Id, Id, i64), Detail>,
    /// Suppressed access lines: (ms, route, code or None for a fallback, count).
    pub suppressed: Vec<(i64, Id, Option<Id>, u64)>,
    /// Attempt client spans by span id, and the lines that named one as their parent.
    pub hops: HashMap<Box<str>, Hop>,
    pub children: Vec<(Box<str>, Hop)>,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

impl Collected {
    /// A new input source; its lines are told apart in journeys and skew checks.
    pub fn add_source(&mut self, name: &str) -> Id {
        self.sources.push(Source {
            name: name.to_owned(),
            ..Source::default()
        });
        (self.sources.len() - 1) as Id
    }

    /// Counts a line that could not be used.
    pub fn skip(&mut self, source: Id, why: Skip) {
        self.skipped[why as usize] += 1;
        if let Some(s) = self.sources.get_mut(source as usize) {
            s.skipped += 1;
            if why == Skip::Truncated {
                s.truncated = true;
            }
        }
    }

    /// Lines not used, all reasons.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Folds one parsed line in.
    pub fn add(&mut self, source: Id, line: &Line<'_>, ms: i64) {
        self.lines += 1;
        self.first_ms = Some(self.first_ms.map_or(ms, |f| f.min(ms)));
        self.last_ms = Some(self.last_ms.map_or(ms, |l| l.max(ms)));
        if let Some(s) = self.sources.get_mut(source as usize) {
            s.lines += 1;
            s.first_ms = Some(s.first_ms.map_or(ms, |f| f.min(ms)));
            s.last_ms = Some(s.last_ms.map_or(ms, |l| l.max(ms)));
        }
        match line.kind.as_deref().unwrap_or("") {
            "access" => self.access(source, line, ms),
            "suppressed" => self.suppressed_line(line, ms),
            "traffic" => self.traffic(line, ms),
            kind => {
                if let Some(kind) = EventKind::from_kind(kind) {
                    self.event(source, kind, line, ms);
                }
            }
        }
    }

    fn access(&mut self, source: Id, line: &Line<'_>, ms: i64) {
        let sec = ms.div_euclid(1000);
        let class = line.class.as_deref();
        let route = line.route.as_deref().map(|r| self.names.id(r));
        let upstream = line.upstream.as_deref().map(|u| self.names.id(u));
        if let Some(r) = route {
            let meta = self.routes.entry(r).or_default();
            meta.upstream = upstream.or(meta.upstream);
            meta.critical |= line.critical;
        }
        let fallback = line.fallback.as_deref();
        let failed = matches!(class, Some("upstream" | "proxy")) || fallback.is_some();
        let code = line.code.as_deref().or(fallback);

        if let Some(r) = route {
            let rs = self.route_seconds.entry((r, sec)).or_default();
            rs.requests += 1;
            match (class, fallback) {
                (_, Some(_)) => rs.fallback += 1,
                (Some("client"), _) => rs.client += 1,
                (Some(_), _) => rs.failed += 1,
                _ => {}
            }
        }
        if class == Some("client")
            && let Some(c) = code
        {
            // A request no route matched is still a caller's mistake worth counting.
            let r = route.unwrap_or_else(|| self.names.id("(no route)"));
            let c = self.names.id(c);
            let e = self.client_errors.entry((r, c)).or_insert((0, 0));
            e.0 += 1;
            e.1 = line.status.unwrap_or(e.1);
        }
        let Some(up) = upstream else { return };

        let retries = line.attempts.len().saturating_sub(1) as u64;
        let held = line
            .attempts
            .iter()
            .filter(|a| a.next.as_deref() == Some("budget_exhausted"))
            .count() as u64;
        let us = self.up_seconds.entry((up, sec)).or_default();
        us.requests += 1;
        us.retries += retries;
        us.held_by_budget += held;
        if failed {
            us.failed += 1;
        } else if class.is_none() && line.status.is_some() {
            us.ok += 1;
        }
        if let Some(u_ms) = line.upstream_ms.filter(|_| !line.attempts.is_empty()) {
            let h = self.latency.entry((up, sec.div_euclid(10))).or_default();
            let b = Hist::bucket(u_ms);
            h.0[b] = h.0[b].saturating_add(1);
        }
        if failed && let Some(code) = code {
            let c = self.names.id(code);
            *self.failures.entry((up, c, sec)).or_default() += 1;
            let minute = ms.div_euclid(60_000);
            let d = self.details.entry((up, c, minute)).or_default();
            d.max_duration_ms = d.max_duration_ms.max(line.duration_ms.unwrap_or(0.0));
            for a in line.attempts.iter().filter(|a| a.code.is_some()) {
                if let Some(s) = &a.stage {
                    bump(&mut d.stages, s);
                }
                if let Some(e) = &a.endpoint {
                    bump(&mut d.endpoints, e);
                }
                match a.connection.as_deref() {
                    Some("reused") => {
                        d.reused += 1;
                        d.max_idle_ms = d.max_idle_ms.max(a.idle_ms.unwrap_or(0.0));
                    }
                    Some(_) => d.fresh += 1,
                    None => {}
                }
            }
            if self.sample_count < MAX_SAMPLES {
                // The earliest of each minute, whatever order the lines come in.
                let list = self.samples.entry((up, c, minute)).or_default();
                let room = list.len() < SAMPLES_PER_MINUTE;
                let latest = list
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, x)| x.ms)
                    .map(|(i, x)| (i, x.ms));
                if room || latest.is_some_and(|(_, at)| ms < at) {
                    let sample = Sample {
                        ms,
                        request_id: line.request_id.as_deref().unwrap_or("").into(),
                        trace_id: line.trace_id.as_deref().unwrap_or("").into(),
                        route: line.route.as_deref().unwrap_or("").into(),
                        method: line.method.as_deref().unwrap_or("").into(),
                        path: line.path.as_deref().unwrap_or("").into(),
                        status: line.status,
                        code: code.into(),
                        cause: line.cause.as_deref().or(line.msg.as_deref()).unwrap_or("").into(),
                    };
                    match latest {
                        Some((i, _)) if !room => list[i] = sample,
                        _ => {
                            list.push(sample);
                            self.sample_count += 1;
                        }
                    }
                }
            }
        }
        self.hops_of(source, line, ms);
    }

    /// Remembers the attempts' client spans and this line's parent, to measure clock skew
    /// between two proxies' logs of the same call.
    fn hops_of(&mut self, source: Id, line: &Line<'_>, ms: i64) {
        let duration = line.duration_ms.unwrap_or(0.0);
        let start = ms as f64 - duration;
        if let Some(parent) = &line.parent_span_id
            && self.children.len() < MAX_HOPS
        {
            self.children.push((
                parent.as_ref().into(),
                Hop {
                    source,
                    start_ms: start,
                    end_ms: ms as f64,
                },
            ));
        }
        let mut at = start;
        for a in &line.attempts {
            if let Some(id) = &a.span_id
                && self.hops.len() < MAX_HOPS
            {
                self.hops.insert(
                    id.as_ref().into(),
                    Hop {
                        source,
                        start_ms: at,
                        end_ms: at + a.duration_ms,
                    },
                );
            }
            at += a.duration_ms + a.backoff_ms.unwrap_or(0.0);
        }
    }

    fn suppressed_line(&mut self, line: &Line<'_>, ms: i64) {
        // "upstream_timeout on route checkout" / "fallback on route checkout"
        let (Some(n), Some("access"), Some(key)) = (line.suppressed, line.of_kind.as_deref(), line.key.as_deref())
        else {
            return;
        };
        let Some((code, route)) = key.split_once(" on route ") else {
            return;
        };
        let route = self.names.id(route);
        let code = (code != "fallback").then(|| self.names.id(code));
        self.suppressed.push((ms, route, code, n));
    }

    fn traffic(&mut self, line: &Line<'_>, ms: i64) {
        let (Some(route), Some(n)) = (line.route.as_deref(), line.requests) else {
            return;
        };
        let sec = ms.div_euclid(1000);
        let r = self.names.id(route);
        let up = line.upstream.as_deref().map(|u| self.names.id(u));
        let meta = self.routes.entry(r).or_default();
        meta.upstream = up.or(meta.upstream);
        meta.critical |= line.critical;
        self.route_seconds.entry((r, sec)).or_default().requests += n;
        if let Some(up) = up {
            let us = self.up_seconds.entry((up, sec)).or_default();
            us.requests += n;
            us.ok += n;
        }
    }

    fn event(&mut self, source: Id, kind: EventKind, line: &Line<'_>, ms: i64) {
        if self.events.len() >= MAX_EVENTS {
            self.events_dropped += 1;
            return;
        }
        let upstream = line.upstream.as_deref().map(|u| self.names.id(u));
        let (to, why) = match kind {
            EventKind::Breaker => (line.to.as_deref(), line.why.as_deref()),
            EventKind::Reload => (line.result.as_deref(), line.changes.as_deref().or(line.msg.as_deref())),
            _ => (None, line.msg.as_deref()),
        };
        self.events.push(Event {
            ms,
            source,
            kind,
            upstream,
            to: to.map(Into::into),
            why: why.unwrap_or("").into(),
            ratio: line.ratio,
            recent_ms: line.recent_ms,
            baseline_ms: line.baseline_ms,
        });
    }

    /// Folds the suppressed access lines into the counts, now that every route's upstream
    /// is known: an outage that the log's rate limit hid still counts in full.
    pub fn settle(&mut self) {
        for (ms, route, code, n) in std::mem::take(&mut self.suppressed) {
            let sec = ms.div_euclid(1000);
            let rs = self.route_seconds.entry((route, sec)).or_default();
            rs.requests += n;
            if code.is_some() {
                rs.failed += n;
            } else {
                rs.fallback += n;
            }
            let Some(up) = self.routes.get(&route).and_then(|m| m.upstream) else {
                continue;
            };
            let us = self.up_seconds.entry((up, sec)).or_default();
            us.requests += n;
            us.failed += n;
            if let Some(c) = code {
                *self.failures.entry((up, c, sec)).or_default() += n;
            }
        }
        self.events.sort_by_key(|e| e.ms);
    }
}
