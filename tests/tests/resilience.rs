//! Resilience mechanisms provoked for real: retries, budgets, breakers, outlier ejection,
//! deadlines, load shedding, fallbacks and fault injection. Each test checks the status,
//! the problem `code`, the metric and the log line.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::Full;
use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;

fn yaml(endpoints: &[std::net::SocketAddr], upstream_extra: &str, route: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:0}}\nadmin: {{address: 127.0.0.1:0}}\ndrain: {{delay: 0s, timeout: 5s}}\n\
         upstreams:\n  app:\n    endpoints: [{}]\n{upstream_extra}\
         routes:\n  - name: api\n    match: {{path_prefix: /}}\n    upstream: app\n{route}",
        eps.join(", ")
    )
}

const RETRY_RESET: &str = "    retry: {attempts: 2, on: [reset, connect_failure], backoff: {base: 1ms, max: 5ms}}\n";

async fn request(proxy: &Outrigger, method: &str, path: &str, body: Bytes) -> Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .body(Full::new(body))
        .unwrap();
    send(&http1_client(), req).await
}

#[tokio::test]
async fn a_get_that_meets_a_reset_is_retried_once_and_succeeds() {
    let up = Upstream::start(Mode::Ok).await;
    up.fail_next(1, Mode::ResetBeforeResponse);
    let proxy = Outrigger::start(&yaml(&[up.addr()], "", RETRY_RESET));
    let reply = request(&proxy, "GET", "/orders", Bytes::new()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(up.requests(), 2, "one failed try, one retry");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["attempts"].as_array().unwrap().len(), 2, "{line}");
    assert_eq!(line["attempts"][0]["code"], "upstream_reset");
    assert_eq!(line["attempts"][1]["status"], 200);
    // The decision after attempt 1, with the breaker and budget state it was taken in.
    let first = &line["attempts"][0];
    assert_eq!(first["circuit_state"], "closed", "{line}");
    assert_eq!(first["next"], "retry", "{line}");
    assert_eq!(first["retry_reason"], "reset", "{line}");
    assert!(
        first["backoff_ms"].is_number() && first["retry_budget_left"].is_number(),
        "{line}"
    );
    assert!(line["attempts"][1].get("next").is_none(), "{line}");
    assert!(line["msg"].as_str().unwrap().contains("after 2 attempts"), "{line}");
    assert!(line["cause"].as_str().unwrap().starts_with("attempt 1 to "), "{line}");
    assert_eq!(
        proxy
            .metric("outrigger_retries_total", &["route=\"api\"", "reason=\"reset\""])
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_post_is_not_retried_by_default() {
    let up = Upstream::start(Mode::Ok).await;
    up.fail_next(1, Mode::ResetBeforeResponse);
    let proxy = Outrigger::start(&yaml(&[up.addr()], "", RETRY_RESET));
    let reply = request(&proxy, "POST", "/orders", Bytes::from_static(b"{\"qty\":1}")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["code"], "upstream_reset");
    assert_eq!(up.requests(), 1, "POST is not idempotent: sent once");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(proxy.metric("outrigger_retries_total", &["route=\"api\""]).await, 0.0);
}

#[tokio::test]
async fn a_body_larger_than_the_replay_buffer_is_sent_once() {
    let up = Upstream::start(Mode::Ok).await;
    up.fail_next(1, Mode::ResetBeforeResponse);
    let route = "    retry: {attempts: 2, on: [reset], replay_buffer_bytes: 1024, backoff: {base: 1ms, max: 5ms}}\n";
    let proxy = Outrigger::start(&yaml(&[up.addr()], "", route));
    let reply = request(&proxy, "PUT", "/blob", Bytes::from(vec![b'x'; 4096])).await;
    assert_eq!(reply.status, 502);
    assert_eq!(up.requests(), 1);
    // A small PUT on the same route is retried, with its body replayed intact.
    up.fail_next(1, Mode::ResetBeforeResponse);
    let reply = request(&proxy, "PUT", "/echo", Bytes::from(vec![b'y'; 512])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_retry_storms() {
    let up = Upstream::start(Mode::Status(503)).await;
    let breaker_off = "    circuit_breaker: {consecutive_failures: 100000, min_requests: 100000, trip_on_5xx: false}\n";
    let route = "    retry: {attempts: 3, on: [unavailable], backoff: {base: 1ms, max: 2ms}, budget: {ratio: 0.2, min_per_second: 0}}\n";
    let proxy = Outrigger::start(&yaml(&[up.addr()], breaker_off, route));
    let replies = join_all((0..100).map(|_| request(&proxy, "GET", "/", Bytes::new()))).await;
    assert!(replies.iter().all(|r| r.status == 503));
    let received = up.requests();
    // Without a budget: 300. With 20% of 100 requests: at most 120.
    assert!((100..=120).contains(&received), "upstream received {received} requests");
    let exhausted = proxy
        .metric("outrigger_retry_budget_exhausted_total", &["route=\"api\""])
        .await;
    assert!(exhausted >= 80.0, "budget exhausted {exhausted} times");
    let retries = proxy
        .metric("outrigger_retries_total", &["route=\"api\"", "reason=\"unavailable\""])
        .await;
    assert_eq!(retries as usize, received - 100);
    let spent = proxy
        .wait_for_log(|l| {
            l["kind"] == "access" && l["cause"].as_str().is_some_and(|c| c.contains("retry budget is spent"))
        })
        .await;
    let last = spent["attempts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["next"], "budget_exhausted", "{spent}");
    assert_eq!(last["retry_budget_left"], 0.0, "{spent}");
}

/// Sends GETs until `pred` holds for a reply (bounded), returning that reply.
async fn until(proxy: &Outrigger, pred: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = request(proxy, "GET", "/", Bytes::new()).await;
        if pred(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "condition never held; last status {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_probes_and_closes_or_reopens_doubled() {
    let up = Upstream::start(Mode::Status(500)).await;
    let breaker =
        "    circuit_breaker: {consecutive_failures: 3, open_for: 400ms, max_open_for: 10s, half_open_probes: 1}\n";
    let proxy = Outrigger::start(&yaml(&[up.addr()], breaker, ""));
    let mut third = None;
    for _ in 0..3 {
        let reply = request(&proxy, "GET", "/", Bytes::new()).await;
        assert_eq!(reply.status, 500);
        third = Some(reply);
    }
    let line = proxy.access_log(third.unwrap().header("x-request-id")).await;
    assert!(
        line["cause"].as_str().unwrap().ends_with("the breaker of 'app' opened"),
        "the request that tripped the breaker says so: {line}"
    );
    let opened = proxy
        .wait_for_log(|l| l["kind"] == "breaker" && l["to"] == "open")
        .await;
    assert!(
        opened["why"]
            .as_str()
            .unwrap()
            .starts_with("opened: 3 consecutive failures, last: status 500"),
        "{opened}"
    );
    assert_eq!(opened["level"], "warn");

    // Open: fail fast, no upstream call, Retry-After.
    let before = up.requests();
    let reply = request(&proxy, "GET", "/", Bytes::new()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("outrigger-error"), "circuit_open");
    assert_eq!(reply.header("retry-after"), "1");
    let p = reply.json();
    assert_eq!(p["code"], "circuit_open");
    assert_eq!(p["retry_after_s"], 1);
    assert!(p["detail"].as_str().unwrap().contains("3 consecutive failures"), "{p}");
    assert_eq!(up.requests(), before, "no upstream call while open");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert!(line.get("attempts").is_none(), "no attempt was made: {line}");
    eprintln!("fail-fast while open took {} ms inside the proxy", line["duration_ms"]);
    assert_eq!(
        proxy
            .metric("outrigger_circuit_breaker_state", &["upstream=\"app\""])
            .await,
        1.0
    );

    // Half-open probe fails: reopened for twice as long.
    let reply = until(&proxy, |r| r.status == 500).await;
    assert_eq!(reply.status, 500);
    let probe = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(probe["attempts"][0]["circuit_state"], "half_open", "{probe}");
    let reopened = proxy
        .wait_for_log(|l| l["kind"] == "breaker" && l["why"].as_str().is_some_and(|w| w.starts_with("reopened")))
        .await;
    assert!(
        reopened["why"]
            .as_str()
            .unwrap()
            .starts_with("reopened for 800ms: probe failed with status 500"),
        "{reopened}"
    );

    // The upstream recovers: the next probe closes the breaker.
    up.set_mode(Mode::Ok);
    until(&proxy, |r| r.status == 200).await;
    let closed = proxy
        .wait_for_log(|l| l["kind"] == "breaker" && l["to"] == "closed")
        .await;
    assert_eq!(closed["why"], "closed: 1 probe succeeded in a row");
    assert_eq!(
        proxy
            .metric("outrigger_circuit_breaker_state", &["upstream=\"app\""])
            .await,
        0.0
    );
    assert_eq!(
        proxy
            .metric(
                "outrigger_circuit_breaker_transitions_total",
                &["from=\"closed\"", "to=\"open\""]
            )
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(
                "outrigger_circuit_breaker_transitions_total",
                &["from=\"half_open\"", "to=\"open\""]
            )
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(
                "outrigger_circuit_breaker_transitions_total",
                &["from=\"half_open\"", "to=\"closed\""]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn four_hundreds_never_trip_the_breaker() {
    let up = Upstream::start(Mode::Status(404)).await;
    let proxy = Outrigger::start(&yaml(
        &[up.addr()],
        "    circuit_breaker: {consecutive_failures: 2}\n",
        "",
    ));
    for _ in 0..10 {
        assert_eq!(request(&proxy, "GET", "/", Bytes::new()).await.status, 404);
    }
    assert_eq!(
        proxy
            .metric("outrigger_circuit_breaker_state", &["upstream=\"app\""])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_is_ejected_avoided_and_comes_back() {
    let hang = Upstream::start(Mode::Hang).await;
    let a = Upstream::start(Mode::Ok).await;
    let b = Upstream::start(Mode::Ok).await;
    let od = "    outlier_detection: {consecutive_failures: 1, eject_for: 1s, max_ejected_percent: 50}\n";
    // The per-try timeout is generous so that healthy endpoints on a loaded test machine never hit it.
    let route = "    timeout: 20s\n    retry: {attempts: 3, per_try_timeout: 1s, on: [timeout], backoff: {base: 1ms, max: 2ms}}\n";
    let proxy = Outrigger::start(&yaml(&[hang.addr(), a.addr(), b.addr()], od, route));
    // Concurrent requests spread over all three endpoints until one lands on the hanging one.
    let deadline = Instant::now() + PATIENCE;
    while hang.requests() == 0 {
        assert!(Instant::now() < deadline, "the hanging endpoint never got a request");
        let replies = join_all((0..10).map(|_| request(&proxy, "GET", "/", Bytes::new()))).await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "retries hide the hanging endpoint from callers: {statuses:?}"
        );
    }
    let ejected = proxy.wait_for_log(|l| l["kind"] == "outlier").await;
    assert_eq!(ejected["endpoint"], hang.addr().to_string());
    assert!(ejected["msg"].as_str().unwrap().contains("ejected for 1s"), "{ejected}");
    assert_eq!(
        proxy
            .metric("outrigger_outlier_ejections_total", &["upstream=\"app\""])
            .await,
        1.0
    );
    assert_eq!(
        proxy.metric("outrigger_endpoints_healthy", &["upstream=\"app\""]).await,
        2.0
    );

    // While ejected: no request reaches it, and every request takes one attempt again.
    let seen = hang.requests();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = request(&proxy, "GET", "/", Bytes::new()).await;
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").to_owned());
    }
    assert_eq!(hang.requests(), seen);
    for id in ids {
        let line = proxy.access_log(&id).await;
        assert_eq!(line["attempts"].as_array().unwrap().len(), 1, "{line}");
    }
    // After eject_for it is back in rotation.
    let deadline = Instant::now() + PATIENCE;
    while proxy.metric("outrigger_endpoints_healthy", &["upstream=\"app\""]).await < 3.0 {
        assert!(Instant::now() < deadline, "the endpoint never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn grpc_timeout_shortens_the_deadline_and_is_passed_on() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&yaml(&[up.addr()], "", "    timeout: 10s\n"));
    let grpc = |path: &str| {
        http::Request::post(proxy.url(path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "100m")
            .body(Full::default())
            .unwrap()
    };
    let reply = send(&http2_client(), grpc("/echo")).await;
    assert_eq!(reply.status, 200);
    let passed = reply.json()["headers"]["grpc-timeout"].as_str().unwrap().to_owned();
    let unit_ns = match passed.chars().last().unwrap() {
        'n' => 1,
        'u' => 1_000,
        'm' => 1_000_000,
        other => panic!("unexpected unit {other} in {passed}"),
    };
    let ns: u64 = passed[..passed.len() - 1].parse::<u64>().unwrap() * unit_ns;
    assert!(
        ns > 0 && ns <= 100_000_000,
        "passed on {passed}: must be the remaining part of 100ms"
    );

    up.set_mode(Mode::Delay(Duration::from_secs(2)));
    let reply = send(&http2_client(), grpc("/slow")).await;
    assert_eq!(reply.status, 200, "gRPC errors are trailers-only");
    assert_eq!(reply.header("grpc-status"), "4", "DEADLINE_EXCEEDED");
    assert_eq!(reply.header("outrigger-error"), "upstream_timeout");
    assert!(
        reply.header("grpc-message").contains("did not answer within 100ms"),
        "{}",
        reply.header("grpc-message")
    );
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["code"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_max_in_flight_is_shed_with_overloaded() {
    let up = Upstream::start(Mode::Delay(Duration::from_millis(300))).await;
    let yaml = yaml(&[up.addr()], "", "").replace(
        "{name: inbound, address: 127.0.0.1:0}",
        "{name: inbound, address: 127.0.0.1:0, limits: {max_in_flight: 10}}",
    );
    let proxy = Outrigger::start(&yaml);
    let rss_before = proxy.memory_kib("VmRSS");
    let flood = join_all((0..200).map(|_| request(&proxy, "GET", "/", Bytes::new())));
    let health = async {
        // The admin port keeps answering during the flood.
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.admin_get("/healthz").await.0
    };
    let (replies, health) = tokio::join!(flood, health);
    assert_eq!(health, 200);
    let shed: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    let served = replies.iter().filter(|r| r.status == 200).count();
    assert!(served >= 10, "served {served}");
    assert!(!shed.is_empty());
    assert_eq!(served + shed.len(), 200);
    let s = shed[0];
    assert_eq!(s.header("outrigger-error"), "overloaded");
    assert_eq!(s.header("retry-after"), "1");
    assert_eq!(s.json()["class"], "proxy");
    assert!(up.requests() <= served, "shed requests never reach the upstream");
    let line = proxy.access_log(s.header("x-request-id")).await;
    assert_eq!(line["code"], "overloaded");
    assert!(
        proxy.memory_kib("VmHWM") < rss_before + 32 * 1024,
        "memory stays flat under the flood"
    );
    assert_eq!(
        proxy
            .metric(
                "http_server_request_duration_seconds_count",
                &["error_type=\"overloaded\""]
            )
            .await as usize,
        shed.len()
    );
}

#[tokio::test]
async fn fallbacks_answer_upstream_failures_only() {
    let up = Upstream::start(Mode::Ok).await;
    let route =
        "    fallback: {status: 503, content_type: application/json, body: '{\"message\":\"busy, try later\"}'}\n";
    let routes_yaml = yaml(&[up.addr()], "", route).replace("path_prefix: /}", "path_prefix: /api}");
    let proxy = Outrigger::start(&routes_yaml);

    // An upstream 5xx becomes the fallback.
    up.set_mode(Mode::Status(500));
    let reply = request(&proxy, "GET", "/api/cart", Bytes::new()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("outrigger-fallback"), "upstream_error");
    assert_eq!(reply.json()["message"], "busy, try later");
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["fallback"], "upstream_error");
    assert_eq!(line["level"], "warn");

    // A 4xx is the service's answer to the user: untouched.
    up.set_mode(Mode::Status(404));
    let reply = request(&proxy, "GET", "/api/cart", Bytes::new()).await;
    assert_eq!(reply.status, 404);
    assert!(!reply.headers.contains_key("outrigger-fallback"));

    // A client error made by the proxy: no fallback either.
    let reply = request(&proxy, "GET", "/elsewhere", Bytes::new()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("outrigger-error"), "route_not_found");
    assert!(!reply.headers.contains_key("outrigger-fallback"));
    assert_eq!(proxy.metric("outrigger_fallbacks_total", &["route=\"api\""]).await, 1.0);

    // A connect failure becomes the fallback, marked with its code.
    let down = Outrigger::start(&yaml(&[refused_addr()], "", route));
    let reply = request(&down, "GET", "/", Bytes::new()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("outrigger-fallback"), "upstream_connect_failed");
    let line = down.access_log(reply.header("x-request-id")).await;
    assert_eq!(
        line["code"], "upstream_connect_failed",
        "the metric and log keep the real failure"
    );
}

#[tokio::test]
async fn fault_injection_at_100_percent_aborts_and_at_0_never_does() {
    let up = Upstream::start(Mode::Ok).await;
    let always = yaml(&[up.addr()], "", "    fault: {abort: {percent: 100, status: 503}}\n");
    let proxy = Outrigger::start(&always);
    for _ in 0..20 {
        let r = request(&proxy, "GET", "/", Bytes::new()).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("outrigger-error"), "fault_injected");
        assert_eq!(r.json()["class"], "proxy");
    }
    assert_eq!(up.requests(), 0);
    assert_eq!(
        proxy
            .metric("outrigger_faults_injected_total", &["route=\"api\""])
            .await,
        20.0
    );
    let line = proxy
        .wait_for_log(|l| l["kind"] == "access" && l["code"] == "fault_injected")
        .await;
    assert_eq!(line["fault"], "abort=503");
    assert_eq!(
        proxy
            .metric("outrigger_circuit_breaker_state", &["upstream=\"app\""])
            .await,
        0.0,
        "faults never trip the breaker"
    );

    let never = yaml(
        &[up.addr()],
        "",
        "    fault: {abort: {percent: 0, status: 503}, delay: {percent: 0, duration: 5s}}\n",
    );
    let proxy = Outrigger::start(&never);
    for _ in 0..20 {
        assert_eq!(request(&proxy, "GET", "/", Bytes::new()).await.status, 200);
    }
    assert_eq!(
        proxy
            .metric("outrigger_faults_injected_total", &["route=\"api\""])
            .await,
        0.0
    );
}

#[tokio::test]
async fn the_fault_header_works_only_where_allowed() {
    let up = Upstream::start(Mode::Ok).await;
    let ask = |proxy: &Outrigger, v: &str| {
        let req = http::Request::get(proxy.url("/echo"))
            .header("x-outrigger-fault", v)
            .body(Full::default())
            .unwrap();
        async move { send(&http1_client(), req).await }
    };
    let closed = Outrigger::start(&yaml(&[up.addr()], "", ""));
    let r = ask(&closed, "abort=418").await;
    assert_eq!(r.status, 200, "no fault: section, the header is ignored");
    assert!(
        r.json()["headers"].get("x-outrigger-fault").is_none(),
        "and never forwarded"
    );

    let open = Outrigger::start(&yaml(&[up.addr()], "", "    fault: {allow_header: true}\n"));
    let r = ask(&open, "abort=418").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("outrigger-error"), "fault_injected");
    let r = ask(&open, "delay=50ms").await;
    assert_eq!(r.status, 200);
    let line = open.access_log(r.header("x-request-id")).await;
    assert_eq!(line["fault"], "delay=50ms");
    let r = ask(&open, "explode").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "bad_request");
}

#[tokio::test]
async fn the_keepalive_race_is_retried_once_on_a_fresh_connection_and_explained() {
    let up = Upstream::start(Mode::ResetReused).await;
    // No retry policy at all: the race retry is not a policy retry and needs no budget.
    let proxy = Outrigger::start(&yaml(&[up.addr()], "", ""));
    assert_eq!(request(&proxy, "GET", "/", Bytes::new()).await.status, 200);
    for round in 1..=3 {
        let reply = request(&proxy, "GET", "/", Bytes::new()).await;
        assert_eq!(reply.status, 200, "round {round}");
        let line = proxy.access_log(reply.header("x-request-id")).await;
        let attempts = line["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{line}");
        assert_eq!(attempts[0]["connection"], "reused");
        assert_eq!(attempts[0]["code"], "upstream_reset");
        assert_eq!(attempts[1]["connection"], "fresh");
        assert!(
            line["cause"].as_str().unwrap().contains("(connection reused after"),
            "{line}"
        );
    }
    assert_eq!(
        proxy
            .metric("outrigger_retries_total", &["reason=\"keepalive_race\""])
            .await,
        3.0
    );
    let warn = proxy.wait_for_log(|l| l["kind"] == "keepalive_race").await;
    assert!(
        warn["msg"]
            .as_str()
            .unwrap()
            .contains("upstreams.app.pool.idle_timeout"),
        "{warn}"
    );
    // A POST is not idempotent: the race is reported, not retried.
    let reply = request(&proxy, "POST", "/", Bytes::from_static(b"x")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["code"], "upstream_reset");
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_skipped_not_used_even_for_a_post() {
    let up = Upstream::start(Mode::CloseWhenIdle).await;
    let proxy = Outrigger::start(&yaml(&[up.addr()], "", ""));
    for round in 1..=3 {
        // Not idempotent: had the closed connection been used, this would be a 502.
        let reply = request(&proxy, "POST", "/", Bytes::from_static(b"x")).await;
        assert_eq!(reply.status, 200, "round {round}");
        let line = proxy.access_log(reply.header("x-request-id")).await;
        let attempts = line["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{line}");
        assert_eq!(attempts[0]["connection"], "fresh", "{line}");
        // The upstream's close has reached the proxy's socket before the next request.
        let deadline = Instant::now() + Duration::from_secs(20);
        while up.closed() < round {
            assert!(Instant::now() < deadline, "the upstream closes its connection");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(up.connections(), 3);
    assert_eq!(
        proxy
            .metric("outrigger_retries_total", &["reason=\"keepalive_race\""])
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_deadline_passing_mid_stream_resets_the_stream_never_a_504_after_200() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&yaml(&[up.addr()], "    protocol: auto\n", "    timeout: 30s\n"));
    let req = http::Request::post(proxy.url("/drip/30"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Full::default())
        .unwrap();
    let resp = http2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "the head arrived within the deadline");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let started = Instant::now();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "the stream is reset, not ended as if complete");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "reset at the deadline, not after the 3 s stream"
    );
    let line = proxy.access_log(&id).await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["code"], "upstream_timeout");
    assert!(
        line["cause"]
            .as_str()
            .unwrap()
            .contains("the deadline of 300ms passed while the response was streaming"),
        "{line}"
    );
    let labels = ["error_type=\"upstream_timeout\"", "http_response_status_code=\"200\""];
    assert_eq!(
        proxy
            .metric("http_server_request_duration_seconds_count", &labels)
            .await,
        1.0
    );
}

#[tokio::test]
async fn dns_names_are_resolved_and_followed() {
    let up = Upstream::start(Mode::Ok).await;
    let name = format!("localhost:{}", up.addr().port());
    let yaml = format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:0}}\nadmin: {{address: 127.0.0.1:0}}\n\
         upstreams:\n  app:\n    endpoints: [\"{name}\"]\n    resolve_every: 200ms\n\
         routes:\n  - name: api\n    match: {{path_prefix: /}}\n    upstream: app\n\
         \x20   retry: {{attempts: 3, on: [connect_failure], backoff: {{base: 1ms, max: 2ms}}}}\n"
    );
    let proxy = Outrigger::start(&yaml);
    let line = proxy.wait_for_log(|l| l["kind"] == "dns").await;
    assert!(
        line["endpoints"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{} (localhost)", up.addr().port())),
        "{line}"
    );
    for _ in 0..10 {
        // `localhost` may also resolve to ::1, where nothing listens: a connect-failure retry covers it.
        assert_eq!(request(&proxy, "GET", "/", Bytes::new()).await.status, 200);
    }
}

#[tokio::test]
async fn an_absurd_retry_after_from_the_upstream_is_capped_not_a_crash() {
    // `Retry-After` is the upstream's word: a huge value must not overflow the clock it is
    // added to (endpoint backoff, retry wait), and one that is not a number is ignored.
    let up = Upstream::start(Mode::Ok).await;
    let retry =
        "    retry: {attempts: 2, on: [unavailable], retriable_status: [429], backoff: {base: 1ms, max: 5ms}}\n";
    let proxy = Outrigger::start(&yaml(&[up.addr()], "", retry));
    for value in ["18446744073709551615", "99999999999999999999999", "soon"] {
        let reply = request(&proxy, "GET", &format!("/retry-after/{value}"), Bytes::new()).await;
        assert_eq!(reply.status, 429, "Retry-After: {value}: {:?}", reply.body);
    }
    // The lone endpoint is backed off, yet still used when nothing else is left.
    let reply = request(&proxy, "GET", "/echo", Bytes::new()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(proxy.metric("outrigger_internal_errors_total", &[]).await, 0.0);
    assert!(
        proxy.raw_lines().iter().all(|l| !l.contains("panic")),
        "{:?}",
        proxy.raw_lines()
    );
}
