//! The error contract from outside: every code's status, problem+json members, headers and
//! gRPC status; upstream 5xx bodies withheld; secrets never leaked; hostile input refused
//! before it reaches the upstream; a bug in one request answered 500 without harm.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn routes(extra: &str) -> String {
    format!("  - {{name: api, match: {{path_prefix: /}}, upstream: app, timeout: 2s{extra}}}\n")
}

async fn grpc_check(proxy: &Outrigger) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(proxy.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: "x".into() })
        .await
        .expect_err("an error status")
}

fn assert_problem(reply: &Reply, status: u16, code: &str, class: &str) -> serde_json::Value {
    assert_eq!(reply.status, status, "{:?}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.header("outrigger-error"), code);
    let p = reply.json();
    assert_eq!(p["code"], code);
    assert_eq!(p["class"], class);
    assert_eq!(p["status"], status);
    assert_eq!(p["type"], format!("urn:outrigger:error:{code}"));
    assert_eq!(p["request_id"], reply.header("x-request-id"));
    assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(p["detail"].as_str().is_some_and(|d| d.ends_with('.')));
    p
}

#[tokio::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(
        &[up.addr()],
        "  - {name: orders, match: {path_prefix: /orders, methods: [GET, POST]}, upstream: app}\n",
    ));
    let req = http::Request::delete(proxy.url("/orders/1"))
        .body(Full::default())
        .unwrap();
    let reply = send(&http1_client(), req).await;
    let p = assert_problem(&reply, 405, "method_not_allowed", "client");
    assert_eq!(reply.header("allow"), "GET, POST");
    assert_eq!(p["detail"], "This path only takes GET, POST; nothing was forwarded.");
    assert_eq!(up.requests(), 0);
    assert_eq!(
        get(&proxy.url("/elsewhere")).await.status,
        404,
        "no route at all is still 404"
    );
}

#[tokio::test]
async fn bodies_over_max_body_bytes_get_413_up_front_and_while_streaming() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], &routes(", max_body_bytes: 1000")));
    let req = http::Request::post(proxy.url("/count"))
        .body(Full::new(Bytes::from(vec![b'x'; 1001])))
        .unwrap();
    let reply = send(&http1_client(), req).await;
    let p = assert_problem(&reply, 413, "payload_too_large", "client");
    assert!(p["detail"].as_str().unwrap().contains("limit of 1000 bytes"), "{p}");
    assert_eq!(up.requests(), 0, "refused on Content-Length before anything was sent");

    // Chunked: the size is only known while streaming.
    let chunked = format!(
        "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3e8\r\n{}\r\n3e8\r\n{}\r\n0\r\n\r\n",
        "a".repeat(1000),
        "b".repeat(1000)
    );
    let resp = raw_request(proxy.inbound(), chunked.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"code\":\"payload_too_large\""), "{resp}");
    assert_eq!(get(&proxy.url("/")).await.status, 200, "small requests still pass");
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_inbound_limits(&config(&[up.addr()], &routes("")), "idle_timeout: 300ms");
    let proxy = Outrigger::start(&yaml);
    let mut s = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-some")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
    let resp = String::from_utf8_lossy(&buf);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("\"code\":\"request_timeout\""), "{resp}");
    let line = proxy.wait_for_log(|l| l["code"] == "request_timeout").await;
    assert_eq!(line["class"], "client");
}

#[tokio::test]
async fn upstream_5xx_bodies_are_withheld_and_problem_json_from_upstreams_passes() {
    let up = Upstream::start(Mode::Html500).await;
    let proxy = Outrigger::start(&config(&[up.addr()], &routes("")));
    let reply = get(&proxy.url("/pay")).await;
    let p = assert_problem(&reply, 500, "upstream_error", "upstream");
    assert_eq!(p["upstream"], "app");
    assert_eq!(p["retryable"], true);
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains("hunter2") && !text.contains("Traceback"), "{text}");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["code"], "upstream_error");
    assert_eq!(line["upstream_content_type"], "text/html");
    assert!(line["upstream_body_bytes"].as_u64().unwrap() > 100, "{line}");

    up.set_mode(Mode::Ok);
    let reply = get(&proxy.url("/problem/502")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.json()["title"],
        "Card declined",
        "an upstream's own problem+json is untouched"
    );
    assert!(!reply.headers.contains_key("outrigger-error"));
    assert_eq!(get(&proxy.url("/status/404")).await.status, 404);
}

#[tokio::test]
async fn head_requests_get_headers_only_and_browsers_get_html() {
    let proxy = Outrigger::start(&config(&[refused_addr()], &routes("")));
    let req = http::Request::head(proxy.url("/")).body(Full::default()).unwrap();
    let reply = send(&http1_client(), req).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("outrigger-error"), "upstream_connect_failed");
    assert!(reply.body.is_empty());
    let req = http::Request::get(proxy.url("/"))
        .header("accept", "text/html,application/xhtml+xml")
        .body(Full::default())
        .unwrap();
    let reply = send(&http1_client(), req).await;
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    let page = String::from_utf8_lossy(&reply.body);
    assert!(
        page.contains("upstream_connect_failed") && page.contains("<h1>503"),
        "{page}"
    );
}

