//! Start-up and shutdown as Kubernetes drives them: readiness, SIGTERM drain, exit codes.

use std::time::Duration;

use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_finishes_in_flight_requests_and_exits_0() {
    drains_on_sigterm(2).await;
}

/// `--workers 1` runs a current-thread runtime (the sidecar shape the benchmarks measure):
/// the same drain, and the access lines written in batches all reach stdout before exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_worker_proxy_serves_drains_and_flushes_its_log_on_exit() {
    let proxy_log = drains_on_sigterm(1).await;
    assert!(
        proxy_log.iter().any(|l| l["kind"] == "access" && l["path"] == "/slow"),
        "the in-flight request's access line was flushed before exit"
    );
}

async fn drains_on_sigterm(workers: u16) -> Vec<serde_json::Value> {
    let up = Upstream::start(Mode::Delay(Duration::from_millis(800))).await;
    let yaml = config(&[up.addr()], DEFAULT_ROUTE)
        .replace("drain: {delay: 0s, timeout: 5s}", "drain: {delay: 300ms, timeout: 10s}");
    let mut proxy = Outrigger::start_full(&yaml, &[], workers);
    // HTTP/1.1 and HTTP/2 both work on this runtime.
    assert_eq!(get(&proxy.url("/")).await.status, 200);
    let h2 = send(
        &http2_client(),
        http::Request::get(proxy.url("/")).body(Default::default()).unwrap(),
    )
    .await;
    assert_eq!(h2.status, 200);
    let before = up.requests();
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);

    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // Wait until the request is at the upstream before asking the proxy to stop.
    let deadline = std::time::Instant::now() + PATIENCE;
    while up.requests() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.signal("TERM");
    proxy
        .wait_for_log(|l| l["kind"] == "lifecycle" && l["msg"].as_str().unwrap_or("").starts_with("Draining"))
        .await;
    assert_eq!(proxy.admin_get("/readyz").await.0, 503, "readiness goes off at once");

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request finishes");
    assert_eq!(proxy.wait_exit(), 0);
    proxy
        .wait_for_log(|l| l["msg"] == "Drained: every connection has finished. Exiting.")
        .await;
    proxy.logs()
}

#[tokio::test]
async fn sighup_reloads_an_unchanged_file_without_a_hiccup() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    proxy.signal("HUP");
    let line = proxy
        .wait_for_log(|l| l["kind"] == "reload" && l["result"].is_string())
        .await;
    assert_eq!(line["result"], "success", "{line}");
    assert_eq!(
        line["changes"], "no setting changed; breaker state kept for 1 upstream",
        "{line}"
    );
    assert_eq!(line["hash"], line["previous_hash"], "{line}");
    assert_eq!(get(&proxy.url("/")).await.status, 200);
}

#[tokio::test]
async fn a_port_in_use_fails_start_up_with_exit_1_and_says_why() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = config(&[taken.local_addr().unwrap()], DEFAULT_ROUTE).replace(
        "{name: inbound, address: 127.0.0.1:0}",
        &format!("{{name: inbound, address: {}}}", taken.local_addr().unwrap()),
    );
    let path = temp_file("taken.yaml", &yaml);
    let (code, _, err) = run_cli(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot listen on") && err.contains("listener 'inbound'") && err.contains("ss -ltnp"),
        "{err}"
    );
}

#[tokio::test]
async fn builtin_config_is_a_sidecar_for_an_app_on_8080() {
    // The built-in config binds fixed ports (15001, 15090); only check that it parses and
    // names them, so parallel test runs never fight over those ports.
    let config = outrigger_config::builtin().expect("built-in config is valid");
    assert_eq!(config.listeners[0].address.to_string(), "0.0.0.0:15001");
    assert_eq!(config.admin.address.to_string(), "0.0.0.0:15090");
    assert_eq!(config.upstreams[0].endpoints[0].to_string(), "127.0.0.1:8080");
}

/// GETs `url` in the background and returns once the request has reached `up`.
async fn in_flight_at(up: &Upstream, url: String) -> tokio::task::JoinHandle<Reply> {
    let before = up.requests();
    let request = tokio::spawn(async move { get(&url).await });
    let deadline = std::time::Instant::now() + PATIENCE;
    while up.requests() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    request
}

