//! The data path with healthy upstreams: HTTP/1.1 and HTTP/2 through the real binary,
//! routing, headers, pooling, admin endpoints and logs.

use bytes::Bytes;
use http_body_util::Full;
use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;

#[tokio::test]
async fn http1_request_is_forwarded_with_forwarding_headers_and_logged() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let req = http::Request::get(proxy.url("/echo?token=abc"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "drop me")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "req-123")
        .header("x-app", "kept")
        .body(Full::default())
        .unwrap();
    let reply = send(&http1_client(), req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), "req-123");
    let echo = reply.json();
    let h = &echo["headers"];
    assert_eq!(h["x-app"], "kept");
    assert_eq!(h["x-request-id"], "req-123");
    assert!(
        h.get("x-hop").is_none() && h.get("keep-alive").is_none(),
        "hop-by-hop leaked: {h}"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http");
    assert_eq!(h["host"], proxy.inbound().to_string());
    assert_eq!(echo["path"], "/echo");

    let line = proxy.access_log("req-123").await;
    assert_eq!(line["level"], "info");
    assert_eq!(line["route"], "default");
    assert_eq!(line["upstream"], "app");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/echo", "the query never reaches the log");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(line["endpoint"], up.addr().to_string());
    assert!(line.get("code").is_none());
}

#[tokio::test]
async fn fields_the_proxy_sets_replace_the_clients_and_go_upstream_once() {
    // The proxy's own fields are written beside the client's head, not inserted into it:
    // the client's copies must be gone, over HTTP/1.1 and HTTP/2 upstreams alike.
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for protocol in ["http1", "http2"] {
        let up = Upstream::start(Mode::Ok).await;
        let yaml = with_upstream_setting(&config(&[up.addr()], DEFAULT_ROUTE), &format!("protocol: {protocol}"));
        let proxy = Outrigger::start(&yaml);
        let req = http::Request::get(proxy.url("/echo"))
            .header("x-request-id", "req-9")
            .header("traceparent", PARENT)
            .header("tracestate", "congo=t61rcWkgMzE")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "for=203.0.113.9")
            .body(Full::default())
            .unwrap();
        let reply = send(&http1_client(), req).await;
        assert_eq!(reply.status, 200, "{protocol}");
        let h = up.last_request_headers().unwrap();
        let once = |name: &str| {
            let all: Vec<_> = h.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            assert_eq!(all.len(), 1, "{protocol}: {name} went upstream as {all:?}");
            all.into_iter().next().unwrap()
        };
        assert_eq!(once("x-request-id"), "req-9");
        let tp = once("traceparent");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp != PARENT,
            "{tp}"
        );
        assert_eq!(once("tracestate"), "congo=t61rcWkgMzE");
        assert_eq!(once("x-forwarded-for"), "203.0.113.9, 127.0.0.1");
        assert_eq!(once("x-forwarded-proto"), "http");
        assert_eq!(once("forwarded"), "for=203.0.113.9, for=127.0.0.1;proto=http");
    }
}

#[tokio::test]
async fn request_ids_are_generated_as_uuid_v7_when_missing_or_invalid() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    for sent in [None, Some("bad id with spaces")] {
        let mut req = http::Request::get(proxy.url("/echo"));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let reply = send(&http1_client(), req.body(Full::default()).unwrap()).await;
        let id = reply.header("x-request-id").to_owned();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "7", "UUID version 7: {id}");
        assert_eq!(reply.json()["headers"]["x-request-id"], id.as_str());
    }
}

#[tokio::test]
async fn http2_prior_knowledge_works_end_to_end() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let reply = send(
        &http2_client(),
        http::Request::get(proxy.url("/echo")).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["version"], "HTTP/1.1", "protocol: http1 upstream by default");
    assert_eq!(
        echo["headers"]["host"],
        proxy.inbound().to_string(),
        "the :authority becomes Host"
    );
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["protocol"], "HTTP/2");
    // Request ids go out never-indexed (HPACK): each response on the connection still
    // carries its own.
    let client = http2_client();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = send(
            &client,
            http::Request::get(proxy.url("/")).body(Full::default()).unwrap(),
        )
        .await;
        let id = reply.header("x-request-id").to_owned();
        assert_eq!(proxy.access_log(&id).await["protocol"], "HTTP/2");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
}

#[tokio::test]
async fn http2_upstream_carries_trailers_to_http2_clients() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_upstream_setting(&config(&[up.addr()], DEFAULT_ROUTE), "protocol: http2");
    let proxy = Outrigger::start(&yaml);
    let client = http2_client();
    let resp = client
        .request(
            http::Request::get(proxy.url("/trailers"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["x-checksum"], "done");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"body before trailers"));
}

