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
