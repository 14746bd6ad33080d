//! The proxies under test, each started with equivalent settings: one worker thread pinned to
//! core 1, keep-alive to the upstream, access log off (raw) or on as JSON to a file
//! (realistic), and the upstream itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::tools::{Tools, pinned};

/// Which proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Direct,
    Outrigger,
    Envoy,
    Haproxy,
    Nginx,
}

/// One configuration under test.
#[derive(Clone, Debug)]
pub(crate) struct Variant {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) access_log: bool,
    /// outrigger only: export spans to a collector that refuses connections.
    pub(crate) otlp_down: bool,
}

/// Every configuration, in report order.
pub(crate) const VARIANTS: &[Variant] = &[
    v("direct", Kind::Direct, false, false),
    v("outrigger", Kind::Outrigger, false, false),
    v("outrigger+log", Kind::Outrigger, true, false),
    v("outrigger+otlp-down", Kind::Outrigger, false, true),
    v("envoy", Kind::Envoy, false, false),
    v("envoy+log", Kind::Envoy, true, false),
    v("haproxy", Kind::Haproxy, false, false),
    v("haproxy+log", Kind::Haproxy, true, false),
    v("nginx", Kind::Nginx, false, false),
    v("nginx+log", Kind::Nginx, true, false),
];

const fn v(name: &'static str, kind: Kind, access_log: bool, otlp_down: bool) -> Variant {
    Variant {
        name,
        kind,
        access_log,
        otlp_down,
    }
}

/// A free loopback port (bound and released: a small race the harness accepts).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A started process (or, for `direct`, none) and where to send traffic.
pub(crate) struct Running {
    child: Option<Child>,
    /// HTTP/1.1 address.
    pub(crate) h1: SocketAddr,
    /// HTTP/2 cleartext (prior knowledge) address.
    pub(crate) h2: SocketAddr,
}

