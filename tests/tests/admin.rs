//! The admin port's guarded endpoints: `POST /shutdown` drains and exits 0; `/debug/*` and
//! `/shutdown` answer only the sources in `admin.debug_from` (default: loopback), others get
//! 403 `forbidden` as problem+json.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::SocketAddr;

use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request to `addr` from the local address `from` (any of 127.0.0.0/8): (status, body).
async fn request_from(from: [u8; 4], addr: SocketAddr, head: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

const GET_LEVEL: &str = "GET /debug/log_level HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";

/// `POST /shutdown` from loopback: 202 `{"status":"draining"}`, readiness off, exit 0.
/// `GET /shutdown` is 405.
#[tokio::test]
async fn post_shutdown_drains_and_exits_0() {
    let up = Upstream::start(Mode::Ok).await;
    let mut proxy =
        Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE).replace("drain: {delay: 0s", "drain: {delay: 1s"));
    let (status, _) = proxy.admin_get("/shutdown").await;
    assert_eq!(status, 405);
    let reply = raw_request(
        proxy.admin,
        b"POST /shutdown HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    let body: Value = serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1.trim()).unwrap();
    assert_eq!(body["status"], "draining");
    // Serving goes on through the drain delay, with readiness off.
    let (ready, _) = proxy.admin_get("/readyz").await;
    assert_eq!(ready, 503);
    assert_eq!(get(&proxy.url("/")).await.status, 200);
    assert_eq!(proxy.wait_exit(), 0);
}

/// `admin.debug_from` decides who may use `/debug/*` and `/shutdown`: a listed source is
/// answered, loopback itself is refused once the list leaves it out (403 `forbidden`,
/// problem+json naming the address), and `/metrics` stays open to all.
#[tokio::test]
async fn debug_endpoints_answer_only_debug_from() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = config(&[up.addr()], DEFAULT_ROUTE).replace(
        "admin: {address: 127.0.0.1:0}",
        "admin: {address: 127.0.0.1:0, debug_from: [127.0.0.2/32]}",
    );
    let proxy = Outrigger::start(&yaml);
    let (status, body) = request_from([127, 0, 0, 2], proxy.admin, GET_LEVEL).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = request_from([127, 0, 0, 1], proxy.admin, GET_LEVEL).await;
    assert_eq!(status, 403, "{body}");
    let problem: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(problem["code"], "forbidden");
    assert!(problem["detail"].as_str().unwrap().contains("127.0.0.1"), "{problem}");
    let (status, _) = request_from(
        [127, 0, 0, 1],
        proxy.admin,
        "POST /shutdown HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403, "a refused shutdown does not drain");
    let (status, body) = request_from(
        [127, 0, 0, 1],
        proxy.admin,
        "GET /debug/explain HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status, 403,
        "/debug/explain is guarded like the other debug endpoints: {body}"
    );
    let (status, _) = request_from(
        [127, 0, 0, 2],
        proxy.admin,
        "GET /debug/explain HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = proxy.admin_get("/readyz").await;
    assert_eq!(status, 200);
    let (status, _) = request_from(
        [127, 0, 0, 1],
        proxy.admin,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    // The default: loopback only.
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let (status, _) = request_from([127, 0, 0, 2], proxy.admin, GET_LEVEL).await;
    assert_eq!(status, 200, "127.0.0.0/8 is loopback");
}

/// `/debug/upstreams` shows the live breaker with why and since when, and each endpoint's
/// health, in-flight requests and latency estimate; `/debug/routes` the routes in match
/// order; `?format=text` the same for a person.
#[tokio::test]
async fn debug_views_show_the_live_breaker_endpoints_and_routes() {
    let up = Upstream::start(Mode::Ok).await;
    let nowhere = outrigger_testkit::refused_addr();
    let yaml = config(&[up.addr()], DEFAULT_ROUTE).replace(
        "upstreams:\n",
        &format!(
            "upstreams:\n  down:\n    endpoints: [{nowhere}]\n    circuit_breaker: {{consecutive_failures: 2, open_for: 30s}}\n"
        ),
    )
    .replace(
        "routes:\n",
        "routes:\n  - {name: broken, match: {path_prefix: /broken}, upstream: down, timeout: 2s}\n",
    );
    let proxy = Outrigger::start(&yaml);
    for _ in 0..2 {
        assert_eq!(get(&proxy.url("/broken")).await.status, 503);
    }
    assert_eq!(get(&proxy.url("/fine")).await.status, 200);

    let (status, body) = proxy.admin_get("/debug/upstreams").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(body.trim()).unwrap();
    let down = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "down")
        .unwrap();
    assert_eq!(down["breaker"]["state"], "open", "{down}");
    assert!(
        down["breaker"]["why"]
            .as_str()
            .unwrap()
            .contains("2 consecutive failures"),
        "{down}"
    );
    assert!(down["breaker"]["since"].as_str().unwrap().ends_with('Z'), "{down}");
    assert!(down["breaker"]["half_open_at"].is_string(), "{down}");
    assert_eq!(down["endpoints"][0]["address"], nowhere.to_string());
    let app = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "app")
        .unwrap();
    assert_eq!(app["breaker"]["state"], "closed");
    let ep = &app["endpoints"][0];
    assert_eq!(ep["healthy"], true);
    assert_eq!(ep["in_flight"], 0);
    assert!(ep["ewma_ms"].as_f64().unwrap() > 0.0, "{ep}");

    let (status, text) = proxy.admin_get("/debug/upstreams?format=text").await;
    assert_eq!(status, 200);
    assert!(text.contains("name: down") && text.contains("state: open"), "{text}");

    let (status, body) = proxy.admin_get("/debug/routes").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(body.trim()).unwrap();
    let names: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "default"], "match order");
    assert_eq!(v["routes"][0]["match"]["path_prefix"], "/broken");
    assert_eq!(v["routes"][0]["upstream"], "down");
    assert!(
        v["routes"][0]["retry_budget_left"].is_null(),
        "no retry policy, no budget"
    );
}

