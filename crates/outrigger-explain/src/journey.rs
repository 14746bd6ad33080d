//! `--trace ID`: one request's journey through every proxy whose log is given, as a tree
//! of hops (a proxy's access line) and attempts, linked by span ids: a hop's
//! `parent_span_id` is the client span of the caller's attempt.

use std::fmt::Write;

use serde::Serialize;

use crate::incident::ms_text;
use crate::line::{Line, format_ts};

/// At most this many lines of one journey are kept.
const MAX_HOPS: usize = 10_000;

/// One proxy's access line of the request.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub ts: String,
    #[serde(skip)]
    pub end_ms: i64,
    pub log: String,
    pub request_id: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub request: String,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub fallback: Option<String>,
    pub duration_ms: f64,
    pub cause: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// One attempt of a hop, with the hops it caused downstream.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub n: u32,
    pub span_id: Option<String>,
    pub endpoint: Option<String>,
    pub connection: Option<String>,
    pub idle_ms: Option<f64>,
    pub duration_ms: f64,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub stage: Option<String>,
    pub next: Option<String>,
    pub backoff_ms: Option<f64>,
    pub retry_budget_left: Option<f64>,
    /// Hops logged by the proxies this attempt reached.
    pub hops: Vec<Hop>,
}

/// Collects the lines of one trace or request id while the logs are read.
pub struct Finder {
    id: String,
    found: Vec<Hop>,
    /// Lines beyond the kept maximum (10,000).
    pub dropped: u64,
}

impl Finder {
    /// Looks for `id`: a trace id (32 hex) or a request id.
    pub fn new(id: &str) -> Self {
        Finder {
            id: id.trim().to_ascii_lowercase(),
            found: Vec::new(),
            dropped: 0,
        }
    }

    /// Keeps `line` if it belongs to the journey.
    pub fn offer(&mut self, log: &str, line: &Line<'_>, ms: i64) {
        if line.kind.as_deref() != Some("access") {
            return;
        }
        let hit =
            |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(&self.id));
        if !hit(&line.trace_id) && !hit(&line.request_id) {
            return;
        }
        if self.found.len() >= MAX_HOPS {
            self.dropped += 1;
            return;
        }
        let s = |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().map(str::to_owned);
        self.found.push(Hop {
            ts: format_ts(ms),
            end_ms: ms,
            log: log.to_owned(),
            request_id: s(&line.request_id).unwrap_or_default(),
            trace_id: s(&line.trace_id).unwrap_or_default(),
            span_id: s(&line.span_id).unwrap_or_default(),
            parent_span_id: s(&line.parent_span_id),
            route: s(&line.route),
            upstream: s(&line.upstream),
            request: format!(
                "{} {}",
                line.method.as_deref().unwrap_or("?"),
                line.path.as_deref().unwrap_or("?")
            ),
            status: line.status,
            code: s(&line.code),
            fallback: s(&line.fallback),
            duration_ms: line.duration_ms.unwrap_or(0.0),
            cause: s(&line.cause),
            attempts: line
                .attempts
                .iter()
                .map(|a| Attempt {
                    n: a.n,
                    span_id: s(&a.span_id),
                    endpoint: s(&a.endpoint),
                    connection: s(&a.connection),
                    idle_ms: a.idle_ms,
                    duration_ms: a.duration_ms,
                    status: a.status,
                    code: s(&a.code),
                    stage: s(&a.stage),
                    next: s(&a.next),
                    backoff_ms: a.backoff_ms,
                    retry_budget_left: a.retry_budget_left,
                    hops: Vec::new(),
                })
                .collect(),
        });
    }

    /// The journey: hops nested under the attempts that caused them, roots in time order.
    pub fn finish(self) -> Journey {
        let mut hops = self.found;
        hops.sort_by(|a, b| start_ms(a).total_cmp(&start_ms(b)));
        let spans: Vec<String> = hops
            .iter()
            .flat_map(|h| h.attempts.iter().filter_map(|a| a.span_id.clone()))
            .collect();
        let (mut roots, mut children): (Vec<Hop>, Vec<Hop>) = hops
            .into_iter()
            .partition(|h| h.parent_span_id.as_ref().is_none_or(|p| !spans.contains(p)));
        // Attach children deepest first: a child may itself be the parent of others.
        let mut guard = 0;
        while !children.is_empty() && guard < MAX_HOPS {
            guard += 1;
            let before = children.len();
            let mut rest = Vec::new();
            for child in children {
                let child_spans: Vec<&String> = child.attempts.iter().filter_map(|a| a.span_id.as_ref()).collect();
                let waits_for_other = rest
                    .iter()
                    .any(|o: &Hop| o.parent_span_id.as_ref().is_some_and(|p| child_spans.contains(&p)));
                if !waits_for_other && attach(&mut roots, &child, 0) {
                    continue;
                }
                rest.push(child);
            }
            children = rest;
            if children.len() == before {
                // Unreachable parents (cycles in corrupt input): show them as roots.
                roots.append(&mut children);
            }
        }
        Journey {
            id: self.id,
            hops: roots,
            dropped: self.dropped,
        }
    }
}

fn start_ms(h: &Hop) -> f64 {
    h.end_ms as f64 - h.duration_ms
}

/// Hangs `child` under the attempt it came from; journeys deeper than this many proxies
/// (only corrupt input makes them) stay flat.
const MAX_DEPTH: usize = 32;

