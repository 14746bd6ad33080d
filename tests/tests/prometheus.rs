//! A real Prometheus (Debian's `prometheus`) scrapes a running outrigger in front of a failing
//! upstream and evaluates deploy/prometheus/outrigger-rules.yaml: the alerts that should go
//! pending do, by their names and labels, so the rules use the metric names the binary
//! exports; and every query of the Grafana dashboard (deploy/grafana/outrigger.json) runs
//! and the main panels have data. Skipped (with a message) where `prometheus` is not installed, unless
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

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a PromQL query; its result list, or a failure naming the query and the error.
async fn query(base: &str, expr: &str) -> Vec<Value> {
    let v = api(base, &format!("/api/v1/query?query={}", encode(expr)))
        .await
        .unwrap_or_default();
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The dashboard's queries with its variables set as a person would pick them.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/outrigger.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let set = |e: &str| {
        e.replace("$namespace", "shop")
            .replace("$app", "checkout")
            .replace("$route", ".*")
            .replace("$__rate_interval", "1m")
    };
    let mut out = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_owned(),
                set(t["expr"].as_str().unwrap()),
            ));
        }
    }
    // Grafana's `label_values(SELECTOR, LABEL)` as the PromQL it stands for.
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str()
            && let Some(inner) = q.strip_prefix("label_values(").and_then(|x| x.strip_suffix(')'))
            && let Some((selector, label)) = inner.rsplit_once(", ")
        {
            out.push((
                format!("variable {}", v["name"]),
                set(&format!("count by ({label}) ({selector})")),
            ));
        }
    }
    out
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

    // Every dashboard query runs; the panels an on-call engineer looks at first have data.
    let queries = dashboard_queries();
    assert!(queries.len() >= 17, "{queries:?}");
    let must_have_data = [
        "Requests per second by route",
        "Errors per second by route and class",
        "Error ratio (upstream + proxy) by route",
        "Circuit breaker state",
        "Requests in flight by route",
        "variable \"namespace\"",
        "variable \"app\"",
        "variable \"route\"",
    ];
    for (title, expr) in &queries {
        let result = query(&prom.base, expr).await;
        if must_have_data.contains(&title.as_str()) {
            assert!(!result.is_empty(), "panel {title:?} has no data: {expr}");
        }
        if title == "Circuit breaker state" {
            assert_eq!(result[0]["value"][1], "1", "the breaker of app is open: {result:?}");
        }
    }

    // Every rule evaluates without error against the real series.
    let rules = api(&prom.base, "/api/v1/rules").await.unwrap();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
}
