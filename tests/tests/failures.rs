//! Upstream failures provoked for real, and what the caller, the metrics and the logs see.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;

#[tokio::test]
async fn refused_upstream_is_503_upstream_connect_failed() {
    let nowhere = refused_addr();
    let proxy = Outrigger::start(&config(&[nowhere], DEFAULT_ROUTE));
    let reply = get(&proxy.url("/checkout?card=4242")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.header("outrigger-error"), "upstream_connect_failed");
    let p = reply.json();
    assert_eq!(p["code"], "upstream_connect_failed");
    assert_eq!(p["class"], "upstream");
    assert_eq!(p["retryable"], true);
    assert_eq!(p["route"], "default");
    assert_eq!(p["upstream"], "app");
    assert_eq!(p["instance"], "/checkout");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("'app' at {nowhere}")) && detail.contains("refused"),
        "{detail}"
    );

    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["level"], "warn");
    assert_eq!(line["code"], "upstream_connect_failed");
    assert_eq!(line["class"], "upstream");
    assert_eq!(line["status"], 503);
    assert_eq!(line["endpoint"], serde_json::Value::Null, "no endpoint answered");
    assert_eq!(line["attempts"][0]["endpoint"], nowhere.to_string());
    assert!(
        line["attempts"][0].get("connection").is_none(),
        "no connection was made: {line}"
    );
    assert_eq!(line["attempts"][0]["stage"], "connect");
    let cause = line["cause"].as_str().unwrap();
    let expected = format!("attempt 1 to {nowhere} (no connection) failed after ");
    assert!(cause.starts_with(&expected), "{cause}");
    assert!(
        cause.contains(": upstream_connect_failed (the connection was refused"),
        "{cause}"
    );
    let labels = [
        "error_type=\"upstream_connect_failed\"",
        "error_class=\"upstream\"",
        "http_response_status_code=\"503\"",
    ];
    assert_eq!(
        proxy
            .metric("http_server_request_duration_seconds_count", &labels)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(
                "http_client_request_duration_seconds_count",
                &["error_type=\"upstream_connect_failed\""]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn hanging_upstream_is_504_upstream_timeout_at_the_route_timeout() {
    let up = Upstream::start(Mode::Hang).await;
    let routes = "  - {name: slow, match: {path_prefix: /}, upstream: app, timeout: 300ms}\n";
    let proxy = Outrigger::start(&config(&[up.addr()], routes));
    let started = Instant::now();
    let reply = get(&proxy.url("/report")).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("outrigger-error"), "upstream_timeout");
    let p = reply.json();
    assert_eq!(p["detail"], "The service 'app' did not answer within 300ms.");
    assert_eq!(p["route"], "slow");
    assert!(
        took >= Duration::from_millis(300),
        "answered before the timeout: {took:?}"
    );
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["code"], "upstream_timeout");
    assert!(line["duration_ms"].as_f64().unwrap() >= 300.0, "{line}");
    let cause = line["cause"].as_str().unwrap();
    assert!(
        cause.starts_with(&format!("attempt 1 to {} had no response head after 3", up.addr())),
        "{cause}"
    );
    assert!(cause.ends_with("(route timeout)"), "{cause}");
    // The connection was made: the attempt says so (and claims no stage it cannot know).
    assert_eq!(line["attempts"][0]["connection"], "fresh", "{line}");
    assert!(line["attempts"][0].get("stage").is_none(), "{line}");
    assert_eq!(
        proxy
            .metric(
                "http_server_request_duration_seconds_count",
                &["error_type=\"upstream_timeout\"", "http_route=\"slow\""]
            )
            .await,
        1.0
    );
}

/// Attempts cut off by their per-try timeout still record the connection they had: fresh
/// for the first, and the cause says so instead of "no connection".
#[tokio::test]
async fn timed_out_attempts_keep_their_connection_in_the_record() {
    let up = Upstream::start(Mode::Hang).await;
    let routes = "  - {name: slow, match: {path_prefix: /}, upstream: app, timeout: 2s,\n     retry: {attempts: 2, per_try_timeout: 200ms, on: [timeout]}}\n";
    let proxy = Outrigger::start(&config(&[up.addr()], routes));
    let reply = get(&proxy.url("/report")).await;
    assert_eq!(reply.status, 504);
    let line = proxy.access_log(reply.header("x-request-id")).await;
    let attempts = line["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{line}");
    for a in attempts {
        assert_eq!(a["code"], "upstream_timeout", "{line}");
        assert_eq!(
            a["connection"], "fresh",
            "a hanging upstream's connections are never reused: {line}"
        );
        assert!(a.get("stage").is_none(), "{line}");
    }
    let cause = line["cause"].as_str().unwrap();
    assert!(cause.contains("(fresh connection) failed after 2"), "{cause}");
    assert!(!cause.contains("no connection"), "{cause}");
}