/// `/debug/config` is the config in effect with every default filled in; key files appear
/// as paths only, never their contents, and a collector URL's password is left out.
#[tokio::test]
async fn debug_config_shows_the_effective_config_without_secrets() {
    let up = Upstream::start(Mode::Ok).await;
    let pki = outrigger_testkit::tls::Pki::new("debug-config");
    let cert = pki.issue("proxy", &["localhost"]);
    let yaml = config(&[up.addr()], DEFAULT_ROUTE).replace(
        "{name: inbound, address: 127.0.0.1:0}",
        &format!(
            "{{name: inbound, address: 127.0.0.1:0, tls: {{cert: {}, key: {}}}}}",
            cert.cert.display(),
            cert.key.display()
        ),
    ) + "telemetry:\n  tracing:\n    otlp_endpoint: http://collector:s3cret@127.0.0.1:9/\n";
    let proxy = Outrigger::start(&yaml);
    let (status, body) = proxy.admin_get("/debug/config").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["listeners"][0]["tls"]["key"], cert.key.display().to_string());
    assert_eq!(v["upstreams"][0]["connect_timeout"], "2s");
    assert_eq!(
        v["upstreams"][0]["circuit_breaker"]["consecutive_failures"], 5,
        "defaults filled in"
    );
    assert_eq!(v["routes"][0]["name"], "default");
    assert_eq!(v["telemetry"]["tracing"]["otlp_endpoint"], "http://127.0.0.1:9/");
    let key_pem = std::fs::read_to_string(&cert.key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!body.contains(key_body) && !body.contains("s3cret"), "{body}");
    let (_, text) = proxy.admin_get("/debug/config?format=text").await;
    assert!(text.contains("connect_timeout: 2s"), "{text}");
}