fn attach(hops: &mut [Hop], child: &Hop, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    for h in hops.iter_mut() {
        for a in &mut h.attempts {
            if a.span_id.is_some() && a.span_id == child.parent_span_id {
                a.hops.push(child.clone());
                return true;
            }
            if attach(&mut a.hops, child, depth + 1) {
                return true;
            }
        }
    }
    false
}

/// One request's way through the proxies.
#[derive(Debug, Serialize)]
pub struct Journey {
    /// The id asked for.
    pub id: String,
    /// Hops with no caller in the logs (usually one: the first proxy), in time order.
    pub hops: Vec<Hop>,
    /// Lines beyond the kept maximum.
    pub dropped: u64,
}

impl Journey {
    /// An indented timeline, then where the first hop's time went.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if self.hops.is_empty() {
            let _ = writeln!(out, "No access line has trace id or request id {}.", self.id);
            return out;
        }
        let count = count(&self.hops);
        let logs = {
            let mut l = Vec::new();
            collect_logs(&self.hops, &mut l);
            l.len()
        };
        let total = self.hops.iter().map(|h| h.duration_ms).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "Journey of {}: {count} hop{} in {logs} log{}, {} end to end.\n",
            self.id,
            if count == 1 { "" } else { "s" },
            if logs == 1 { "" } else { "s" },
            ms_text(total)
        );
        for h in &self.hops {
            hop_text(&mut out, h, 0);
        }
        if let Some(first) = self.hops.first() {
            out.push('\n');
            out.push_str(&where_time_went(first));
        }
        out
    }
}

fn count(hops: &[Hop]) -> usize {
    hops.iter()
        .map(|h| 1 + h.attempts.iter().map(|a| count(&a.hops)).sum::<usize>())
        .sum()
}

fn collect_logs<'a>(hops: &'a [Hop], into: &mut Vec<&'a str>) {
    for h in hops {
        if !into.contains(&h.log.as_str()) {
            into.push(&h.log);
        }
        for a in &h.attempts {
            collect_logs(&a.hops, into);
        }
    }
}

fn hop_text(out: &mut String, h: &Hop, depth: usize) {
    let pad = "    ".repeat(depth);
    let outcome = match (&h.status, &h.code, &h.fallback) {
        (Some(s), _, Some(f)) => format!("{s} from the fallback (for {f})"),
        (Some(s), Some(c), None) => format!("{s} {c}"),
        (Some(s), None, None) => s.to_string(),
        (None, _, _) => "no answer: the client left".to_owned(),
    };
    let _ = writeln!(
        out,
        "{pad}{}  [{}]  {}  route {} -> {}  {outcome} in {}",
        h.ts.get(11..23).unwrap_or(&h.ts),
        h.log,
        h.request,
        h.route.as_deref().unwrap_or("-"),
        h.upstream.as_deref().unwrap_or("-"),
        ms_text(h.duration_ms)
    );
    for a in &h.attempts {
        let conn = match (a.connection.as_deref(), a.idle_ms) {
            (Some("reused"), Some(idle)) => format!("reused (idle {})", ms_text(idle)),
            (Some(c), _) => c.to_owned(),
            (None, _) => "no connection".to_owned(),
        };
        let result = match (&a.status, &a.code) {
            (_, Some(c)) => format!(
                "{c} after {}{}",
                ms_text(a.duration_ms),
                a.stage.as_deref().map(|s| format!(" (stage {s})")).unwrap_or_default()
            ),
            (Some(s), None) => format!("{s} after {}", ms_text(a.duration_ms)),
            (None, None) => format!("after {}", ms_text(a.duration_ms)),
        };
        let next = match a.next.as_deref() {
            Some("retry") => format!(
                "  -> retry{}{}",
                a.backoff_ms
                    .map(|b| format!(" after {}", ms_text(b)))
                    .unwrap_or_default(),
                a.retry_budget_left
                    .map(|b| format!(" (budget left {b})"))
                    .unwrap_or_default()
            ),
            Some("budget_exhausted") => "  -> no retry: the retry budget was spent".to_owned(),
            Some("stop") => "  -> no retry: attempts or time ran out".to_owned(),
            Some(other) => format!("  -> {other}"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{pad}  attempt {}  {}  {conn}  {result}{next}",
            a.n,
            a.endpoint.as_deref().unwrap_or("-")
        );
        for child in &a.hops {
            hop_text(out, child, depth + 1);
        }
    }
    if let Some(c) = &h.cause {
        let _ = writeln!(out, "{pad}  why: {c}");
    }
}

/// "Where the time went: attempt 1 1.0 s (49 %), backoff 25 ms (1 %), ..."
fn where_time_went(h: &Hop) -> String {
    let total = h.duration_ms.max(0.001);
    let mut parts = Vec::new();
    let mut used = 0.0;
    for a in &h.attempts {
        parts.push(format!(
            "attempt {} {} ({:.0} %)",
            a.n,
            ms_text(a.duration_ms),
            a.duration_ms * 100.0 / total
        ));
        used += a.duration_ms;
        if let Some(b) = a.backoff_ms {
            parts.push(format!("backoff {} ({:.0} %)", ms_text(b), b * 100.0 / total));
            used += b;
        }
    }
    let rest = (h.duration_ms - used).max(0.0);
    parts.push(format!(
        "the proxy and the client {} ({:.0} %)",
        ms_text(rest),
        rest * 100.0 / total
    ));
    format!("Where the time went at the first hop: {}.\n", parts.join(", "))
}
