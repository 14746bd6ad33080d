//! Property tests of the request-head path: whatever a client sends, the functions that
//! read and rewrite the head never panic, never let hop-by-hop headers through, and only
//! keep request ids that are safe to log. Bounded (256 cases each) so CI stays fast.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use outrigger_proxy::http::added::add_forwarding;
use outrigger_proxy::http::headers::{
    Carried, Forwarding, carried, is_upgrade, request_id, strip_hop_by_hop, valid_percent_encoding,
};
use outrigger_proxy::router::split_authority;
use outrigger_resilience::deadline::parse_grpc_timeout;
use proptest::prelude::*;

const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "x-named-hop",
];

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(HOP.to_vec()).prop_map(str::to_owned),
        "[a-z][a-z0-9-]{0,20}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"trailers".to_vec()),
        Just(b"keep-alive, x-named-hop".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_bytes(v)) {
            h.append(n, v);
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_hop_by_hop_header_survives_the_rewrite(pairs in proptest::collection::vec((header_name(), header_value()), 0..12)) {
        let mut h = header_map(&pairs);
        let named_in_connection: Vec<String> = h.get_all("connection").iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
            .collect();
        let upgrading = is_upgrade(&h);
        strip_hop_by_hop(&mut h, upgrading);
        for name in ["keep-alive", "proxy-connection", "transfer-encoding"] {
            prop_assert!(!h.contains_key(name), "{name} survived");
        }
        if !upgrading {
            prop_assert!(!h.contains_key("upgrade") && !h.contains_key("connection"));
            for n in named_in_connection.iter().filter(|n| *n != "te") {
                prop_assert!(!h.contains_key(n.as_str()), "{n} was named in Connection but survived");
            }
        }
        for te in h.get_all("te") {
            prop_assert_eq!(te.as_bytes(), b"trailers");
        }
        add_forwarding(&mut h, &Forwarding::new("10.1.2.3".parse().unwrap(), "http"));
        prop_assert!(h.get("x-forwarded-for").unwrap().to_str().unwrap().ends_with("10.1.2.3"));
    }

    #[test]
    fn request_ids_are_always_safe_to_log(value in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            h.insert("x-request-id", v);
        }
        let id = request_id(&h);
        let b = id.as_bytes();
        prop_assert!((1..=128).contains(&b.len()));
        prop_assert!(b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')));
    }

    #[test]
    fn the_one_pass_scan_agrees_with_lookups_by_name(
        names in proptest::collection::vec(prop_oneof![
            proptest::sample::select(vec![
                "x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-flags",
                "x-outrigger-fault", "host", "x-b3", "b3x", "tracestatex", "x-forwarded-for",
                "x-forwarded-proto", "forwarded", "x-forwarded-host", "accept", "accept-encoding",
                "content-type", "content-typex", "upgrade", "upgrade-insecure-requests", "hostx",
                "x-forwarded-client-cert", "x-forwarded-client-certx",
            ]).prop_map(str::to_owned),
            "[a-z][a-z0-9-]{0,20}",
        ], 0..10)
    ) {
        let mut h = HeaderMap::new();
        for n in &names {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("1"));
        }
        let b3 = ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"]
            .iter()
            .any(|n| h.contains_key(*n))
            || h.keys().any(|k| k.as_str().starts_with("x-b3-"));
        prop_assert_eq!(carried(&h), Carried {
            request_id: h.contains_key("x-request-id"),
            traceparent: h.contains_key("traceparent"),
            tracestate: h.contains_key("tracestate"),
            b3,
            fault: h.contains_key("x-outrigger-fault"),
            forwarding: ["x-forwarded-for", "x-forwarded-proto", "forwarded"].iter().any(|n| h.contains_key(*n)),
            host: h.contains_key("host"),
            accept: h.contains_key("accept"),
            content_type: h.contains_key("content-type"),
            upgrade: h.contains_key("upgrade"),
            client_cert: h.contains_key("x-forwarded-client-cert"),
        });
    }

    #[test]
    fn head_parsers_never_panic(s in "\\PC{0,64}", bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        let _ = split_authority(&s);
        let _ = parse_grpc_timeout(&bytes);
        let valid = valid_percent_encoding(&s);
        // Reference: every '%' is followed by two hex digits.
        let b = s.as_bytes();
        let reference = b.iter().enumerate().filter(|(_, c)| **c == b'%').all(|(i, _)| {
            b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        });
        // "%%41" differs: the reference checks every '%', the scanner skips escapes; both refuse "%%".
        if !s.contains("%%") {
            prop_assert_eq!(valid, reference, "{:?}", s);
        }
    }
}
