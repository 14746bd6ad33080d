//! OpenTelemetry export against a real OTLP receiver (the collector's generated gRPC service
//! and OTLP/HTTP protobuf): a server span per request, a client span per attempt, the ids
//! that went out in `traceparent`, semantic-convention attributes, error spans, and three hops
//! (client → outrigger A → outrigger B → upstream) in one trace.

use std::time::Duration;

use http_body_util::Full;
use outrigger_testkit::otlp::{KIND_CLIENT, KIND_SERVER, STATUS_ERROR};
use outrigger_testkit::{Mode, OtlpReceiver, ReceivedSpan, Upstream, refused_addr};
use outrigger_tests::*;

const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn with_tracing(yaml: &str, service: &str, endpoint: &str, protocol: &str) -> String {
    format!(
        "{yaml}telemetry:\n  service_name: {service}\n  tracing:\n    otlp_endpoint: {endpoint}\n    otlp_protocol: {protocol}\n"
    )
}

/// Short batching so spans arrive within a second.
const FAST_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];

fn of_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

#[tokio::test]
async fn a_request_is_a_server_span_with_a_client_span_per_attempt() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_tracing(
        &config(&[up.addr()], DEFAULT_ROUTE),
        "checkout-sidecar",
        &otlp.grpc_endpoint(),
        "grpc",
    );
    let proxy = Outrigger::start_with(&yaml, FAST_EXPORT);

    let req = http::Request::get(proxy.url("/echo?token=secret"))
        .header("traceparent", GOOD)
        .body(Full::default())
        .unwrap();
    let reply = send(&http1_client(), req).await;
    assert_eq!(reply.status, 200);
    let sent_parent = reply.json()["headers"]["traceparent"].as_str().unwrap().to_owned();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let spans = otlp.wait_until(PATIENCE, |s| of_trace(s, trace).len() >= 2).await;
    let spans = of_trace(&spans, trace);
    let server = spans.iter().find(|s| s.kind == KIND_SERVER).expect("a server span");
    let client = spans.iter().find(|s| s.kind == KIND_CLIENT).expect("a client span");

    assert_eq!(server.parent_span_id, "00f067aa0ba902b7", "continues the caller's span");
    assert_eq!(
        client.parent_span_id, server.span_id,
        "the attempt hangs under the request"
    );
    assert_eq!(
        &sent_parent[36..52],
        client.span_id,
        "the upstream's parent is the client span"
    );
    assert_eq!(server.service_name, "checkout-sidecar");
    assert_eq!(server.name, "GET default");
    assert_eq!(server.attr("http.request.method"), Some("GET"));
    assert_eq!(server.attr("http.route"), Some("default"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("url.path"), Some("/echo"));
    assert_eq!(server.attr("outrigger.request_id"), Some(reply.header("x-request-id")));
    assert_eq!(server.attr("error.type"), None);
    assert!(
        server.attributes.values().all(|v| !v.contains("secret")),
        "query strings never reach spans: {server:?}"
    );
    assert_eq!(client.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(client.attr("server.port"), Some(up.addr().port().to_string().as_str()));
    assert_eq!(client.attr("outrigger.attempt"), Some("1"));
    assert_eq!(client.attr("outrigger.circuit_state"), Some("closed"));
    assert_eq!(client.attr("outrigger.connection"), Some("fresh"));
    assert!(server.start_ns <= client.start_ns && client.end_ns <= server.end_ns);
    // Counted once the collector has answered, which may be just after the spans arrived.
    assert!(wait_for_metric(&proxy, "outrigger_spans_exported_total", 2.0).await >= 2.0);
}

#[tokio::test]
async fn failed_attempts_are_error_spans_and_retries_are_siblings() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start(Mode::Ok).await;
    up.fail_next(1, Mode::ResetBeforeResponse);
    let routes = "  - name: default\n    match: {path_prefix: /}\n    upstream: app\n    timeout: 2s\n    retry: {attempts: 3, on: [reset], backoff: {base: 1ms, max: 5ms}}\n";
    let yaml = with_tracing(
        &config(&[up.addr()], routes),
        "a",
        &otlp.http_endpoint(),
        "http/protobuf",
    );
    let proxy = Outrigger::start_with(&yaml, FAST_EXPORT);
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 200);
    let line = proxy.access_log(reply.header("x-request-id")).await;
    let trace = line["trace_id"].as_str().unwrap().to_owned();

    let spans = otlp.wait_until(PATIENCE, |s| of_trace(s, &trace).len() >= 3).await;
    let spans = of_trace(&spans, &trace);
    assert!(spans.iter().all(|s| s.via == "http"), "sent over OTLP/HTTP");
    let server = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
    let mut clients: Vec<_> = spans.iter().filter(|s| s.kind == KIND_CLIENT).collect();
    clients.sort_by_key(|s| s.attr("outrigger.attempt").map(str::to_owned));
    assert_eq!(clients.len(), 2, "{clients:#?}");
    assert!(clients.iter().all(|c| c.parent_span_id == server.span_id));
    assert_ne!(clients[0].span_id, clients[1].span_id);
    assert_eq!(clients[0].status_code, STATUS_ERROR);
    assert_eq!(clients[0].attr("error.type"), Some("upstream_reset"));
    assert_eq!(clients[0].attr("outrigger.stage"), Some("await_headers"));
    assert_eq!(clients[0].attr("outrigger.retry.next"), Some("retry"));
    assert_eq!(clients[0].attr("outrigger.retry.reason"), Some("reset"));
    assert!(clients[0].attr("outrigger.retry.budget_left").is_some());
    assert_eq!(clients[1].attr("http.response.status_code"), Some("200"));
    assert_ne!(clients[1].status_code, STATUS_ERROR);
    assert_eq!(server.attr("outrigger.attempts"), Some("2"));
    assert_ne!(server.status_code, STATUS_ERROR, "the request itself succeeded");
}

