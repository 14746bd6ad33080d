//! Helpers for black-box tests: the real `outrigger` binary run with a real config file,
//! its JSON log lines collected, and small HTTP clients.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long a test waits for anything before failing: generous, for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The binary under test: `$OUTRIGGER_BIN` when set, else the `outrigger-under-test` binary
/// this package builds from the same `main.rs` as `outrigger`. Cargo puts it one directory
/// above the test executables (`target/<profile>/deps/..`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIGGER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory");
    profile_dir.join("outrigger-under-test")
}

/// Writes `text` to a fresh file under the temp dir and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("outrigger-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// Runs `outrigger` with `args` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run outrigger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with one inbound listener on a free port, admin on a free port, one upstream
/// `app` with `endpoints`, and `routes` (YAML list items, indented by two spaces).
pub fn config(endpoints: &[SocketAddr], routes: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:0}}\n  - {{name: outbound, role: outbound, address: 127.0.0.1:0}}\n\
         admin: {{address: 127.0.0.1:0}}\n\
         drain: {{delay: 0s, timeout: 5s}}\n\
         upstreams:\n  app:\n    endpoints: [{}]\n    connect_timeout: 2s\n\
         routes:\n{routes}",
        eps.join(", ")
    )
}

/// Adds `limits: {<limits>}` to the inbound listener of a [`config`] file.
pub fn with_inbound_limits(yaml: &str, limits: &str) -> String {
    yaml.replace(
        "{name: inbound, address: 127.0.0.1:0}",
        &format!("{{name: inbound, address: 127.0.0.1:0, limits: {{{limits}}}}}"),
    )
}

/// Adds a setting line (e.g. `protocol: http2`) to the `app` upstream of a [`config`] file.
pub fn with_upstream_setting(yaml: &str, setting: &str) -> String {
    yaml.replace("connect_timeout: 2s", &format!("connect_timeout: 2s\n    {setting}"))
}

/// The default route list for [`config`]: everything to `app` with a 2 s timeout.
pub const DEFAULT_ROUTE: &str = "  - {name: default, match: {path_prefix: /}, upstream: app, timeout: 2s}\n";

/// A running outrigger process. Killed when dropped.
pub struct Outrigger {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// Bound address of each listener, by name, read from the start-up log.
    pub listeners: HashMap<String, SocketAddr>,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// The config file it was started with (a reload test rewrites it).
    pub config_path: PathBuf,
}

impl Outrigger {
    /// Starts `outrigger run -c <file with yaml>` and waits until it logs that it is ready.
    pub fn start(yaml: &str) -> Outrigger {
        Self::start_with(yaml, &[])
    }

    /// Like [`Outrigger::start`] with extra environment variables.
    pub fn start_with(yaml: &str, env: &[(&str, &str)]) -> Outrigger {
        Self::start_full(yaml, env, 2)
    }

    /// Like [`Outrigger::start_with`] with `--workers workers` (1 runs the current-thread
    /// runtime, the benchmarked sidecar shape; the other tests use 2).
    pub fn start_full(yaml: &str, env: &[(&str, &str)], workers: u16) -> Outrigger {
        Self::start_file(temp_file("config.yaml", yaml), env, workers)
    }

    /// Starts `outrigger run -c path` (a file the test manages, e.g. behind symlinks).
    pub fn start_file(path: PathBuf, env: &[(&str, &str)], workers: u16) -> Outrigger {
        Self::start_wrapped(&[], &binary(), path, env, workers)
    }

