//! A real Prometheus (Debian's `prometheus`) scrapes a running outrigger in front of a failing
//! upstream and evaluates deploy/prometheus/outrigger-rules.yaml: the alerts that should go
//! pending do, by their names and labels, so the rules use the metric names the binary
//! exports. Skipped (with a message) where `prometheus` is not installed, unless
//! `OUTRIGGER_REQUIRE_PROMETHEUS=1` (CI sets it) makes that a failure.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use outrigger_testkit::refused_addr;
use outrigger_tests::*;

struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn api(base: &str, path: &str) -> Option<Value> {
    let client = http1_client();
    let req = http::Request::get(format!("{base}{path}"))
        .body(Default::default())
        .unwrap();
    let resp = client.request(req).await.ok()?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice(&body).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_raises_the_expected_alerts() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_PROMETHEUS").is_none(),
            "prometheus is not installed (Debian package `prometheus`)"
        );
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
        return;
    }
    // `checkout` is critical and its upstream refuses connections; its breaker opens.
    let yaml = config(
        &[refused_addr()],
        "  - {name: checkout, match: {path_prefix: /}, upstream: app, timeout: 2s, critical: true}\n",
    )
    .replace(
        "    connect_timeout: 2s",
        "    connect_timeout: 2s\n    circuit_breaker: {consecutive_failures: 5, open_for: 10m, max_open_for: 10m}",
    );
    let o = Outrigger::start(&yaml);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (stop.clone(), o.url("/checkout"));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = get(&url).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/outrigger-rules.yaml");
    let rules = rules.canonicalize().unwrap();
    let dir = temp_file("prometheus", "").with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("prometheus.yml");
    std::fs::write(
        &config_path,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n  - job_name: outrigger\n    static_configs:\n      - targets: ['{admin}']\n        labels: {{namespace: shop, app: checkout}}\n",
            rules = rules.display(),
            admin = o.admin,
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let prom = Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };

    // Wait for the alerts: pending is enough (their `for` is minutes long).
    let wanted = ["OutriggerErrorBudgetBurnFast", "OutriggerCircuitBreakerOpen"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let alerts = loop {
        let alerts = api(&prom.base, "/api/v1/alerts")
            .await
            .and_then(|v| v["data"]["alerts"].as_array().cloned())
            .unwrap_or_default();
        let names: Vec<&str> = alerts
            .iter()
            .filter_map(|a| a["labels"]["alertname"].as_str())
            .collect();
        if wanted.iter().all(|w| names.contains(w)) {
            break alerts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerts {wanted:?} did not appear; Prometheus has {names:?}; rule health: {}",
            api(&prom.base, "/api/v1/rules").await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();

    let find = |name: &str| alerts.iter().find(|a| a["labels"]["alertname"] == name).unwrap();
    let burn = find("OutriggerErrorBudgetBurnFast");
    assert!(matches!(burn["state"].as_str(), Some("pending" | "firing")), "{burn}");
    assert_eq!(burn["labels"]["http_route"], "checkout", "{burn}");
    assert_eq!(burn["labels"]["upstream"], "app", "{burn}");
    assert_eq!(burn["labels"]["severity"], "page", "{burn}");
    assert!(
        burn["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("Route checkout fails 100%"),
        "{burn}"
    );
    let breaker = find("OutriggerCircuitBreakerOpen");
    assert_eq!(breaker["labels"]["upstream"], "app", "{breaker}");
    assert_eq!(breaker["labels"]["severity"], "ticket", "{breaker}");
    // Nothing else: no shedding, no rejected config, ready, no certificate.
    let others: Vec<&Value> = alerts
        .iter()
        .filter(|a| !wanted.iter().any(|w| a["labels"]["alertname"] == *w))
        .collect();
    assert!(others.is_empty(), "unexpected alerts: {others:?}");

    // Every rule evaluates without error against the real series.
    let rules = api(&prom.base, "/api/v1/rules").await.unwrap();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
}