/// One request on an open client connection; the status and how long the answer took.
async fn timed_exchange(s: &mut tokio::net::TcpStream) -> (u16, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the head and the body it announces are in.
    loop {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the proxy closed the connection");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if got.len() >= end + 4 + length {
                return (text[9..12].parse().unwrap(), started.elapsed());
            }
        }
    }
}

#[tokio::test]
async fn attempt_timeouts_hold_for_every_request_of_a_kept_alive_connection() {
    // A connection's attempts share one timer, reset per attempt: after it fired, after it
    // was moved later and after a success, each request still gets its whole timeout.
    let up = Upstream::start(Mode::Hang).await;
    let routes = "  - {name: slow, match: {path_prefix: /}, upstream: app, timeout: 300ms}\n";
    let proxy = Outrigger::start(&config(&[up.addr()], routes));
    let mut s = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    let (status, took) = timed_exchange(&mut s).await;
    assert!(
        status == 504 && took >= Duration::from_millis(300),
        "{status} after {took:?}"
    );
    up.set_mode(Mode::Delay(Duration::from_millis(150)));
    let (status, took) = timed_exchange(&mut s).await;
    assert!(
        status == 200 && took >= Duration::from_millis(150),
        "{status} after {took:?}"
    );
    up.set_mode(Mode::Ok);
    assert_eq!(timed_exchange(&mut s).await.0, 200);
    // The pooled upstream connection now answers too late (a raw hang would only apply to
    // a new one).
    up.set_mode(Mode::Delay(Duration::from_secs(5)));
    for _ in 0..2 {
        let (status, took) = timed_exchange(&mut s).await;
        assert!(
            status == 504 && took >= Duration::from_millis(300),
            "{status} after {took:?}"
        );
    }
}

#[tokio::test]
async fn slow_upstream_within_the_timeout_succeeds() {
    let up = Upstream::start(Mode::Delay(Duration::from_millis(100))).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 200);
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert!(line["upstream_ms"].as_f64().unwrap() >= 100.0, "{line}");
}

#[tokio::test]
async fn upstream_reset_before_a_response_is_502_upstream_reset() {
    let up = Upstream::start(Mode::ResetBeforeResponse).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("outrigger-error"), "upstream_reset");
    assert_eq!(reply.json()["class"], "upstream");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["code"], "upstream_reset");
    assert_eq!(line["attempts"][0]["code"], "upstream_reset");
    assert_eq!(line["attempts"][0]["connection"], "fresh");
    assert_eq!(line["attempts"][0]["stage"], "await_headers");
    assert!(
        line["cause"]
            .as_str()
            .unwrap()
            .contains("(fresh connection) failed after"),
        "{line}"
    );
}

#[tokio::test]
async fn garbage_from_upstream_is_502_upstream_protocol_error() {
    let up = Upstream::start(Mode::Garbage).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("outrigger-error"), "upstream_protocol_error");
    let p = reply.json();
    assert_eq!(p["retryable"], false);
    assert!(p["detail"].as_str().unwrap().contains("not valid HTTP"), "{p}");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["code"], "upstream_protocol_error");
}

#[tokio::test]
async fn reset_mid_body_cuts_the_client_off_and_is_logged() {
    let up = Upstream::start(Mode::ResetMidBody).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let resp = http1_client()
        .request(http::Request::get(proxy.url("/big")).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the head was already forwarded: never a 502 after a 200"
    );
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = resp.into_body().collect().await;
    assert!(
        body.is_err(),
        "the client must see the body break off, not a short success"
    );
    let line = proxy.access_log(&id).await;
    assert_eq!(line["level"], "warn");
    assert_eq!(line["status"], 200);
    assert!(
        line["cause"].as_str().unwrap().contains("broke off mid-stream"),
        "{line}"
    );
    assert_eq!(line["attempts"][0]["stage"], "body_stream");
}

#[tokio::test]
async fn upstream_500_passes_through_with_its_status() {
    let up = Upstream::start(Mode::Html500).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 500);
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["status"], 500);
}
