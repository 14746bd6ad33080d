//! The proxy inside the test process, configured in code, with tokio's paused time where
//! timing is the subject: a 20-second timeout is tested without waiting 20 seconds.

use std::time::Duration;

use outrigger_config::builder::ConfigBuilder;
use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;
use serde_json::json;

/// A route timeout of 20 s against an upstream that never answers: 504 `upstream_timeout`
/// after exactly the route's time on the paused clock, counted in the metrics.
#[tokio::test(start_paused = true)]
async fn a_long_route_timeout_is_tested_on_paused_time() {
    let up = Upstream::start(Mode::Hang).await;
    let config = ConfigBuilder::new()
        .upstream("app", &[up.addr()])
        .route("default", "/", "app")
        .route_timeout("default", Duration::from_secs(20))
        .build()
        .unwrap();
    let proxy = InProcess::start(config).await;
    let started = tokio::time::Instant::now();
    let reply = get(&proxy.url("/slow")).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["code"], "upstream_timeout");
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
        "the timeout fired at {waited:?} on the paused clock"
    );
    assert_eq!(
        proxy.metric(
            "http_server_request_duration_seconds_count",
            &["error_type=\"upstream_timeout\"", "http_route=\"default\""]
        ),
        1.0
    );
}

/// The retry loop end to end, in process: an upstream's 503 is retried (the policy lists
/// `unavailable`), the caller gets the second answer, and the retry is counted with its
/// reason.
#[tokio::test]
async fn an_unavailable_answer_is_retried_and_counted() {
    let up = Upstream::start(Mode::Ok).await;
    up.fail_next(1, Mode::Status(503));
    let config = ConfigBuilder::new()
        .upstream("app", &[up.addr()])
        .route("default", "/", "app")
        .route_set(
            "default",
            "retry",
            json!({"attempts": 2, "on": ["unavailable"], "backoff": {"base": "1ms", "max": "2ms"}}),
        )
        .build()
        .unwrap();
    let proxy = InProcess::start(config).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 200, "the retry's answer");
    assert_eq!(up.requests(), 2);
    assert_eq!(
        proxy.metric(
            "outrigger_retries_total",
            &["route=\"default\"", "reason=\"unavailable\""]
        ),
        1.0
    );
}

/// The attempt timer: a first try that hangs is cut off at `per_try_timeout` (2 s on the
/// paused clock, not the route's 30 s), retried as a `timeout`, and the second try answers.
#[tokio::test(start_paused = true)]
async fn a_hanging_try_is_cut_at_per_try_timeout_and_retried() {
    let up = Upstream::start(Mode::Ok).await;
    up.fail_next(1, Mode::Hang);
    let proxy = with_retry(
        &up,
        Duration::from_secs(30),
        json!({"attempts": 2, "per_try_timeout": "2s", "on": ["timeout"],
                   "backoff": {"base": "1ms", "max": "1ms"}}),
    )
    .await;
    let started = tokio::time::Instant::now();
    let reply = get(&proxy.url("/")).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 200, "the second try's answer");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "the first try was cut at {waited:?} on the paused clock"
    );
    assert_eq!(
        proxy.metric("outrigger_retries_total", &["route=\"default\"", "reason=\"timeout\""]),
        1.0
    );
}

/// An upstream's `Retry-After` is the wait before the retry (5 s on the paused clock, not the
/// 1 ms backoff); its 429 counts as `status` when the route lists 429.
#[tokio::test(start_paused = true)]
async fn a_retry_waits_what_retry_after_asks() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = with_retry(
        &up,
        Duration::from_secs(30),
        json!({"attempts": 2, "on": [], "retriable_status": [429],
                   "backoff": {"base": "1ms", "max": "1ms"}}),
    )
    .await;
    let started = tokio::time::Instant::now();
    let reply = get(&proxy.url("/retry-after/5")).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 429, "both tries were told to wait");
    assert_eq!(up.requests(), 2);
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "the retry came after {waited:?} on the paused clock"
    );
    assert_eq!(
        proxy.metric("outrigger_retries_total", &["route=\"default\"", "reason=\"status\""]),
        1.0
    );
}

/// A `Retry-After` longer than the time left is not waited out: the answer goes back at once
/// rather than a retry the deadline would cut.
#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_deadline_is_not_waited_for() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = with_retry(
        &up,
        Duration::from_secs(3),
        json!({"attempts": 3, "on": [], "retriable_status": [429]}),
    )
    .await;
    let started = tokio::time::Instant::now();
    let reply = get(&proxy.url("/retry-after/10")).await;
    assert_eq!(reply.status, 429);
    assert_eq!(up.requests(), 1, "no retry was made");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

/// The keep-alive race: the upstream resets a reused connection as the second request
/// arrives; the request is sent again once on a fresh connection, outside the retry policy
/// (the route has none).
#[tokio::test]
async fn the_keepalive_race_is_retried_once_on_a_fresh_connection() {
    let up = Upstream::start(Mode::ResetReused).await;
    let config = ConfigBuilder::new()
        .upstream("app", &[up.addr()])
        .route("default", "/", "app")
        .build()
        .unwrap();
    let proxy = InProcess::start(config).await;
    assert_eq!(get(&proxy.url("/")).await.status, 200);
    assert_eq!(get(&proxy.url("/")).await.status, 200, "the race was hidden");
    assert_eq!(up.connections(), 2, "the retry took a fresh connection");
    assert_eq!(
        proxy.metric(
            "outrigger_retries_total",
            &["route=\"default\"", "reason=\"keepalive_race\""]
        ),
        1.0
    );
}

/// The proxy in process, one route to `up` with this timeout and retry policy.
async fn with_retry(up: &Upstream, timeout: Duration, retry: serde_json::Value) -> InProcess {
    let config = ConfigBuilder::new()
        .upstream("app", &[up.addr()])
        .route("default", "/", "app")
        .route_timeout("default", timeout)
        .route_set("default", "retry", retry)
        .build()
        .unwrap();
    InProcess::start(config).await
}

/// A built config gets the same validation as a file: a dangling upstream is refused with
/// the same message.
#[test]
fn a_built_config_is_validated_like_a_file() {
    let err = ConfigBuilder::new()
        .route("default", "/", "nowhere")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream `nowhere` is not defined"), "{err}");
}

/// Two identical endpoints behind one upstream both get sequential traffic end to end (a
/// balancer that never tried the second gave it none). The even split is the unit test's,
/// on controlled latencies (`policy::balance`): here, on a loaded machine, one scheduling
/// hiccup of a few milliseconds makes an endpoint look slower for a while, as it should.
#[tokio::test]
async fn two_equal_endpoints_both_get_sequential_traffic() {
    let (a, b) = (Upstream::start(Mode::Ok).await, Upstream::start(Mode::Ok).await);
    let config = ConfigBuilder::new()
        .upstream("app", &[a.addr(), b.addr()])
        .route("default", "/", "app")
        .build()
        .unwrap();
    let proxy = InProcess::start(config).await;
    let client = http1_client();
    for _ in 0..400 {
        let req = http::Request::get(proxy.url("/")).body(Default::default()).unwrap();
        assert_eq!(send(&client, req).await.status, 200);
    }
    for (name, up) in [("a", &a), ("b", &b)] {
        assert!(
            up.requests() >= 8,
            "{name} got {} of 400 (a {}, b {})",
            up.requests(),
            a.requests(),
            b.requests()
        );
    }
}