#[tokio::test]
async fn an_upstream_failure_is_an_error_server_span_with_the_code_and_cause() {
    let otlp = OtlpReceiver::start().await;
    let yaml = with_tracing(
        &config(&[refused_addr()], DEFAULT_ROUTE),
        "a",
        &otlp.grpc_endpoint(),
        "grpc",
    );
    let proxy = Outrigger::start_with(&yaml, FAST_EXPORT);
    let reply = get(&proxy.url("/pay")).await;
    assert_eq!(reply.status, 503);
    let trace = reply.json()["trace_id"].as_str().unwrap().to_owned();
    let spans = otlp.wait_until(PATIENCE, |s| of_trace(s, &trace).len() >= 2).await;
    let spans = of_trace(&spans, &trace);
    let server = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
    let client = spans.iter().find(|s| s.kind == KIND_CLIENT).unwrap();
    assert_eq!(server.status_code, STATUS_ERROR);
    assert_eq!(server.status_message, "upstream_connect_failed");
    assert_eq!(server.attr("error.type"), Some("upstream_connect_failed"));
    assert_eq!(server.attr("outrigger.error_class"), Some("upstream"));
    assert_eq!(server.attr("http.response.status_code"), Some("503"));
    assert!(server.attr("outrigger.cause").is_some_and(|c| c.contains("attempt 1")));
    assert_eq!(client.attr("error.type"), Some("upstream_connect_failed"));
    assert_eq!(client.attr("outrigger.stage"), Some("connect"));
    assert_eq!(client.status_code, STATUS_ERROR);
}

#[tokio::test]
async fn unsampled_traces_export_nothing_and_the_flag_is_passed_on() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_tracing(&config(&[up.addr()], DEFAULT_ROUTE), "a", &otlp.grpc_endpoint(), "grpc");
    let proxy = Outrigger::start_with(&yaml, FAST_EXPORT);
    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    let req = http::Request::get(proxy.url("/echo"))
        .header("traceparent", unsampled)
        .body(Full::default())
        .unwrap();
    let reply = send(&http1_client(), req).await;
    assert!(
        reply.json()["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .ends_with("-00")
    );
    // A sampled request after it: once its spans are in, the unsampled one would be too.
    let req = http::Request::get(proxy.url("/echo"))
        .header("traceparent", GOOD)
        .body(Full::default())
        .unwrap();
    send(&http1_client(), req).await;
    let spans = otlp
        .wait_until(PATIENCE, |s| of_trace(s, "4bf92f3577b34da6a3ce929d0e0e4736").len() >= 2)
        .await;
    assert!(of_trace(&spans, "11111111111111111111111111111111").is_empty());
}