impl Running {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The upstream every proxy forwards to: `GET /` answers `ok`, `GET /bytes/16384` 16 KiB.
pub(crate) fn start_upstream(which: &str, tools: &Tools, dir: &Path) -> Result<Running, String> {
    let port = free_port();
    let h1: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = match which {
        "testkit" => {
            let me = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut c = pinned(tools, "0", &me);
            c.args(["upstream", "--port", &port.to_string()]);
            spawn(c, dir, "upstream")?
        }
        _ => {
            let nginx = tools.nginx.as_ref().ok_or("nginx is needed as the neutral upstream")?;
            let root = dir.join("upstream-root");
            std::fs::create_dir_all(root.join("bytes")).map_err(|e| e.to_string())?;
            std::fs::write(root.join("bytes/16384"), vec![b'x'; 16384]).map_err(|e| e.to_string())?;
            let conf = format!(
                "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {dir}/upstream.pid;\nerror_log stderr error;\n\
                 events {{ worker_connections 20000; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
                 \x20 server {{\n    listen 127.0.0.1:{port} backlog=4096;\n\
                 \x20   location = / {{ return 200 \"ok\"; }}\n\
                 \x20   location /bytes/ {{ root {root}; default_type application/octet-stream; }}\n  }}\n}}\n",
                dir = dir.display(),
                root = root.display(),
            );
            let file = dir.join("upstream-nginx.conf");
            std::fs::write(&file, conf).map_err(|e| e.to_string())?;
            let mut c = pinned(tools, "0", nginx);
            c.arg("-c").arg(&file).arg("-e").arg("stderr");
            spawn(c, dir, "upstream")?
        }
    };
    let running = Running {
        child: Some(child),
        h1,
        h2: h1,
    };
    wait_until_serving(h1, "upstream")?;
    Ok(running)
}

/// Starts `variant` in front of `upstream`.
pub(crate) fn start(variant: &Variant, upstream: SocketAddr, tools: &Tools, dir: &Path) -> Result<Running, String> {
    let port = free_port();
    let h1: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = dir.join(format!("{}-access.log", variant.name));
    let _ = std::fs::remove_file(&log);
    let (child, h2) = match variant.kind {
        Kind::Direct => {
            return Ok(Running {
                child: None,
                h1: upstream,
                h2: upstream,
            });
        }
        Kind::Outrigger => (outrigger(variant, port, upstream, tools, dir, &log)?, h1),
        Kind::Envoy => (envoy(variant, port, upstream, tools, dir, &log)?, h1),
        Kind::Haproxy => (haproxy(variant, port, upstream, tools, dir, &log)?, h1),
        Kind::Nginx => {
            let h2_port = free_port();
            (
                nginx(variant, port, h2_port, upstream, tools, dir, &log)?,
                ([127, 0, 0, 1], h2_port).into(),
            )
        }
    };
    let running = Running {
        child: Some(child),
        h1,
        h2,
    };
    wait_until_serving(h1, variant.name)?;
    Ok(running)
}

fn spawn(mut cmd: std::process::Command, dir: &Path, name: &str) -> Result<Child, String> {
    let stdout = std::fs::File::create(dir.join(format!("{name}.stdout"))).map_err(|e| e.to_string())?;
    let stderr = std::fs::File::create(dir.join(format!("{name}.stderr"))).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let file = dir.join(name);
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    Ok(file)
}

fn outrigger(v: &Variant, port: u16, up: SocketAddr, tools: &Tools, dir: &Path, log: &Path) -> Result<Child, String> {
    let tracing = if v.otlp_down {
        format!("  tracing: {{otlp_endpoint: \"http://127.0.0.1:{}\"}}\n", free_port())
    } else {
        String::new()
    };
    let yaml = format!(
        "listeners:\n  - {{name: inbound, address: 127.0.0.1:{port}, limits: {{max_in_flight: 100000}}}}\n\
         admin: {{address: 127.0.0.1:{admin}}}\n\
         upstreams:\n  app:\n    endpoints: [{up}]\n    circuit_breaker: {{max_in_flight: 100000}}\n    pool: {{max_idle_per_endpoint: 1024}}\n\
         routes:\n  - {{name: default, match: {{path_prefix: /}}, upstream: app, timeout: 30s}}\n\
         telemetry:\n  logs: {{level: warn, access_log: {log_on}}}\n{tracing}",
        admin = free_port(),
        log_on = v.access_log,
    );
    let file = write(dir, &format!("{}.yaml", v.name), &yaml)?;
    let mut c = pinned(tools, "1", &tools.outrigger);
    c.args(["run", "--workers", "1", "-c"]).arg(&file);
    // The access log is stdout: to a file, as a log shipper would read it.
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(dir.join(format!("{}.stderr", v.name))).map_err(|e| e.to_string())?;
    c.stdin(Stdio::null()).stdout(out).stderr(err);
    c.spawn().map_err(|e| format!("cannot start outrigger: {e}"))
}

fn envoy(v: &Variant, port: u16, up: SocketAddr, tools: &Tools, dir: &Path, log: &Path) -> Result<Child, String> {
    let envoy = tools.envoy.as_ref().ok_or("envoy is not installed")?;
    let access_log = if v.access_log {
        format!(
            "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n\
             \x20             \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n\
             \x20             path: {log}\n\
             \x20             log_format:\n\
             \x20               json_format: {{ts: \"%START_TIME%\", method: \"%REQ(:METHOD)%\", path: \"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\", protocol: \"%PROTOCOL%\", status: \"%RESPONSE_CODE%\", flags: \"%RESPONSE_FLAGS%\", duration_ms: \"%DURATION%\", upstream: \"%UPSTREAM_HOST%\", request_id: \"%REQ(X-REQUEST-ID)%\"}}\n",
            log = log.display()
        )
    } else {
        String::new()
    };
    let yaml = format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n\
         static_resources:\n  listeners:\n  - name: inbound\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n\
         \x20   filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: inbound\n          codec_type: AUTO\n{access_log}\
         \x20         route_config:\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n\
         \x20             routes:\n              - match: {{prefix: \"/\"}}\n                route: {{cluster: app, timeout: 30s}}\n\
         \x20         http_filters:\n          - name: envoy.filters.http.router\n            typed_config:\n\
         \x20             \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n\
         \x20 clusters:\n  - name: app\n    type: STATIC\n    connect_timeout: 2s\n\
         \x20   circuit_breakers: {{thresholds: [{{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}}]}}\n\
         \x20   load_assignment:\n      cluster_name: app\n      endpoints:\n      - lb_endpoints:\n\
         \x20       - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {up_port}}}}}}}\n",
        admin = free_port(),
        ip = up.ip(),
        up_port = up.port(),
    );
    let file = write(dir, &format!("{}.yaml", v.name), &yaml)?;
    let mut c = pinned(tools, "1", envoy);
    c.args([
        "--concurrency",
        "1",
        "--log-level",
        "warn",
        "--disable-hot-restart",
        "-c",
    ])
    .arg(&file);
    spawn(c, dir, v.name)
}

fn haproxy(v: &Variant, port: u16, up: SocketAddr, tools: &Tools, dir: &Path, log: &Path) -> Result<Child, String> {
    let haproxy = tools.haproxy.as_ref().ok_or("haproxy is not installed")?;
    let logging = if v.access_log {
        "  log stdout format raw local0\n  option httplog\n  log-format '{\"ts\":\"%t\",\"method\":\"%HM\",\"path\":\"%HPO\",\"protocol\":\"%HV\",\"status\":%ST,\"duration_ms\":%Ta,\"upstream\":\"%si:%sp\",\"termination\":\"%ts\"}'\n"
    } else {
        ""
    };
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 8000\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n{logging}\
         frontend inbound\n  bind 127.0.0.1:{port}\n  default_backend app\n\
         backend app\n  server s1 {up} maxconn 100000\n"
    );
    let file = write(dir, &format!("{}.cfg", v.name), &conf)?;
    let mut c = pinned(tools, "1", haproxy);
    c.args(["-db", "-f"]).arg(&file);
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(dir.join(format!("{}.stderr", v.name))).map_err(|e| e.to_string())?;
    c.stdin(Stdio::null()).stdout(out).stderr(err);
    c.spawn().map_err(|e| format!("cannot start haproxy: {e}"))
}

fn nginx(
    v: &Variant,
    port: u16,
    h2_port: u16,
    up: SocketAddr,
    tools: &Tools,
    dir: &Path,
    log: &Path,
) -> Result<Child, String> {
    let nginx = tools.nginx.as_ref().ok_or("nginx is not installed")?;
    let access = if v.access_log {
        format!(
            "  log_format json escape=json '{{\"ts\":\"$time_iso8601\",\"method\":\"$request_method\",\"path\":\"$uri\",\"protocol\":\"$server_protocol\",\"status\":$status,\"duration_ms\":$request_time,\"upstream\":\"$upstream_addr\",\"request_id\":\"$request_id\"}}';\n  access_log {} json;\n",
            log.display()
        )
    } else {
        "  access_log off;\n".to_owned()
    };
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {dir}/{name}.pid;\nerror_log stderr error;\nworker_rlimit_nofile 100000;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n{access}  keepalive_requests 1000000;\n\
         \x20 upstream app {{ server {up}; keepalive 1024; }}\n\
         \x20 server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    listen 127.0.0.1:{h2_port} http2;\n\
         \x20   location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
        dir = dir.display(),
        name = v.name,
    );
    let file = write(dir, &format!("{}.conf", v.name), &conf)?;
    let mut c = pinned(tools, "1", nginx);
    c.arg("-c").arg(&file).arg("-e").arg("stderr");
    spawn(c, dir, v.name)
}

/// Waits until `GET /` through `addr` answers 200.
fn wait_until_serving(addr: SocketAddr, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not start serving on {addr} within 20 s (see its .stderr file)"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
