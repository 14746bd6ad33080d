//! One log line, as far as explaining needs it: parsed straight from the bytes, borrowing
//! its strings, ignoring every member it does not know (newer proxies add some).

use std::borrow::Cow;

use serde::Deserialize;

/// The members of an outrigger log line that explanations use.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Line<'a> {
    #[serde(borrow)]
    pub ts: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub msg: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub trace_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub span_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub parent_span_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub route: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub upstream: Option<Cow<'a, str>>,
    pub critical: bool,
    #[serde(borrow)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub path: Option<Cow<'a, str>>,
    pub status: Option<u16>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub class: Option<Cow<'a, str>>,
    pub duration_ms: Option<f64>,
    pub upstream_ms: Option<f64>,
    #[serde(borrow)]
    pub attempts: Vec<AttemptLine<'a>>,
    #[serde(borrow)]
    pub cause: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub fallback: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub stage: Option<Cow<'a, str>>,
    // kind: breaker
    #[serde(borrow)]
    pub from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub why: Option<Cow<'a, str>>,
    // kind: latency
    pub ratio: Option<f64>,
    pub recent_ms: Option<f64>,
    pub baseline_ms: Option<f64>,
    // kind: suppressed
    pub suppressed: Option<u64>,
    #[serde(borrow)]
    pub of_kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub key: Option<Cow<'a, str>>,
    // kind: reload
    #[serde(borrow)]
    pub result: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub changes: Option<Cow<'a, str>>,
    // kind: traffic (the live process's per-second summary of successful requests)
    pub requests: Option<u64>,
}

/// One attempt of an access line.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AttemptLine<'a> {
    pub n: u32,
    #[serde(borrow)]
    pub span_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub endpoint: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub connection: Option<Cow<'a, str>>,
    pub idle_ms: Option<f64>,
    pub duration_ms: f64,
    pub status: Option<u16>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub stage: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub circuit_state: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub next: Option<Cow<'a, str>>,
    pub backoff_ms: Option<f64>,
    pub retry_budget_left: Option<f64>,
}

/// Why a line was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not a JSON object (another program's output, a stack trace, binary junk).
    NotJson,
    /// JSON, but not an outrigger line (no `ts`, `kind` and `msg`).
    NotOutrigger,
    /// An outrigger line whose `ts` is not an RFC 3339 time.
    BadTimestamp,
    /// The last line of a file that ended mid-line (or a gzip stream cut short).
    Truncated,
}

impl Skip {
    /// Every reason, in the order reports list them.
    pub const ALL: [Skip; 4] = [Skip::NotJson, Skip::NotOutrigger, Skip::BadTimestamp, Skip::Truncated];

    /// The snake_case name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotJson => "not_json",
            Skip::NotOutrigger => "not_outrigger",
            Skip::BadTimestamp => "bad_timestamp",
            Skip::Truncated => "truncated",
        }
    }
}

/// Parses one line; `Ok` only for an outrigger line with a usable time (milliseconds since
/// the Unix epoch).
pub fn parse(bytes: &[u8]) -> Result<(Line<'_>, i64), Skip> {
    let trimmed = trim(bytes);
    if trimmed.first() != Some(&b'{') {
        return Err(Skip::NotJson);
    }
    let line: Line<'_> =
        serde_json::from_slice(trimmed).map_err(|e| if e.is_data() { Skip::NotOutrigger } else { Skip::NotJson })?;
    let (Some(ts), Some(_), Some(_)) = (&line.ts, &line.kind, &line.msg) else {
        return Err(Skip::NotOutrigger);
    };
    let ms = parse_ts(ts).ok_or(Skip::BadTimestamp)?;
    Ok((line, ms))
}

/// RFC 3339 to milliseconds since the epoch.
pub fn parse_ts(ts: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(ts).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds.
pub fn format_ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The time of day (`14:02:07`), for sentences; the date is in the report's window.
pub fn clock(ms: i64) -> String {
    let full = format_ts(ms);
    full.get(11..19).unwrap_or(&full).to_owned()
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_line_is_read_and_other_lines_are_told_apart() {
        let ok = br#"{"ts":"2026-11-29T00:12:03.705Z","level":"warn","kind":"access","msg":"m","route":"default","upstream":"app","status":503,"code":"upstream_connect_failed","class":"upstream","duration_ms":0.264,"attempts":[{"n":1,"endpoint":"127.0.0.1:8080","duration_ms":0.176,"code":"upstream_connect_failed","stage":"connect"}],"new_member":{"x":[1]}}"#;
        let (line, ms) = parse(ok).unwrap();
        assert_eq!(ms, 1_795_911_123_705);
        assert_eq!(line.status, Some(503));
        assert_eq!(line.attempts[0].stage.as_deref(), Some("connect"));
        assert_eq!(format_ts(ms), "2026-11-29T00:12:03.705Z");
        assert_eq!(clock(ms), "00:12:03");

        assert_eq!(parse(b"panic: at the disco").unwrap_err(), Skip::NotJson);
        assert_eq!(parse(b"{\"ts\":\"2026-11-29T00:12").unwrap_err(), Skip::NotJson);
        assert_eq!(
            parse(br#"{"level":"info","message":"another program"}"#).unwrap_err(),
            Skip::NotOutrigger
        );
        assert_eq!(
            parse(br#"{"ts":"yesterday","kind":"access","msg":"m"}"#).unwrap_err(),
            Skip::BadTimestamp
        );
        assert_eq!(
            parse(br#"{"ts":"2026-11-29T00:12:03.705Z","kind":"access","msg":"m","status":"x"}"#).unwrap_err(),
            Skip::NotOutrigger
        );
        // A client that left first has "status": null.
        assert_eq!(
            parse(br#"{"ts":"2026-11-29T00:12:03.705Z","kind":"access","msg":"m","status":null}"#)
                .unwrap()
                .0
                .status,
            None
        );
    }
}
