//! W3C Trace Context (and, when configured, B3 on input): continue a valid inbound trace,
//! otherwise start one; give the upstream a child `traceparent`.
//!
//! A `traceparent` is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase.
//! All-zero ids, version `ff`, upper-case or bad hex, and wrong lengths make it invalid: a new
//! trace starts and neither it nor `tracestate` is forwarded.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use outrigger_telemetry::logging::lower_hex_into;

use super::headers::Carried;

/// `traceparent`.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace a request belongs to, and this proxy's span in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: u128,
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<u64>,
    /// This proxy's server span.
    pub span_id: u64,
    /// Whether the trace is sampled (recorded).
    pub sampled: bool,
    /// The inbound `tracestate`, forwarded unchanged (only with a valid `traceparent`).
    pub tracestate: Option<HeaderValue>,
    /// The inbound header was present but invalid (a new trace was started instead).
    pub rejected: bool,
}

/// A version-00 `traceparent` value (55 ASCII characters), kept as bytes: HTTP/1.1 writes
/// it as it is, with no header value to allocate and check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent([u8; 55]);

impl TraceParent {
    /// The value as written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value as a header value (for HTTP/2).
    pub fn to_header_value(self) -> HeaderValue {
        // Hex digits, dashes and zeros only: always a valid value.
        HeaderValue::from_bytes(&self.0).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a `traceparent` value: (trace id, parent id, sampled).
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, bool)> {
    let s = std::str::from_utf8(v).ok()?;
    // Version 00 is exactly 55 characters; later versions may append fields after a '-'.
    let head = s.get(..55)?;
    let rest = &s[55..];
    let mut parts = head.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !lower_hex(version) || !lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) || version == "ff" {
        return None;
    }
    if (version == "00" && !rest.is_empty()) || (version != "00" && !rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let parent_id = u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, parent_id, flags & 1 == 1))
}

/// Parses B3: the single `b3` header (`traceid-spanid[-sampled[-parent]]`) or the
/// `X-B3-TraceId`/`X-B3-SpanId`/`X-B3-Sampled` headers. 64-bit trace ids are widened.
pub(crate) fn parse_b3(h: &HeaderMap) -> Option<(u128, u64, bool)> {
    let hex128 = |s: &str| {
        (matches!(s.len(), 16 | 32) && lower_hex(s))
            .then(|| u128::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v != 0)
    };
    let hex64 = |s: &str| {
        (s.len() == 16 && lower_hex(s))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v != 0)
    };
    if let Some(single) = h.get("b3").and_then(|v| v.to_str().ok()) {
        let mut p = single.split('-');
        let trace = hex128(p.next()?)?;
        let span = hex64(p.next()?)?;
        let sampled = p.next().is_none_or(|s| s == "1" || s == "d");
        return Some((trace, span, sampled));
    }
    let trace = hex128(h.get("x-b3-traceid")?.to_str().ok()?)?;
    let span = hex64(h.get("x-b3-spanid")?.to_str().ok()?)?;
    let sampled =
        h.get("x-b3-sampled").is_none_or(|v| v == "1" || v == "true") || h.get("x-b3-flags").is_some_and(|v| v == "1");
    Some((trace, span, sampled))
}

impl TraceContext {
    /// The context of an inbound request: continued from a valid `traceparent` (or B3 when
    /// `accept_b3`), else a new trace sampled with probability `sample_ratio`.
    /// `carried` says which of the trace fields are there ([`crate::http::headers::carried`]).
    pub fn from_request(h: &HeaderMap, carried: Carried, accept_b3: bool, sample_ratio: f64) -> Self {
        let span_id = nonzero_u64();
        let w3c = if carried.traceparent { h.get(TRACEPARENT) } else { None };
        if let Some((trace_id, parent, sampled)) = w3c.and_then(|v| parse_traceparent(v.as_bytes())) {
            return TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                sampled,
                tracestate: if carried.tracestate {
                    h.get(TRACESTATE).cloned()
                } else {
                    None
                },
                rejected: false,
            };
        }
        if accept_b3
            && carried.b3
            && let Some((trace_id, parent, sampled)) = parse_b3(h)
        {
            return TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                sampled,
                tracestate: None,
                rejected: w3c.is_some(),
            };
        }
        let sampled = sample_ratio >= 1.0 || (sample_ratio > 0.0 && fastrand::f64() < sample_ratio);
        TraceContext {
            trace_id: nonzero_u128(),
            parent_id: None,
            span_id,
            sampled,
            tracestate: None,
            rejected: w3c.is_some(),
        }
    }

    /// The trace id as 32 lowercase hex characters.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This proxy's span id as 16 lowercase hex characters.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// A `traceparent` for one upstream attempt: same trace, a new span id (the attempt's
    /// client span), the sampled flag kept. Returns the value and the new span id.
    pub fn child(&self) -> (TraceParent, u64) {
        let span = nonzero_u64();
        // `00-<trace>-<span>-<flags>`, written in place: no allocation.
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        lower_hex_into(&mut buf[3..35], self.trace_id);
        lower_hex_into(&mut buf[36..52], u128::from(span));
        if self.sampled {
            buf[54] = b'1';
        }
        (TraceParent(buf), span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::carried;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_parse() {
        let (t, p, s) = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert_eq!(format!("{t:032x}"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{p:016x}"), "00f067aa0ba902b7");
        assert!(s);
        assert!(
            !parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .2
        );
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future").is_some(),
            "later versions may add fields"
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn b3_is_accepted_only_when_configured() {
        let mut h = HeaderMap::new();
        h.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        assert_eq!(
            TraceContext::from_request(&h, carried(&h), true, 0.0).trace_id_hex(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_ne!(
            TraceContext::from_request(&h, carried(&h), false, 0.0).trace_id_hex(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        let mut m = HeaderMap::new();
        m.insert("x-b3-traceid", HeaderValue::from_static("64fe8b2a57d3eff7"));
        m.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        m.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let cx = TraceContext::from_request(&m, carried(&m), true, 1.0);
        assert_eq!(cx.trace_id_hex(), "000000000000000064fe8b2a57d3eff7");
        assert!(!cx.sampled);
    }
}
