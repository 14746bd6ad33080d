//! Every metric, asserted where it should move and where it must not, under each kind of
//! traffic in turn: success, client error, upstream failure, retry, breaker open, shed load.
//! Each step compares two scrapes of `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;

/// One scrape: every sample line, keyed by its series (name and labels as written).
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn take(proxy: &Outrigger) -> Scrape {
        let (_, text) = proxy.admin_get("/metrics").await;
        Scrape(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The sum over series named `name` carrying every `labels` pair.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| {
                s.split_once('{').map_or(s.as_str(), |(n, _)| n) == name && labels.iter().all(|l| s.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// How much `name{labels}` moved between two scrapes.
fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[&str]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

const SERVER: &str = "http_server_request_duration_seconds_count";
const CLIENT: &str = "http_client_request_duration_seconds_count";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_metric_moves_under_its_kind_of_traffic_and_no_other() {
    let app = Upstream::start(Mode::Ok).await;
    let slow = Upstream::start(Mode::Delay(Duration::from_millis(300))).await;
    let yaml = format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:0, limits: {{max_in_flight: 4}}}}\n\
         admin: {{address: 127.0.0.1:0}}\n\
         drain: {{delay: 0s, timeout: 5s}}\n\
         upstreams:\n\
         \x20 app: {{endpoints: [{app}]}}\n\
         \x20 down:\n    endpoints: [{down}]\n    circuit_breaker: {{consecutive_failures: 3, open_for: 60s}}\n\
         \x20 slow: {{endpoints: [{slow}]}}\n\
         routes:\n\
         \x20 - {{name: api, match: {{path_prefix: /api}}, upstream: app, timeout: 2s, retry: {{attempts: 2, on: [unavailable]}}}}\n\
         \x20 - {{name: pay, match: {{path_prefix: /pay}}, upstream: down, timeout: 2s}}\n\
         \x20 - {{name: slow, match: {{path_prefix: /slow}}, upstream: slow, timeout: 5s}}\n",
        app = app.addr(),
        down = refused_addr(),
        slow = slow.addr(),
    );
    let proxy = Outrigger::start(&yaml);

    // --- success ---
    let s0 = Scrape::take(&proxy).await;
    assert_eq!(get(&proxy.url("/api/orders")).await.status, 200);
    let s1 = Scrape::take(&proxy).await;
    let ok = [
        "http_route=\"api\"",
        "http_request_method=\"GET\"",
        "http_response_status_code=\"200\"",
        "error_type=\"\"",
    ];
    assert_eq!(moved(&s0, &s1, SERVER, &ok), 1.0);
    assert_eq!(moved(&s0, &s1, SERVER, &[]), 1.0, "nothing else was counted");
    assert_eq!(
        moved(
            &s0,
            &s1,
            CLIENT,
            &["upstream=\"app\"", "http_response_status_code=\"200\""]
        ),
        1.0
    );
    assert_eq!(
        moved(&s0, &s1, "outrigger_proxy_overhead_seconds_count", &["route=\"api\""]),
        1.0
    );
    assert_eq!(
        s1.sum("outrigger_requests_in_flight", &["route=\"api\""]),
        0.0,
        "back to zero"
    );
    for quiet in [
        "outrigger_retries_total",
        "outrigger_retry_budget_exhausted_total",
        "outrigger_circuit_breaker_transitions_total",
        "outrigger_fallbacks_total",
        "outrigger_internal_errors_total",
        "outrigger_log_lines_suppressed_total",
    ] {
        assert_eq!(moved(&s0, &s1, quiet, &[]), 0.0, "{quiet} moved on a success");
    }

    // --- client error: no route ---
    assert_eq!(get(&proxy.url("/nowhere")).await.status, 404);
    let s2 = Scrape::take(&proxy).await;
    assert_eq!(
        moved(
            &s1,
            &s2,
            SERVER,
            &[
                "http_route=\"\"",
                "http_response_status_code=\"404\"",
                "error_type=\"route_not_found\"",
                "error_class=\"client\""
            ]
        ),
        1.0
    );
    assert_eq!(moved(&s1, &s2, CLIENT, &[]), 0.0, "no upstream was called");

    // --- upstream failure: refused ---
    assert_eq!(get(&proxy.url("/pay")).await.status, 503);
    let s3 = Scrape::take(&proxy).await;
    assert_eq!(
        moved(
            &s2,
            &s3,
            SERVER,
            &[
                "http_route=\"pay\"",
                "http_response_status_code=\"503\"",
                "error_type=\"upstream_connect_failed\"",
                "error_class=\"upstream\""
            ]
        ),
        1.0
    );
    assert_eq!(
        moved(
            &s2,
            &s3,
            CLIENT,
            &["upstream=\"down\"", "error_type=\"upstream_connect_failed\""]
        ),
        1.0
    );
    assert_eq!(s3.sum("outrigger_circuit_breaker_state", &["upstream=\"down\""]), 0.0);

    // --- retry: one 503, then success ---
    app.fail_next(1, Mode::Status(503));
    assert_eq!(get(&proxy.url("/api/orders")).await.status, 200);
    let s4 = Scrape::take(&proxy).await;
    assert_eq!(
        moved(
            &s3,
            &s4,
            "outrigger_retries_total",
            &["route=\"api\"", "reason=\"unavailable\""]
        ),
        1.0
    );
    assert_eq!(moved(&s3, &s4, "outrigger_retries_total", &[]), 1.0);
    assert_eq!(
        moved(
            &s3,
            &s4,
            CLIENT,
            &["upstream=\"app\"", "http_response_status_code=\"503\""]
        ),
        1.0
    );
    assert_eq!(
        moved(
            &s3,
            &s4,
            CLIENT,
            &["upstream=\"app\"", "http_response_status_code=\"200\""]
        ),
        1.0
    );
    assert_eq!(moved(&s3, &s4, SERVER, &ok), 1.0, "one request, two attempts");

    // --- breaker open: two more failures trip it, then requests fail fast ---
    for _ in 0..2 {
        assert_eq!(get(&proxy.url("/pay")).await.status, 503);
    }
    let s5 = Scrape::take(&proxy).await;
    assert_eq!(s5.sum("outrigger_circuit_breaker_state", &["upstream=\"down\""]), 1.0);
    assert_eq!(
        moved(
            &s4,
            &s5,
            "outrigger_circuit_breaker_transitions_total",
            &["upstream=\"down\"", "from=\"closed\"", "to=\"open\""]
        ),
        1.0
    );
    let open = get(&proxy.url("/pay")).await;
    assert_eq!(open.header("outrigger-error"), "circuit_open");
    let s6 = Scrape::take(&proxy).await;
    assert_eq!(
        moved(&s5, &s6, SERVER, &["http_route=\"pay\"", "error_type=\"circuit_open\""]),
        1.0
    );
    assert_eq!(moved(&s5, &s6, CLIENT, &[]), 0.0, "an open breaker calls no one");
    assert_eq!(s6.sum("outrigger_circuit_breaker_state", &["upstream=\"app\""]), 0.0);

    // --- shed load: 12 slow requests on a listener that takes 4 at a time ---
    let url = proxy.url("/slow");
    let statuses: Vec<u16> = join_all((0..12).map(|_| get(&url)))
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    let shed = statuses.iter().filter(|s| **s == 503).count() as f64;
    assert!(shed >= 1.0, "{statuses:?}");
    let s7 = Scrape::take(&proxy).await;
    assert_eq!(
        moved(
            &s6,
            &s7,
            SERVER,
            &[
                "http_route=\"\"",
                "error_type=\"overloaded\"",
                "error_class=\"proxy\"",
                "http_response_status_code=\"503\""
            ]
        ),
        shed
    );
    assert_eq!(
        moved(&s6, &s7, CLIENT, &["upstream=\"slow\""]),
        12.0 - shed,
        "shed requests never reach the upstream"
    );
    assert_eq!(s7.sum("outrigger_requests_in_flight", &[]), 0.0, "all finished");
}