#[tokio::test]
async fn a_collector_that_is_down_or_hangs_costs_requests_nothing_and_drops_are_counted() {
    let up = Upstream::start(Mode::Ok).await;
    // A collector that accepts connections and never answers.
    let hanging = Upstream::start(Mode::Hang).await;
    for (endpoint, protocol) in [
        (format!("http://{}", refused_addr()), "grpc"),
        (format!("http://{}", hanging.addr()), "http/protobuf"),
    ] {
        let yaml = with_tracing(&config(&[up.addr()], DEFAULT_ROUTE), "a", &endpoint, protocol);
        let proxy = Outrigger::start_with(
            &yaml,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "50"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"),
            ],
        );
        let client = http1_client();
        for _ in 0..60 {
            let reply = send(
                &client,
                http::Request::get(proxy.url("/")).body(Full::default()).unwrap(),
            )
            .await;
            assert_eq!(reply.status, 200, "{endpoint}");
        }
        // 120 spans for a queue of 8: most are dropped, on the queue or by the failed export.
        let dropped = wait_for_metric(&proxy, "outrigger_spans_dropped_total", 20.0).await;
        assert!(dropped >= 20.0, "{endpoint}: {dropped}");
        assert_eq!(proxy.metric("outrigger_spans_exported_total", &[]).await, 0.0);
        let warn = proxy
            .wait_for_log(|l| l["kind"] == "otlp" && l["level"] == "warn")
            .await;
        assert!(
            warn["msg"].as_str().unwrap().contains("Requests are not affected"),
            "{warn}"
        );
    }
}

async fn wait_for_metric(proxy: &Outrigger, name: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = proxy.admin_get("/metrics").await.1;
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if total >= at_least || tokio::time::Instant::now() > deadline {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_hops_are_one_trace_with_correct_parents_and_one_request_id() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start(Mode::Ok).await;
    let b = Outrigger::start_with(
        &with_tracing(
            &config(&[up.addr()], DEFAULT_ROUTE),
            "proxy-b",
            &otlp.grpc_endpoint(),
            "grpc",
        ),
        FAST_EXPORT,
    );
    let a = Outrigger::start_with(
        &with_tracing(
            &config(&[b.inbound()], DEFAULT_ROUTE),
            "proxy-a",
            &otlp.grpc_endpoint(),
            "grpc",
        ),
        FAST_EXPORT,
    );
    let reply = get(&a.url("/echo")).await;
    assert_eq!(reply.status, 200);
    let request_id = reply.header("x-request-id").to_owned();
    let seen = reply.json();
    assert_eq!(
        seen["headers"]["x-request-id"], request_id,
        "the upstream sees the same request id"
    );

    let line_a = a.access_log(&request_id).await;
    let line_b = b.access_log(&request_id).await;
    let trace = line_a["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(line_b["trace_id"], trace.as_str(), "one trace id in both proxies' logs");

    let spans = otlp.wait_until(PATIENCE, |s| of_trace(s, &trace).len() >= 4).await;
    let spans = of_trace(&spans, &trace);
    let find = |service: &str, kind: i32| {
        *spans
            .iter()
            .find(|s| s.service_name == service && s.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} span from {service}: {spans:#?}"))
    };
    let a_server = find("proxy-a", KIND_SERVER);
    let a_client = find("proxy-a", KIND_CLIENT);
    let b_server = find("proxy-b", KIND_SERVER);
    let b_client = find("proxy-b", KIND_CLIENT);
    assert_eq!(a_server.parent_span_id, "", "A started the trace");
    assert_eq!(a_client.parent_span_id, a_server.span_id);
    assert_eq!(b_server.parent_span_id, a_client.span_id, "B continues A's attempt");
    assert_eq!(b_client.parent_span_id, b_server.span_id);
    let upstream_parent = &seen["headers"]["traceparent"].as_str().unwrap()[36..52];
    assert_eq!(upstream_parent, b_client.span_id);
    assert_eq!(line_a["span_id"], a_server.span_id.as_str());
    assert_eq!(line_b["span_id"], b_server.span_id.as_str());
    for s in [a_server, b_server] {
        assert_eq!(s.attr("outrigger.request_id"), Some(request_id.as_str()));
    }
}
