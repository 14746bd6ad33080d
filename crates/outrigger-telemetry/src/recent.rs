//! A bounded ring of the process's recent failures and state changes, as the JSON lines
//! the log has: `/debug/explain` explains them with the same code as `outrigger explain`.
//!
//! Fed with failed requests' access lines (rate-limited like the log), the state changes
//! explanations use (breaker, latency, outlier, DNS, reload, suppressed lines), and once a
//! second a `traffic` line per route with its successful requests, so that shares and
//! recoveries can be told. Never every success: the ring costs nothing on a healthy path.

use std::collections::VecDeque;
use std::sync::Mutex;

/// At most this many lines...
const MAX_LINES: usize = 20_000;
/// ...and this many bytes.
const MAX_BYTES: usize = 8 << 20;

struct Ring {
    lines: VecDeque<Box<str>>,
    bytes: usize,
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    lines: VecDeque::new(),
    bytes: 0,
});

/// The kinds of event line explanations use.
const KINDS: [&str; 7] = [
    "\"kind\":\"breaker\"",
    "\"kind\":\"latency\"",
    "\"kind\":\"outlier\"",
    "\"kind\":\"dns\"",
    "\"kind\":\"reload\"",
    "\"kind\":\"suppressed\"",
    "\"kind\":\"keepalive_race\"",
];

/// Keeps one JSON line (without its newline).
pub fn remember(line: &str) {
    let line = line.trim_end();
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    ring.bytes += line.len();
    ring.lines.push_back(line.into());
    while ring.lines.len() > MAX_LINES || ring.bytes > MAX_BYTES {
        match ring.lines.pop_front() {
            Some(old) => ring.bytes -= old.len(),
            None => break,
        }
    }
}

/// Keeps an event line if it is of a kind explanations use.
pub(crate) fn offer_event(line: &str) {
    // Event lines are few; the kind is near the start of the line.
    let head = line.get(..line.len().min(120)).unwrap_or(line);
    if KINDS.iter().any(|k| head.contains(k)) {
        remember(line);
    }
}

/// A copy of the lines, oldest first.
pub fn snapshot() -> Vec<Box<str>> {
    RING.lock()
        .unwrap_or_else(|p| p.into_inner())
        .lines
        .iter()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_and_only_the_kinds_explained() {
        offer_event(r#"{"ts":"2026-12-06T10:00:00.000Z","level":"info","kind":"lifecycle","msg":"ready"}"#);
        offer_event(r#"{"ts":"2026-12-06T10:00:00.000Z","level":"warn","kind":"breaker","msg":"opened"}"#);
        for i in 0..MAX_LINES + 5 {
            remember(&format!("{{\"n\":{i}}}"));
        }
        let lines = snapshot();
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(&*lines[lines.len() - 1], format!("{{\"n\":{}}}", MAX_LINES + 4));
        assert!(!lines.iter().any(|l| l.contains("lifecycle")));
    }
}
