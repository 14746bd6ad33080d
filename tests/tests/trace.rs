//! W3C trace context across the proxy: continued, replaced when invalid, and in errors and logs.

use http_body_util::Full;
use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;

const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn echo_with(proxy: &Outrigger, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(proxy.url("/echo"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&http1_client(), req.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_a_child_span() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let reply = echo_with(&proxy, &[("traceparent", GOOD), ("tracestate", "congo=t61rcWkgMzE")]).await;
    let h = &reply.json()["headers"];
    let tp = h["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
        "{tp}"
    );
    assert_ne!(
        &tp[36..52],
        "00f067aa0ba902b7",
        "the upstream sees our span as its parent"
    );
    assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["span_id"].as_str().unwrap().len(), 16);
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_and_is_not_forwarded() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "nonsense",
    ] {
        let reply = echo_with(&proxy, &[("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")]).await;
        let h = &reply.json()["headers"];
        let tp = h["traceparent"].as_str().unwrap();
        assert_ne!(tp, bad);
        assert!(
            !tp.contains("4bf92f3577b34da6a3ce929d0e0e4736") && !tp.contains("00000000000000000000000000000000"),
            "{tp}"
        );
        assert_eq!(tp.len(), 55);
        assert!(
            h.get("tracestate").is_none(),
            "tracestate is dropped with an invalid traceparent"
        );
    }
}

#[tokio::test]
async fn errors_carry_the_trace_id() {
    let proxy = Outrigger::start(&config(&[refused_addr()], DEFAULT_ROUTE));
    let reply = echo_with(&proxy, &[("traceparent", GOOD)]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let reply = echo_with(&proxy, &[]).await;
    let t = reply.json()["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(t.len(), 32);
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["trace_id"], t.as_str(), "the same id in the error and the log");
}
