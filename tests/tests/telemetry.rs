//! Logs and metrics as contracts: bounded logs in an outage, sampling, and metrics a real
//! Prometheus tool accepts.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;

fn with_logs(yaml: &str, logs: &str) -> String {
    format!("{yaml}telemetry:\n  logs: {{{logs}}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_produces_a_bounded_log_with_the_suppressed_count() {
    let proxy = Outrigger::start(&with_logs(
        &config(&[refused_addr()], DEFAULT_ROUTE),
        "rate_limit: {per_second: 10, burst: 20}",
    ));
    let started = Instant::now();
    let client = http1_client();
    for _ in 0..100 {
        let batch = (0..50).map(|_| {
            send(
                &client,
                http::Request::get(proxy.url("/pay")).body(Default::default()).unwrap(),
            )
        });
        assert!(join_all(batch).await.iter().all(|r| r.status == 503));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = proxy.wait_for_log(|l| l["kind"] == "suppressed").await;
    assert_eq!(summary["of_kind"], "access");
    // The breaker opens early in the outage, so most lines are circuit_open.
    let key = summary["key"].as_str().unwrap();
    assert!(
        [
            "upstream_connect_failed on route default",
            "circuit_open on route default"
        ]
        .contains(&key),
        "{key}"
    );
    assert!(summary["msg"].as_str().unwrap().starts_with("Suppressed "), "{summary}");
    // Wait for the last summary to cover every request, then count.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let logs = proxy.logs();
        let written = logs.iter().filter(|l| l["kind"] == "access").count() as u64;
        let suppressed: u64 = logs
            .iter()
            .filter(|l| l["kind"] == "suppressed")
            .map(|l| l["suppressed"].as_u64().unwrap())
            .sum();
        if written + suppressed == 5000 {
            let bound = 20.0 + 10.0 * (elapsed + 2.0);
            assert!(
                (written as f64) <= bound,
                "{written} access lines for 5000 failures in {elapsed:.1}s (bound {bound:.0})"
            );
            assert_eq!(
                proxy
                    .metric("outrigger_log_lines_suppressed_total", &["kind=\"access\""])
                    .await as u64,
                suppressed
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "written {written} + suppressed {suppressed} != 5000"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        proxy
            .metric(
                "http_server_request_duration_seconds_count",
                &["http_route=\"default\""]
            )
            .await,
        5000.0,
        "metrics count everything"
    );
}

#[tokio::test]
async fn successes_can_be_sampled_but_failures_are_always_logged() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&with_logs(
        &config(&[up.addr()], DEFAULT_ROUTE),
        "access_sample_ratio: 0",
    ));
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/")).await.status, 200);
    }
    let failed = get(&proxy.url("/status/404")).await;
    up.set_mode(Mode::Status(503));
    let upstream_failure = get(&proxy.url("/")).await;
    assert_eq!(upstream_failure.status, 503);
    let line = proxy.access_log(upstream_failure.header("x-request-id")).await;
    assert_eq!(line["status"], 503);
    let logs = proxy.logs();
    assert!(
        !logs.iter().any(|l| l["request_id"] == failed.header("x-request-id")),
        "a 404 from the app is a success for the proxy: sampled away"
    );
    assert_eq!(logs.iter().filter(|l| l["kind"] == "access").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_after_every_kind_of_traffic() {
    let Some(promtool) = which("promtool") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install promtool (.ci/run installs the prometheus package)"
        );
        eprintln!("promtool not installed; skipping (CI installs it)");
        return;
    };
    let up = Upstream::start(Mode::Ok).await;
    let yaml = config(
        &[up.addr()],
        "  - {name: default, match: {path_prefix: /}, upstream: app, retry: {attempts: 2, on: [unavailable]}}\n",
    );
    let yaml = with_upstream_setting(&yaml, "circuit_breaker: {consecutive_failures: 3}");
    let proxy = Outrigger::start(&with_inbound_limits(&yaml, "max_in_flight: 5"));
    get(&proxy.url("/")).await;
    get(&proxy.url("/status/404")).await;
    up.set_mode(Mode::Status(503));
    for _ in 0..4 {
        get(&proxy.url("/")).await;
    }
    up.set_mode(Mode::Delay(Duration::from_millis(200)));
    let slow_url = proxy.url("/slow");
    join_all((0..20).map(|_| get(&slow_url))).await;
    let (_, text) = proxy.admin_get("/metrics").await;
    for family in [
        "outrigger_retries_total",
        "outrigger_circuit_breaker_transitions_total",
        "http_client_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    let file = temp_file("metrics.txt", &text);
    let out = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_much_slower_than_its_baseline_is_reported_and_its_recovery_too() {
    let up = Upstream::start(Mode::Delay(Duration::from_millis(20))).await;
    let yaml = format!(
        "{}telemetry:\n  latency_inflation: {{baseline: 60s, recent: 200ms, alert_ratio: 2}}\n",
        config(&[up.addr()], DEFAULT_ROUTE)
    );
    let proxy = Outrigger::start(&yaml);
    let client = http1_client();
    let get = || {
        send(
            &client,
            http::Request::get(proxy.url("/")).body(Default::default()).unwrap(),
        )
    };

    // A baseline of 20 ms: warmed up once thirty 20 ms buckets have seen traffic.
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert_eq!(get().await.status, 200);
        let ratio = proxy
            .metric("outrigger_upstream_latency_inflation_ratio", &["upstream=\"app\""])
            .await;
        if ratio > 0.0 {
            assert!(ratio < 1.6, "steady traffic reads about 1: {ratio}");
            break;
        }
        assert!(Instant::now() < deadline, "the baseline never warmed up");
    }

    // Six times slower: one warning that says how much, against what.
    up.set_mode(Mode::Delay(Duration::from_millis(120)));
    let warned = loop {
        assert_eq!(get().await.status, 200);
        if let Some(l) = proxy
            .logs()
            .into_iter()
            .find(|l| l["kind"] == "latency" && l["level"] == "warn")
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no inflation warning");
    };
    let msg = warned["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("'app' is ") && msg.contains("x slower than its 1m baseline (recent average "),
        "{warned}"
    );
    assert!(warned["ratio"].as_f64().unwrap() >= 2.0, "{warned}");
    assert!(warned["baseline_ms"].as_f64().unwrap() < 60.0, "{warned}");
    assert!(
        proxy
            .metric("outrigger_upstream_latency_inflation_ratio", &["upstream=\"app\""])
            .await
            >= 2.0
    );

    // Fast again: the recovery is logged once.
    up.set_mode(Mode::Delay(Duration::from_millis(20)));
    loop {
        assert_eq!(get().await.status, 200);
        if proxy
            .logs()
            .iter()
            .any(|l| l["kind"] == "latency" && l["level"] == "info")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery line");
    }
    let warnings = proxy
        .logs()
        .iter()
        .filter(|l| l["kind"] == "latency" && l["level"] == "warn")
        .count();
    assert_eq!(warnings, 1, "one warning per episode");
}

async fn admin_put(proxy: &Outrigger, path_and_query: &str) -> (u16, String) {
    let resp = raw_request(
        proxy.admin,
        format!("PUT {path_and_query} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let status = resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn the_log_level_changes_at_run_time_through_the_admin_port_and_can_revert_itself() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let debug_lines = |p: &Outrigger| {
        p.logs()
            .iter()
            .filter(|l| l["level"] == "debug" && l["msg"] == "client connection ended with an error")
            .count()
    };
    assert_eq!(
        proxy.admin_get("/debug/log_level").await,
        (200, "{\"level\":\"info\"}\n".to_owned())
    );

    // At info, a broken client connection is not worth a line.
    raw_request(proxy.inbound(), b"NOT HTTP\r\n\r\n").await;
    // A full request and its access line later, that connection's task has long finished.
    let reply = get(&proxy.url("/")).await;
    proxy.access_log(reply.header("x-request-id")).await;
    let (status, body) = admin_put(&proxy, "/debug/log_level?level=debug").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "{\"level\":\"debug\",\"previous\":\"info\"}\n");
    let changed = proxy.wait_for_log(|l| l["kind"] == "admin").await;
    assert_eq!(
        changed["msg"],
        "Log level changed from info to debug by 127.0.0.1 through the admin port."
    );
    assert_eq!(changed["level"], "warn", "a level change is always visible");
    // At debug it is.
    raw_request(proxy.inbound(), b"NOT HTTP\r\n\r\n").await;
    proxy
        .wait_for_log(|l| l["level"] == "debug" && l["msg"] == "client connection ended with an error")
        .await;
    assert_eq!(debug_lines(&proxy), 1, "only the connection broken after the change");

    // A timed change puts the previous level back by itself.
    let (status, body) = admin_put(&proxy, "/debug/log_level?level=error&for=300ms").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"reverts_after_s\":0.3"), "{body}");
    let back = proxy
        .wait_for_log(|l| l["kind"] == "admin" && l["to"] == "debug" && l["msg"].as_str().unwrap().contains("back"))
        .await;
    assert_eq!(back["msg"], "Log level is back to debug after 300ms.");
    assert_eq!(proxy.admin_get("/debug/log_level").await.1, "{\"level\":\"debug\"}\n");

    // Mistakes get a specific answer and change nothing.
    let (status, body) = admin_put(&proxy, "/debug/log_level?level=verbose").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "unknown log level `verbose`: use one of trace, debug, info, warn, error\n"
    );
    let (status, body) = admin_put(&proxy, "/debug/log_level?level=info&for=soon").await;
    assert_eq!(
        (status, body.as_str()),
        (400, "invalid `for`: write a duration such as 30s or 10m\n")
    );
    assert_eq!(admin_put(&proxy, "/debug/log_level").await.0, 400);
    assert_eq!(proxy.admin_get("/debug/log_level").await.1, "{\"level\":\"debug\"}\n");
}
