//! Config reload, from outside: the real binary, its config file rewritten under steady
//! traffic, reloaded by SIGHUP and by its file watch (a ConfigMap-style `..data` swap too).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;

/// What the reload test changes, one setting at a time.
#[derive(Clone)]
struct Shape {
    n: usize,
    app: Vec<SocketAddr>,
    broken: SocketAddr,
    outbound_ip: &'static str,
    max_in_flight: u32,
    extra_route: bool,
    invalid: bool,
}

impl Shape {
    fn yaml(&self) -> String {
        let eps: Vec<String> = self.app.iter().map(ToString::to_string).collect();
        let extra = if self.extra_route {
            "  - {name: extra, match: {path: /extra}, upstream: app, timeout: 2s}\n"
        } else {
            ""
        };
        let timeout = if self.invalid { "2 parsecs" } else { "2s" };
        format!(
            "# reload {n}\n\
             listeners:\n  - {{name: inbound, address: 127.0.0.1:0, limits: {{max_in_flight: {mif}}}}}\n  - {{name: outbound, role: outbound, address: {ip}:0}}\n\
             admin: {{address: 127.0.0.1:0}}\n\
             drain: {{delay: 0s, timeout: 5s}}\n\
             telemetry: {{logs: {{access_log: false}}}}\n\
             upstreams:\n  app:\n    endpoints: [{eps}]\n    connect_timeout: 2s\n\
             \x20 broken:\n    endpoints: [{broken}]\n    connect_timeout: 2s\n    circuit_breaker: {{consecutive_failures: 1, open_for: 10m, max_open_for: 10m}}\n\
             routes:\n  - {{name: broken, match: {{path_prefix: /broken}}, upstream: broken, timeout: 2s}}\n{extra}\
             \x20 - {{name: default, match: {{path_prefix: /}}, upstream: app, timeout: {timeout}}}\n",
            n = self.n,
            mif = self.max_in_flight,
            ip = self.outbound_ip,
            eps = eps.join(", "),
            broken = self.broken,
        )
    }
}

/// Replaces the file the way editors and ConfigMaps do: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The reload line for the file with this hash: applied, or refused.
async fn reload_result(o: &Outrigger, hash: &str) -> Value {
    o.wait_for_log(|v| {
        v["kind"] == "reload"
            && ((v["result"] == "success" && v["hash"] == hash)
                || (v["result"] == "rejected" && v["file_hash"] == hash))
    })
    .await
}

/// The address listener `name` accepts on now (its latest start line).
fn listening_on(o: &Outrigger, name: &str) -> SocketAddr {
    o.logs()
        .iter()
        .rev()
        .find(|v| {
            v["kind"] == "lifecycle"
                && v["listener"] == name
                && v["msg"].as_str().is_some_and(|m| m.contains("is accepting"))
        })
        .and_then(|v| v["address"].as_str()?.parse().ok())
        .unwrap()
}

/// One request on a fresh connection: the status, or why there was none.
async fn fresh_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