#[tokio::test]
async fn grpc_callers_see_the_right_codes() {
    let slow = Upstream::start(Mode::Delay(Duration::from_secs(5))).await;
    let proxy = Outrigger::start(&config(
        &[slow.addr()],
        "  - {name: api, match: {path_prefix: /}, upstream: app, timeout: 200ms}\n",
    ));
    let s = grpc_check(&proxy).await;
    assert_eq!(s.code(), Code::DeadlineExceeded, "upstream_timeout: {s:?}");
    assert_eq!(s.metadata().get("outrigger-error").unwrap(), "upstream_timeout");

    let breaker = with_upstream_setting(
        &config(&[refused_addr()], &routes("")),
        "circuit_breaker: {consecutive_failures: 1, open_for: 60s}",
    );
    let proxy = Outrigger::start(&breaker);
    assert_eq!(grpc_check(&proxy).await.code(), Code::Unavailable);
    let s = grpc_check(&proxy).await;
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(s.metadata().get("outrigger-error").unwrap(), "circuit_open");
    assert!(s.message().contains("circuit breaker for 'app' is open"), "{s:?}");

    let busy = with_inbound_limits(&config(&[slow.addr()], &routes("")), "max_in_flight: 1");
    let proxy = Outrigger::start(&busy);
    let url = proxy.url("/hold");
    let before = slow.requests();
    let holder = tokio::spawn(async move { get(&url).await });
    let deadline = std::time::Instant::now() + PATIENCE;
    while slow.requests() == before {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = grpc_check(&proxy).await;
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(s.metadata().get("outrigger-error").unwrap(), "overloaded");
    holder.abort();
}

#[tokio::test]
async fn a_panic_in_one_request_is_a_500_and_the_proxy_keeps_serving() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start_with(
        &config(&[up.addr()], &routes("")),
        &[("OUTRIGGER_TEST_PANIC_PATH", "/boom")],
    );
    let reply = get(&proxy.url("/boom")).await;
    assert_problem(&reply, 500, "internal", "proxy");
    let line = proxy.wait_for_log(|l| l["kind"] == "internal").await;
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("panicked"), "{line}");
    assert_eq!(proxy.metric("outrigger_internal_errors_total", &[]).await, 1.0);
    assert_eq!(
        get(&proxy.url("/fine")).await.status,
        200,
        "the process and other requests are unaffected"
    );
}

#[tokio::test]
async fn hostile_heads_are_refused_and_the_upstream_sees_nothing() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], &routes("")));
    let cases: [&[u8]; 5] = [
        b"GET /a%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    ];
    for case in cases {
        let resp = raw_request(proxy.inbound(), case).await;
        let shown = String::from_utf8_lossy(case);
        assert!(
            resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 505") || resp.is_empty(),
            "{shown:?} -> {resp:?}"
        );
    }
    assert_eq!(up.requests(), 0);
    let resp = raw_request(
        proxy.inbound(),
        b"GET /a%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.contains("\"code\":\"bad_request\"") && resp.contains("not followed by two hex digits"),
        "{resp}"
    );
}

#[tokio::test]
async fn secrets_never_appear_in_any_output() {
    let up = Upstream::start(Mode::Html500).await;
    let proxy = Outrigger::start(&config(&[up.addr()], &routes("")));
    let secrets = [
        "Bearer sk_live_AUTHZ",
        "session=COOKIE_SECRET",
        "APIKEY_SECRET",
        "QUERY_TOKEN_SECRET",
        "hunter2",
        "tok_live_SECRET",
    ];
    let req = http::Request::post(proxy.url("/pay?token=QUERY_TOKEN_SECRET&card=1"))
        .header("authorization", secrets[0])
        .header("cookie", secrets[1])
        .header("x-api-key", secrets[2])
        .body(Full::new(Bytes::from_static(b"{\"card\":\"4242\"}")))
        .unwrap();
    let reply = send(&http1_client(), req).await;
    assert_eq!(reply.status, 500);
    let mut outputs = vec![String::from_utf8_lossy(&reply.body).into_owned()];
    outputs.extend(
        reply
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes()))),
    );
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(
        line["query"], "token=[redacted]&card=1",
        "redacted, but the shape of the query stays visible"
    );
    outputs.extend(proxy.raw_lines());
    outputs.push(proxy.admin_get("/metrics").await.1);
    for secret in secrets {
        for out in &outputs {
            assert!(!out.contains(secret), "{secret} leaked into: {out}");
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed & 0xff) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangled_request_heads_never_crash_the_proxy_or_reach_the_upstream_broken() {
    let up = Upstream::start(Mode::Ok).await;
    // Short limits so that heads cut short or left open are closed quickly.
    let proxy = Outrigger::start(&with_inbound_limits(
        &config(&[up.addr()], &routes("")),
        "header_read_timeout: 200ms, idle_timeout: 200ms",
    ));
    let valid = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: b\r\nConnection: close\r\n\r\n";
    let mut seed = 0x5eed_u64;
    let mut answered_200 = 0;
    for round in 0..80 {
        // Flip, insert or truncate bytes of a valid head; every tenth round pure noise.
        let mut head = if round % 10 == 0 {
            noise(&mut seed, 64)
        } else {
            valid.to_vec()
        };
        let edits = noise(&mut seed, 6);
        let at = usize::from(edits[0]) % head.len();
        match edits[1] % 3 {
            0 => head[at] = edits[2],
            1 => head.insert(at, edits[3]),
            _ => head.truncate(at.max(1)),
        }
        let resp = tokio::time::timeout(Duration::from_secs(5), raw_request(proxy.inbound(), &head))
            .await
            .unwrap_or_default();
        answered_200 += resp.matches("HTTP/1.1 200").count();
    }
    assert_eq!(proxy.admin_get("/healthz").await.0, 200, "still alive");
    assert!(
        up.requests() <= answered_200,
        "the upstream only saw requests that were answered: {} > {answered_200}",
        up.requests()
    );
    assert_eq!(get(&proxy.url("/")).await.status, 200);
}