/// The app's own calls out keep working during the drain: after `drain.delay` the inbound
/// listener refuses new connections, while the outbound listener serves until the inbound
/// side has closed and no outbound request came for `drain.delay`; then exit 0.
#[tokio::test]
async fn the_outbound_listener_serves_the_apps_calls_during_the_drain() {
    let up = Upstream::start(Mode::Delay(Duration::from_millis(1500))).await;
    let fast = Upstream::start(Mode::Ok).await;
    let yaml = format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:0}}\n  - {{name: outbound, role: outbound, address: 127.0.0.1:0}}\n\
         admin: {{address: 127.0.0.1:0}}\n\
         drain: {{delay: 300ms, timeout: 10s}}\n\
         upstreams:\n  slow: {{endpoints: [{}]}}\n  fast: {{endpoints: [{}]}}\n\
         routes:\n  - {{name: in, match: {{path_prefix: /}}, upstream: slow, listener: inbound}}\n\
         \x20 - {{name: out, match: {{path_prefix: /}}, upstream: fast, listener: outbound}}\n",
        up.addr(),
        fast.addr()
    );
    let mut proxy = Outrigger::start(&yaml);
    let in_flight = in_flight_at(&up, proxy.url("/work")).await;
    proxy.signal("TERM");
    // Past the delay the inbound listener is closed ...
    let deadline = std::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(proxy.inbound()).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the inbound listener never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... while the app, still working on its request, calls out through the outbound one.
    let out = format!("http://{}/dependency", proxy.listeners["outbound"]);
    for _ in 0..3 {
        assert_eq!(get(&out).await.status, 200, "an outbound call during the drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(in_flight.await.unwrap().status, 200);
    assert_eq!(proxy.wait_exit(), 0);
    proxy
        .wait_for_log(|l| l["msg"].as_str().unwrap_or("").starts_with("The app's side is quiet"))
        .await;
}

/// A request still in flight when the drain's time is up is cut: the exit status is 1 and
/// the log says how many.
#[tokio::test]
async fn a_drain_that_cuts_requests_exits_1() {
    let up = Upstream::start(Mode::Hang).await;
    let yaml = config(
        &[up.addr()],
        "  - {name: default, match: {path_prefix: /}, upstream: app, timeout: 60s}\n",
    )
    .replace("drain: {delay: 0s, timeout: 5s}", "drain: {delay: 0s, timeout: 300ms}");
    let mut proxy = Outrigger::start(&yaml);
    let _stuck = in_flight_at(&up, proxy.url("/stuck")).await;
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(), 1);
    let line = proxy.wait_for_log(|l| l["cut"] == 1).await;
    assert_eq!(line["level"], "warn");
}

/// A second SIGTERM during the drain exits at once (status 1).
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = config(&[up.addr()], DEFAULT_ROUTE)
        .replace("drain: {delay: 0s, timeout: 5s}", "drain: {delay: 30s, timeout: 30s}");
    let mut proxy = Outrigger::start(&yaml);
    proxy.signal("TERM");
    proxy
        .wait_for_log(|l| l["kind"] == "lifecycle" && l["msg"].as_str().unwrap_or("").starts_with("Draining"))
        .await;
    proxy.signal("TERM");
    let started = std::time::Instant::now();
    assert_eq!(proxy.wait_exit(), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "it waited for the drain");
}

/// Waits until `/metrics` shows `n` restarts of `task`.
async fn restarts(proxy: &Outrigger, task: &str, n: f64) {
    let label = format!("task=\"{task}\"");
    let deadline = std::time::Instant::now() + PATIENCE;
    while proxy.metric("outrigger_task_restarts_total", &[&label]).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{task} was not restarted {n} times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A background task that panics is restarted (with a growing pause), logged and counted,
/// while requests keep flowing; one serving does not need leaves readiness alone.
#[tokio::test]
async fn a_panicking_background_task_is_restarted_and_counted() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start_with(
        &config(&[up.addr()], DEFAULT_ROUTE),
        &[("OUTRIGGER_TEST_PANIC_TASK", "log_summary:3")],
    );
    restarts(&proxy, "log_summary", 3.0).await;
    let line = proxy.wait_for_log(|l| l["kind"] == "task").await;
    assert_eq!(line["task"], "log_summary");
    assert!(
        line["why"].as_str().unwrap().contains("asked this task to panic"),
        "{line}"
    );
    assert_eq!(get(&proxy.url("/")).await.status, 200);
    assert_eq!(
        proxy.admin_get("/readyz").await.0,
        200,
        "log_summary is not needed to serve"
    );
}

/// A task serving needs (DNS re-resolution) that keeps failing turns readiness off, and
/// requests still flow on the addresses already known.
#[tokio::test]
async fn a_needed_task_that_keeps_failing_turns_readiness_off() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = config(&[], DEFAULT_ROUTE).replace(
        "endpoints: []",
        &format!("endpoints: [localhost:{}]\n    resolve_every: 1s", up.addr().port()),
    );
    let proxy = Outrigger::start_with(&yaml, &[("OUTRIGGER_TEST_PANIC_TASK", "dns:3")]);
    restarts(&proxy, "dns", 3.0).await;
    let (status, body) = proxy.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("background task"), "{body}");
    assert_eq!(get(&proxy.url("/")).await.status, 200);
}