/// Steady traffic: keep-alive clients and clients opening a connection per request. Every
/// answer must be a 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for k in 0..6 {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let client = http1_client();
                while !stop.load(Ordering::Relaxed) {
                    let result = if k < 4 {
                        let req = http::Request::get(format!("http://{addr}/load"))
                            .body(Default::default())
                            .unwrap();
                        match client.request(req).await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                                Ok(status)
                            }
                            Err(e) => Err(format!("keep-alive request: {e:?}")),
                        }
                    } else {
                        fresh_get(addr, "/load").await
                    };
                    match result {
                        Ok(200) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(status) => failures.lock().unwrap().push(format!("status {status}")),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_drop_nothing_and_keep_breaker_state() {
    let a = Upstream::start(Mode::Ok).await;
    let b = Upstream::start(Mode::Ok).await;
    let mut shape = Shape {
        n: 0,
        app: vec![a.addr()],
        broken: refused_addr(),
        outbound_ip: "127.0.0.1",
        max_in_flight: 10_000,
        extra_route: false,
        invalid: false,
    };
    let o = Outrigger::start(&shape.yaml());
    let path = o.config_path.clone();

    // Open the breaker of `broken`: it must stay open through every reload below.
    let _ = get(&o.url("/broken")).await;
    let r = get(&o.url("/broken")).await;
    assert_eq!(r.header("outrigger-error"), "circuit_open", "{:?}", r.body);
    let breaker = |text: &str| -> Value {
        let v: Value = serde_json::from_str(text).unwrap();
        v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "broken")
            .unwrap()["breaker"]
            .clone()
    };
    let opened = breaker(&o.admin_get("/debug/upstreams").await.1);
    assert_eq!(opened["state"], "open", "{opened}");

    let load = Load::start(o.inbound());
    let mut last_valid = String::new();
    let mut rejected = 0;
    for n in 1..=50 {
        shape.n = n;
        shape.invalid = false;
        match n % 5 {
            0 => shape.invalid = true,
            1 => {
                shape.app = if shape.app.len() == 1 {
                    vec![a.addr(), b.addr()]
                } else {
                    vec![a.addr()]
                };
            }
            2 => shape.max_in_flight = if shape.max_in_flight == 10_000 { 9_999 } else { 10_000 },
            3 => {
                shape.outbound_ip = if shape.outbound_ip == "127.0.0.1" {
                    "127.0.0.2"
                } else {
                    "127.0.0.1"
                }
            }
            _ => shape.extra_route = !shape.extra_route,
        }
        let yaml = shape.yaml();
        let hash = outrigger_proxy::hash_of(yaml.as_bytes());
        let before_move = listening_on(&o, "outbound");
        replace(&path, &yaml);
        // Most by SIGHUP; every seventh by the file watch alone.
        if n % 7 != 0 {
            o.signal("HUP");
        }
        let line = reload_result(&o, &hash).await;
        if shape.invalid {
            rejected += 1;
            assert_eq!(line["result"], "rejected", "{line}");
            let expected_line = yaml.lines().position(|l| l.contains("name: default")).unwrap() + 1;
            let diag = o
                .wait_for_log(|v| {
                    v["kind"] == "reload"
                        && v["line"] == expected_line
                        && (v["setting"] == "routes[1].timeout" || v["setting"] == "routes[2].timeout")
                })
                .await;
            assert!(diag["file"].as_str().unwrap().ends_with("config.yaml"), "{diag}");
            assert!(diag["msg"].as_str().unwrap().contains("parsecs"), "{diag}");
            continue;
        }
        assert_eq!(line["result"], "success", "{line}");
        last_valid = hash;
        let changes = line["changes"].as_str().unwrap();
        assert!(changes.contains("breaker state kept for 2 upstreams"), "{changes}");
        match n % 5 {
            1 => assert!(changes.contains("upstream app endpoints changed"), "{changes}"),
            2 => assert!(changes.contains("listener inbound settings changed"), "{changes}"),
            3 => {
                assert!(changes.contains("listener outbound moved"), "{changes}");
                let now = listening_on(&o, "outbound");
                assert_ne!(now, before_move);
                assert_eq!(now.ip().to_string(), shape.outbound_ip);
                assert_eq!(fresh_get(now, "/via-outbound").await, Ok(200));
                // The old address stops accepting (its accept loop has been told to stop).
                let deadline = tokio::time::Instant::now() + PATIENCE;
                while tokio::net::TcpStream::connect(before_move).await.is_ok() {
                    assert!(tokio::time::Instant::now() < deadline, "{before_move} still accepts");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            _ => assert!(changes.contains("routes +"), "{changes}"),
        }
    }
    let (ok, failures) = load.finish().await;
    eprintln!("{ok} requests answered 200 during the reloads");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 100, "only {ok} requests were made during the reloads");

    // The breaker stayed open all along: same state, same moment it opened.
    let now = breaker(&o.admin_get("/debug/upstreams").await.1);
    assert_eq!(now["state"], "open", "{now}");
    assert_eq!(now["since"], opened["since"], "the breaker was replaced: {now}");
    let r = get(&o.url("/broken")).await;
    assert_eq!(r.header("outrigger-error"), "circuit_open", "{:?}", r.body);

    // The live config is the last valid file.
    assert_eq!(
        o.metric("outrigger_config_info", &[&format!("hash=\"{last_valid}\"")])
            .await,
        1.0
    );
    assert_eq!(
        o.metric("outrigger_config_info", &[]).await,
        1.0,
        "one config_info series"
    );
    assert!(
        o.metric("outrigger_config_reloads_total", &["result=\"success\""])
            .await
            >= 40.0
    );
    assert!(
        o.metric("outrigger_config_reloads_total", &["result=\"rejected\""])
            .await
            >= f64::from(rejected)
    );
    assert!(
        o.metric("outrigger_config_last_reload_success_timestamp_seconds", &[])
            .await
            > 1.7e9
    );
    let (_, config) = o.admin_get("/debug/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["hash"], last_valid.as_str());
}

/// A Kubernetes ConfigMap volume: `outrigger.yaml -> ..data/outrigger.yaml`, `..data ->
/// ..<version>`; an update swaps the `..data` link. The file watch notices, with no signal.
#[tokio::test]
async fn configmap_update_is_noticed_and_restart_only_changes_are_refused() {
    let up = Upstream::start(Mode::Ok).await;
    let dir = temp_file("configmap", "").with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let version = |name: &str, yaml: &str| {
        let v = dir.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("outrigger.yaml"), yaml).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    let v1 = config(&[up.addr()], DEFAULT_ROUTE);
    version("..v1", &v1);
    std::os::unix::fs::symlink("..data/outrigger.yaml", dir.join("outrigger.yaml")).unwrap();
    let o = Outrigger::start_file(dir.join("outrigger.yaml"), &[], 2);
    let (_, metrics) = o.admin_get("/metrics").await;
    let h1 = outrigger_proxy::hash_of(v1.as_bytes());
    assert!(
        metrics.contains(&format!("outrigger_config_info{{hash=\"{h1}\"}} 1")),
        "{metrics}"
    );
    assert_eq!(get(&o.url("/teapot")).await.status, 200);

    // v2 adds a route that answers 418 (a fault abort): applied without any signal.
    let v2 = config(
        &[up.addr()],
        &format!(
            "  - {{name: teapot, match: {{path: /teapot}}, upstream: app, fault: {{abort: {{percent: 100, status: 418}}}}}}\n{DEFAULT_ROUTE}"
        ),
    );
    version("..v2", &v2);
    let line = reload_result(&o, &outrigger_proxy::hash_of(v2.as_bytes())).await;
    assert_eq!(line["result"], "success", "{line}");
    assert_eq!(line["trigger"], "file_changed", "{line}");
    assert!(line["changes"].as_str().unwrap().contains("routes +1 -0 ~0"), "{line}");
    assert_eq!(get(&o.url("/teapot")).await.status, 418);

    // Moving the admin port needs a restart: refused, named, and v2 keeps serving.
    let v3 = v2.replace("admin: {address: 127.0.0.1:0}", "admin: {address: 127.0.0.1:1}");
    version("..v3", &v3);
    let line = reload_result(&o, &outrigger_proxy::hash_of(v3.as_bytes())).await;
    assert_eq!(line["result"], "rejected", "{line}");
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.contains("admin.address") && reason.contains("restart"),
        "{reason}"
    );

    // A listener whose certificate file does not exist: refused with the path.
    let v4 = v2.replace(
        "{name: outbound, role: outbound, address: 127.0.0.1:0}",
        "{name: outbound, role: outbound, address: 127.0.0.1:0, tls: {cert: /nonexistent/tls.crt, key: /nonexistent/tls.key}}",
    );
    version("..v4", &v4);
    let line = reload_result(&o, &outrigger_proxy::hash_of(v4.as_bytes())).await;
    assert_eq!(line["result"], "rejected", "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("/nonexistent/tls.crt"),
        "{line}"
    );
    assert_eq!(
        o.metric("outrigger_config_reloads_total", &["result=\"rejected\""])
            .await,
        2.0
    );
    assert_eq!(get(&o.url("/teapot")).await.status, 418, "v2 still serves");

    // SIGHUP reads the file even when it has not changed; a rejected file is tried again.
    o.signal("HUP");
    o.wait_for_log(|v| v["kind"] == "reload" && v["result"] == "rejected" && v["trigger"] == "signal")
        .await;
    assert_eq!(
        o.metric("outrigger_config_reloads_total", &["result=\"rejected\""])
            .await,
        3.0
    );
    assert_eq!(
        o.metric(
            "outrigger_config_info",
            &[&format!("hash=\"{}\"", outrigger_proxy::hash_of(v2.as_bytes()))]
        )
        .await,
        1.0
    );
}