#[tokio::test]
async fn http1_upstream_chunked_trailers_reach_http2_clients() {
    // The upstream sends trailers over HTTP/1.1 only to a request that says `te: trailers`;
    // the proxy keeps that header and decodes the chunked body, trailers and all.
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let resp = http2_client()
        .request(
            http::Request::get(proxy.url("/trailers"))
                .header("te", "trailers")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last_request_headers().unwrap();
    assert_eq!(seen["te"], "trailers", "{seen:?}");
    let collected = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["x-checksum"], "done");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"body before trailers"));
}

#[tokio::test]
async fn routes_match_by_path_method_header_and_listener_first_match_wins() {
    let a = Upstream::start(Mode::Ok).await;
    let b = Upstream::start(Mode::Status(201)).await;
    let yaml = format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:0}}\n  - {{name: outbound, role: outbound, address: 127.0.0.1:0}}\n\
         admin: {{address: 127.0.0.1:0}}\n\
         upstreams:\n  a: {{endpoints: [{}]}}\n  b: {{endpoints: [{}]}}\n\
         routes:\n\
         \x20 - {{name: post-orders, match: {{path_prefix: /orders, methods: [POST]}}, upstream: b}}\n\
         \x20 - {{name: canary, match: {{path_prefix: /, headers: {{x-canary: \"yes\"}}}}, upstream: b}}\n\
         \x20 - {{name: only-outbound, match: {{path: /internal}}, upstream: b, listener: outbound}}\n\
         \x20 - {{name: items, match: {{path_regex: \"/items/[0-9]+\"}}, upstream: b}}\n\
         \x20 - {{name: rest, match: {{path_prefix: /api}}, upstream: a}}\n",
        a.addr(),
        b.addr()
    );
    let proxy = Outrigger::start(&yaml);
    let c = http1_client();
    let status = |method: &str, url: String, canary: bool| {
        let mut r = http::Request::builder().method(method).uri(url);
        if canary {
            r = r.header("x-canary", "yes");
        }
        let c = c.clone();
        async move { send(&c, r.body(Full::default()).unwrap()).await.status }
    };
    assert_eq!(status("POST", proxy.url("/orders/1"), false).await, 201);
    assert_eq!(status("GET", proxy.url("/api/x"), false).await, 200);
    assert_eq!(status("GET", proxy.url("/api/x"), true).await, 201);
    assert_eq!(status("GET", proxy.url("/items/12"), false).await, 201);
    assert_eq!(
        status("GET", proxy.url("/items/12/x"), false).await,
        404,
        "regexes match the whole path"
    );
    assert_eq!(
        status("GET", proxy.url("/internal"), false).await,
        404,
        "limited to the outbound listener"
    );
    assert_eq!(
        status("GET", format!("http://{}/internal", proxy.listeners["outbound"]), false).await,
        201
    );
}

#[tokio::test]
async fn route_not_found_is_problem_json_and_nothing_is_forwarded() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(
        &[up.addr()],
        "  - {name: api, match: {path_prefix: /api}, upstream: app}\n",
    ));
    let reply = get(&proxy.url("/nope?secret=1")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.header("outrigger-error"), "route_not_found");
    let p = reply.json();
    assert_eq!(p["type"], "urn:outrigger:error:route_not_found");
    assert_eq!(p["code"], "route_not_found");
    assert_eq!(p["class"], "client");
    assert_eq!(p["status"], 404);
    assert_eq!(p["retryable"], false);
    assert_eq!(p["instance"], "/nope");
    assert_eq!(p["request_id"], reply.header("x-request-id"));
    assert_eq!(up.requests(), 0);
    let line = proxy.access_log(reply.header("x-request-id")).await;
    assert_eq!(line["code"], "route_not_found");
    assert_eq!(line["class"], "client");
    assert_eq!(line["status"], 404);
    assert_eq!(
        proxy
            .metric(
                "http_server_request_duration_seconds_count",
                &["error_type=\"route_not_found\"", "http_response_status_code=\"404\""]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn outbound_absolute_form_is_routed_by_authority_and_never_an_open_proxy() {
    let up = Upstream::start(Mode::Ok).await;
    let routes = "  - {name: payments, match: {host: payments.internal, path_prefix: /}, upstream: app, listener: outbound}\n  - {name: default, match: {path_prefix: /}, upstream: app}\n";
    let proxy = Outrigger::start(&config(&[up.addr()], routes));
    let outbound = proxy.listeners["outbound"];
    let ok = raw_request(
        outbound,
        b"GET http://payments.internal/echo HTTP/1.1\r\nHost: payments.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.contains("\"host\":\"payments.internal\""),
        "Host is the authority: {ok}"
    );
    assert!(
        !ok.contains("x-forwarded-for"),
        "outbound listeners leave forwarding headers alone: {ok}"
    );
    let before = up.requests();
    let refused = raw_request(
        outbound,
        b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 404"), "{refused}");
    assert!(refused.contains("outrigger-error: route_not_found"), "{refused}");
    assert_eq!(up.requests(), before, "nothing was forwarded");
}

#[tokio::test]
async fn balancing_prefers_the_faster_endpoint_and_reuses_pooled_connections() {
    let slow = Upstream::start(Mode::Delay(std::time::Duration::from_millis(200))).await;
    let fast = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[slow.addr(), fast.addr()], DEFAULT_ROUTE));
    let c = http1_client();
    let mut last = String::new();
    for _ in 0..20 {
        let reply = send(&c, http::Request::get(proxy.url("/")).body(Full::default()).unwrap()).await;
        assert_eq!(reply.status, 200);
        last = reply.header("x-request-id").to_owned();
    }
    // Access lines are written in batches, in order: once the last is out, all are.
    proxy.access_log(&last).await;
    // P2C with a peak-EWMA cost, weighed at random: each endpoint is tried once, then the
    // slow one (200 ms against well under 1 ms) wins a pair about as often as the fast one's
    // estimate is a fraction of its own: rarely, even when a loaded machine slows the fast
    // one down to a few milliseconds.
    assert!(slow.requests() <= 5, "slow endpoint got {} of 20", slow.requests());
    assert!(fast.requests() >= 15, "fast endpoint got {} of 20", fast.requests());
    assert_eq!(fast.connections(), 1, "sequential requests reuse one pooled connection");
    let reused = proxy
        .logs()
        .into_iter()
        .filter(|l| l["kind"] == "access" && l["attempts"][0]["connection"] == "reused")
        .count();
    assert!(reused >= 17, "{reused} of 20 on reused connections");
}

#[tokio::test]
async fn admin_endpoints_answer_health_readiness_and_metrics() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    assert_eq!(proxy.admin_get("/healthz").await.0, 200);
    assert_eq!(proxy.admin_get("/readyz").await, (200, "ready\n".to_owned()));
    get(&proxy.url("/")).await;
    let (status, text) = proxy.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("outrigger_build_info{commit="), "{text}");
    assert_eq!(
        proxy
            .metric(
                "http_server_request_duration_seconds_count",
                &[
                    "http_route=\"default\"",
                    "http_response_status_code=\"200\"",
                    "http_request_method=\"GET\""
                ]
            )
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(
                "http_client_request_duration_seconds_count",
                &["upstream=\"app\"", "http_response_status_code=\"200\""]
            )
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("outrigger_proxy_overhead_seconds_count", &["route=\"default\""])
            .await,
        1.0
    );
    let overhead = proxy
        .metric("outrigger_proxy_overhead_seconds_sum", &["route=\"default\""])
        .await;
    let total = proxy
        .metric("http_server_request_duration_seconds_sum", &["http_route=\"default\""])
        .await;
    assert!(
        overhead > 0.0 && overhead < total,
        "overhead {overhead}s within total {total}s"
    );
    assert_eq!(proxy.admin_get("/nope").await.0, 404);
}

#[tokio::test]
async fn pooled_connections_expire_after_the_idle_timeout_and_at_most_max_idle_are_kept() {
    let up = Upstream::start(Mode::Delay(std::time::Duration::from_millis(200))).await;
    let yaml = with_upstream_setting(
        &config(&[up.addr()], DEFAULT_ROUTE),
        "pool: {idle_timeout: 1500ms, max_idle_per_endpoint: 1}",
    );
    let proxy = Outrigger::start(&yaml);
    let c = http1_client();
    let get = |id: &str| {
        http::Request::get(proxy.url("/"))
            .header("x-request-id", id)
            .body(Full::default())
            .unwrap()
    };
    // Three at once need three connections; only one of them may stay idle afterwards.
    let (a, b, d) = tokio::join!(send(&c, get("c-1")), send(&c, get("c-2")), send(&c, get("c-3")));
    assert!([a.status, b.status, d.status].iter().all(|s| *s == 200));
    assert_eq!(up.connections(), 3);
    // Two at once again: one reuses the kept connection, the other must connect.
    let (a, b) = tokio::join!(send(&c, get("p-1")), send(&c, get("p-2")));
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(
        up.connections(),
        4,
        "max_idle_per_endpoint: 1 keeps one idle connection"
    );
    let mut kinds: Vec<String> = Vec::new();
    for id in ["p-1", "p-2"] {
        let line = proxy.access_log(id).await;
        kinds.push(line["attempts"][0]["connection"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["fresh", "reused"]);

    // Idle past the pool's idle timeout: closed instead of reused.
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    let reply = send(&c, get("late")).await;
    assert_eq!(reply.status, 200);
    let line = proxy.access_log("late").await;
    assert_eq!(line["attempts"][0]["connection"], "fresh", "{line}");
    assert_eq!(up.connections(), 5);
}