    /// Starts `wrapper... binary run -c path` (`wrapper`: e.g. `ip netns exec NS setpriv
    /// --reuid 65532 ...`, to run it in a network namespace as another user).
    pub fn start_wrapped(
        wrapper: &[&str],
        binary: &std::path::Path,
        path: PathBuf,
        env: &[(&str, &str)],
        workers: u16,
    ) -> Outrigger {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.args(["run", "-c"])
            .arg(&path)
            .args(["--workers", &workers.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn outrigger");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let err_sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = err_pipe.read_to_string(&mut buf);
            err_sink.lock().expect("stderr").push_str(&buf);
        });
        let mut o = Outrigger {
            child,
            lines,
            stderr,
            listeners: HashMap::new(),
            admin: "0.0.0.0:0".parse().expect("addr"),
            config_path: path,
        };
        o.wait_for_log_blocking(|v| v["msg"] == "outrigger is ready.");
        for v in o.logs() {
            if v["kind"] == "lifecycle" {
                if let (Some(name), Some(addr)) = (v["listener"].as_str(), v["address"].as_str()) {
                    o.listeners
                        .insert(name.to_owned(), addr.parse().expect("listener address"));
                } else if v["msg"].as_str().is_some_and(|m| m.starts_with("Admin endpoints")) {
                    o.admin = v["address"]
                        .as_str()
                        .expect("admin address")
                        .parse()
                        .expect("admin address");
                }
            }
        }
        o
    }

    /// The inbound listener's address.
    pub fn inbound(&self) -> SocketAddr {
        self.listeners["inbound"]
    }

    /// `http://<inbound><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.inbound())
    }

    /// Every JSON log line so far.
    pub fn logs(&self) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Raw stdout lines so far (including any that are not JSON).
    pub fn raw_lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits for a log line matching `pred` and returns it; panics with every line seen after [`PATIENCE`].
    pub async fn wait_for_log(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = self.logs().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                self.give_up("no matching log line");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn wait_for_log_blocking(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = self.logs().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                self.give_up("outrigger did not become ready");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn give_up(&self, what: &str) -> ! {
        panic!(
            "{what} within {PATIENCE:?}; stdout:\n{}\nstderr:\n{}",
            self.raw_lines().join("\n"),
            self.stderr.lock().expect("stderr")
        )
    }

    /// Waits for the access log line of the request with this id.
    pub async fn access_log(&self, request_id: &str) -> Value {
        self.wait_for_log(|v| v["kind"] == "access" && v["request_id"] == request_id)
            .await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field).and_then(|r| {
                    r.trim_start_matches(':')
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .ok()
                })
            })
            .expect("memory field")
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "outrigger did not exit within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// GETs an admin path: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = raw_request(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let status = resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The sum of the samples in `/metrics` named `name` that carry every one of `labels`
    /// (`name="value"` pairs); 0 when there are none.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

impl Drop for Outrigger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or [`PATIENCE`]).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A response as the tests look at it.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// An HTTP/1.1 client (keep-alive).
pub fn http1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c), like `curl --http2-prior-knowledge`.
pub fn http2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// Sends `req` with `client` and reads the whole reply.
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: http::Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .expect("reply within patience")
        .expect("request sent");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// GET `url` over HTTP/1.1.
pub async fn get(url: &str) -> Reply {
    send(
        &http1_client(),
        http::Request::get(url).body(Full::default()).expect("request"),
    )
    .await
}

/// The proxy started inside the test process from a typed config
/// ([`outrigger_config::builder::ConfigBuilder`]), on the test's own runtime: a test can use
/// tokio's paused time (`#[tokio::test(start_paused = true)]`), where the proxy's timeouts
/// fire as soon as everything waits. The binary-spawning [`Outrigger`] stays for the CLI,
/// signals and the log lines. Stops (drains) when dropped.
pub struct InProcess {
    /// Bound address of each listener, by name.
    pub listeners: HashMap<String, SocketAddr>,
    /// The proxy's metrics, read directly.
    pub metrics: outrigger_telemetry::Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcess {
    /// Binds every listener of `config` and serves on the current runtime.
    pub async fn start(config: outrigger_config::Config) -> InProcess {
        let metrics = outrigger_telemetry::Metrics::new("test", "test").expect("metrics");
        let proxy = outrigger_proxy::Proxy::bind(config, metrics.clone())
            .await
            .expect("bind the listeners");
        let listeners = proxy.listener_addrs().into_iter().collect();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        InProcess {
            listeners,
            metrics,
            stop: Some(stop),
        }
    }

    /// `http://<inbound><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listeners["inbound"])
    }

    /// The sum of the samples named `name` with every one of `labels` in the metrics text.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
