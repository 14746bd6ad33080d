//! Stale-if-error provoked for real: a route keeps its upstream's last good answers and
//! serves them, marked `outrigger-fallback: stale` with their `Age`, when the upstream
//! answers 5xx or stops accepting connections; never what the upstream or the client said
//! must not be kept, never across `Vary` or credentials, and never beyond its memory.

use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;

fn yaml(upstream: std::net::SocketAddr, stale: &str) -> String {
    format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:0}}\nadmin: {{address: 127.0.0.1:0}}\ndrain: {{delay: 0s, timeout: 5s}}\n\
         upstreams:\n  app:\n    endpoints: [{upstream}]\n    connect_timeout: 2s\n    circuit_breaker: {{consecutive_failures: 100, min_requests: 1000}}\n\
         routes:\n  - name: api\n    match: {{path_prefix: /}}\n    upstream: app\n    timeout: 5s\n    stale_if_error: {stale}\n"
    )
}

async fn get(proxy: &Outrigger, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = http::Request::get(proxy.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        &http1_client(),
        b.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap(),
    )
    .await
}

#[tokio::test]
async fn kept_answers_stand_in_for_a_failing_upstream_within_every_rule() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&yaml(up.addr(), "{max_age: 5m, max_bytes: 1MiB}"));
    let lang_en = [("accept-language", "en")];
    let auth = [("authorization", "Bearer alice")];
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("/cacheable/a?h=cache-control:max-age=60", &[]),
        ("/cacheable/nostore?h=cache-control:no-store", &[]),
        ("/cacheable/private?h=cache-control:private,%20max-age=60", &[]),
        ("/cacheable/vary?h=vary:accept-language", &lang_en),
        ("/cacheable/auth", &auth),
        ("/cacheable/cookie?h=set-cookie:session=1", &[]),
    ];
    let mut fresh = Vec::new();
    for (path, headers) in cases {
        let r = get(&proxy, path, headers).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert!(String::from_utf8_lossy(&r.body).contains("answer#"), "{:?}", r.body);
        fresh.push(r.body);
    }

    // The upstream answers 503: the kept answer is served instead, as it was.
    up.set_mode(Mode::Status(503));
    let r = get(&proxy, cases[0].0, &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, fresh[0]);
    assert_eq!(r.header("outrigger-fallback"), "stale");
    assert!(r.header("age").parse::<u64>().unwrap() < 60, "{}", r.header("age"));
    assert_eq!(r.header("cache-control"), "max-age=60");
    let line = proxy.access_log(r.header("x-request-id")).await;
    assert_eq!(line["fallback"], "stale", "{line}");
    assert_eq!(line["code"], "upstream_error", "{line}");
    assert!(line["stale_age_s"].as_u64().is_some(), "{line}");
    assert!(
        line["msg"].as_str().unwrap().contains("from its last good response"),
        "{line}"
    );

    // The upstream is gone (connections refused): still served, for a while.
    let gone = up.addr();
    drop(up);
    let r = get(&proxy, cases[0].0, &[]).await;
    assert_eq!(
        (r.status, r.header("outrigger-fallback")),
        (200, "stale"),
        "{:?}",
        r.body
    );
    assert_eq!(r.body, fresh[0]);
    let line = proxy.access_log(r.header("x-request-id")).await;
    assert_eq!(line["code"], "upstream_connect_failed", "{line}");
    assert_eq!(line["attempts"][0]["endpoint"], gone.to_string(), "{line}");
    assert_eq!(
        proxy.metric("outrigger_stale_served_total", &["route=\"api\""]).await,
        2.0
    );

    // `Vary`: only a request whose varying headers are the same gets the kept answer.
    let r = get(&proxy, cases[3].0, &lang_en).await;
    assert_eq!((r.status, r.header("outrigger-fallback")), (200, "stale"));
    assert_eq!(r.body, fresh[3]);
    for other in [&[("accept-language", "de")][..], &[]] {
        let r = get(&proxy, cases[3].0, other).await;
        assert_eq!(r.status, 503, "{other:?}: {:?}", r.body);
        assert_eq!(r.json()["code"], "upstream_connect_failed");
    }

    // Never kept: no-store, private, Set-Cookie, a request with credentials; nor is a kept
    // answer served to another URL.
    for (i, path) in [
        (1, cases[1].0),
        (2, cases[2].0),
        (5, cases[5].0),
        (0, "/cacheable/a?other"),
    ] {
        let r = get(&proxy, path, &[]).await;
        assert_eq!(r.status, 503, "{path} (case {i}): {:?}", r.body);
        assert_eq!(r.json()["code"], "upstream_connect_failed");
        assert!(r.headers.get("outrigger-fallback").is_none());
    }
    let r = get(&proxy, cases[4].0, &auth).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(
        proxy.metric("outrigger_stale_served_total", &["route=\"api\""]).await,
        3.0
    );
}

#[tokio::test]
async fn the_memory_bound_holds_under_many_distinct_urls() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&yaml(up.addr(), "{max_age: 5m, max_bytes: 64KiB}"));
    let client = http1_client();
    for i in 0..600 {
        let r = send(
            &client,
            http::Request::get(proxy.url(&format!("/cacheable/item/{i}?h=cache-control:max-age=60")))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // An answer larger than an eighth of the store is never kept.
    assert_eq!(get(&proxy, "/bytes/20000", &[]).await.status, 200);
    let held = proxy.metric("outrigger_stale_bytes", &["route=\"api\""]).await;
    assert!(held > 32.0 * 1024.0 && held <= 64.0 * 1024.0, "held {held} bytes");
    let (_, routes) = proxy.admin_get("/debug/routes").await;
    let view: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let held_view = &view["routes"][0]["stale_if_error"];
    assert!(held_view["bytes"].as_f64().unwrap() <= 64.0 * 1024.0, "{held_view}");
    assert!(held_view["entries"].as_u64().unwrap() > 50, "{held_view}");
    let rss_before = proxy.memory_kib("VmRSS");
    up.set_mode(Mode::Status(503));
    // The newest answers are kept, the oldest made room for them.
    let newest = get(&proxy, "/cacheable/item/599?h=cache-control:max-age=60", &[]).await;
    assert_eq!((newest.status, newest.header("outrigger-fallback")), (200, "stale"));
    let oldest = get(&proxy, "/cacheable/item/0?h=cache-control:max-age=60", &[]).await;
    assert_eq!(oldest.status, 503);
    assert_eq!(get(&proxy, "/bytes/20000", &[]).await.status, 503);
    assert!(proxy.memory_kib("VmRSS") < rss_before + 8 * 1024);
}
