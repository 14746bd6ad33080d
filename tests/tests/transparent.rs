//! Transparent mode for real: two network namespaces made by the test (an "app" pod and a
//! "server" host joined by a veth pair, with addresses that exist only inside them),
//! `outrigger init-iptables` installing its rules in the app's namespace with Debian's
//! iptables (nft and legacy), outrigger running there as its own uid, and clients with no
//! proxy settings at all (curl, Python sockets). Needs root; skipped with a message where
//! namespaces cannot be made, unless `OUTRIGGER_REQUIRE_NETNS=1` (CI sets it).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use outrigger_tests::*;

/// outrigger's uid in the app's namespace (the image's), never redirected.
const PROXY_UID: &str = "65532";

/// The servers' and the app's stand-in: HTTP that answers with what it saw (on `::`, so
/// IPv4 and IPv6), or an echo of raw bytes. Prints `ready` once listening.
const SERVER_PY: &str = r#"
import http.server, json, socket, socketserver, sys
mode, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"server": name, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            b = self.request.recv(4096)
            if not b:
                return
            self.request.sendall(b)
class Dual:
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
class HttpServer(Dual, http.server.ThreadingHTTPServer): pass
class EchoServer(Dual, socketserver.ThreadingTCPServer): pass
server = HttpServer(("::", port), H) if mode == "http" else EchoServer(("::", port), Echo)
print("ready", flush=True)
server.serve_forever()
"#;

/// Two namespaces and what runs in them; everything is taken down when dropped.
struct Net {
    app: String,
    srv: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.app, &self.srv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Net {
    /// The namespaces, or `None` (the test is skipped) where they cannot be made.
    fn new() -> Option<Net> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let (app, srv) = (format!("ora{tag}"), format!("ors{tag}"));
        let made = sh(&["ip", "netns", "add", &app]);
        let have_iptables = Command::new("iptables").arg("--version").output().is_ok();
        if !made.status.success() || !have_iptables {
            let why = if have_iptables {
                format!(
                    "`ip netns add` failed ({})",
                    String::from_utf8_lossy(&made.stderr).trim()
                )
            } else {
                "iptables is not installed (apt-get install iptables)".to_owned()
            };
            assert!(
                std::env::var_os("OUTRIGGER_REQUIRE_NETNS").is_none(),
                "network namespaces are required here: {why}"
            );
            eprintln!("SKIPPED: {why}; transparent mode needs root, iproute2 and iptables");
            let _ = sh(&["ip", "netns", "del", &app]);
            return None;
        }
        // Readable by outrigger's own uid: the binary and its config are copied here.
        let dir = std::env::temp_dir().join(format!("outrigger-netns-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let net = Net {
            app,
            srv,
            dir,
            children: Vec::new(),
        };
        ok(&["ip", "netns", "add", &net.srv]);
        let (va, vs) = (format!("{}v", net.app), format!("{}v", net.srv));
        ok(&[
            "ip", "link", "add", &va, "netns", &net.app, "type", "veth", "peer", "name", &vs, "netns", &net.srv,
        ]);
        for (ns, dev, v4, v6) in [
            (&net.app, &va, "10.213.0.1/24", "fd00:213::1/64"),
            (&net.srv, &vs, "10.213.0.2/24", "fd00:213::2/64"),
        ] {
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            ok(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            ok(&["ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"]);
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&net.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(binary(), net.dir.join("outrigger")).unwrap();
        std::fs::write(net.dir.join("server.py"), SERVER_PY).unwrap();
        Some(net)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `server.py mode port name` in `ns` and waits until it listens.
    fn server(&mut self, ns: &str, mode: &str, port: u16, name: &str) {
        let script = self.path("server.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(&script)
            .args([mode, &port.to_string(), name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first.trim(), "ready", "server {name} did not start");
        self.children.push(child);
    }

    /// A TLS server in the server namespace (openssl's), with a certificate for its address.
    fn tls_server(&mut self, port: u16) {
        let (cert, key) = (self.path("tls.crt"), self.path("tls.key"));
        ok(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=10.213.0.2",
            "-addext",
            "subjectAltName=IP:10.213.0.2",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv, "openssl", "s_server", "-www", "-accept"])
            .arg(format!("10.213.0.2:{port}"))
            .args(["-cert", cert.to_str().unwrap(), "-key", key.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.wait_until(|| {
            self.curl(
                &self.app.clone(),
                &[
                    "--cacert",
                    cert.to_str().unwrap(),
                    &format!("https://10.213.0.2:{port}/"),
                ],
            )
            .0 == 200
        });
    }

    fn wait_until(&self, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "condition not met within {PATIENCE:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `curl` run in `ns` (as root: not outrigger's uid, so its calls are redirected):
    /// (status, body); status 0 when no response came.
    fn curl(&self, ns: &str, args: &[&str]) -> (u16, String) {
        let mut cmd = vec![
            "ip",
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "-m",
            "20",
            "-w",
            "\n%{http_code}",
        ];
        cmd.extend(args);
        let out = sh(&cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// `outrigger init-iptables ARGS` in the app's namespace: (exit code, stdout + stderr).
    fn init_iptables(&self, args: &[&str]) -> (i32, String) {
        let bin = self.path("outrigger");
        let cfg = self.path("outrigger.yaml");
        let mut cmd = vec![
            "ip",
            "netns",
            "exec",
            &self.app,
            bin.to_str().unwrap(),
            "init-iptables",
            "-c",
            cfg.to_str().unwrap(),
        ];
        cmd.extend(args);
        let out = sh(&cmd);
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `outrigger_redirected_connections_total{listener="outbound", outcome}`, read from the
    /// admin port inside the app's namespace.
    fn redirected(&self, outcome: &str) -> f64 {
        let (status, text) = self.curl(&self.app, &["http://127.0.0.1:15090/metrics"]);
        assert_eq!(status, 200);
        let series = format!("outrigger_redirected_connections_total{{listener=\"outbound\",outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// The app namespace's nat table as `iptables-save` prints it, without comments and
    /// counters.
    fn nat_rules(&self, save: &str) -> String {
        ok(&["ip", "netns", "exec", &self.app, save, "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                if l.starts_with(':') {
                    l.split(" [").next().unwrap_or(l)
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn config(unmatched: &str) -> String {
    format!(
        r#"listeners:
  - {{name: inbound, role: inbound, address: "[::]:15001"}}
  - {{name: outbound, role: outbound, address: "127.0.0.1:15002", unmatched: {unmatched}}}
  - {{name: outbound6, role: outbound, address: "[::1]:15002", unmatched: {unmatched}}}
admin: {{address: "127.0.0.1:15090"}}
upstreams:
  app: {{endpoints: ["127.0.0.1:8080"]}}
  backend: {{endpoints: ["10.213.0.2:8080"]}}
  backend6: {{endpoints: ["[fd00:213::2]:8080"]}}
routes:
  - {{name: backend, match: {{destination: "10.213.0.2:8080"}}, upstream: backend}}
  - {{name: backend6, match: {{destination: "[fd00::/8]:8080"}}, upstream: backend6}}
  - {{name: tls-port, match: {{destination: "10.213.0.0/24:8443"}}, upstream: backend}}
  - {{name: app, match: {{path_prefix: /}}, upstream: app, listener: inbound}}
  - {{name: proxy-style-catch-all, match: {{path_prefix: /}}, upstream: app, listener: outbound}}
"#
    )
}

fn count(o: &Outrigger, pred: impl Fn(&Value) -> bool) -> usize {
    o.logs().iter().filter(|v| pred(v)).count()
}

/// The whole story with one iptables backend.
async fn transparent_mode(backend: &str, save: &str, unmatched: &str) {
    let Some(mut net) = Net::new() else { return };
    if Command::new(save).arg("--version").output().is_err() {
        panic!("{save} is missing: Debian's iptables package has it");
    }
    std::fs::write(net.path("outrigger.yaml"), config(unmatched)).unwrap();
    let (app, srv) = (net.app.clone(), net.srv.clone());
    net.server(&srv, "http", 8080, "backend");
    net.server(&srv, "http", 9000, "unconfigured");
    net.server(&srv, "echo", 7000, "echo");
    net.server(&app, "http", 8080, "app");
    net.tls_server(8443);

    // A dry run prints the commands and changes nothing.
    let empty = net.nat_rules(save);
    let (code, out) = net.init_iptables(&["--dry-run", "--iptables", backend]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("-A OUTRIGGER_OUTPUT -m owner --uid-owner 65532 -j RETURN"),
        "{out}"
    );
    assert!(out.contains("Dry run: nothing was changed"), "{out}");
    assert_eq!(net.nat_rules(save), empty);

    // Installed: says what it did, for IPv4 and IPv6.
    let (code, out) = net.init_iptables(&["--iptables", backend]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Installed outrigger's redirect rules"), "{out}");
    assert!(
        out.contains("IPv4: inbound TCP to ports 8080 -> :15001; outbound TCP -> :15002"),
        "{out}"
    );
    assert!(
        out.contains("IPv6: inbound TCP to ports 8080 -> :15001; outbound TCP -> :15002"),
        "{out}"
    );
    let installed = net.nat_rules(save);
    assert!(
        installed.contains("-A OUTPUT -p tcp -j OUTRIGGER_OUTPUT"),
        "{installed}"
    );
    assert!(
        installed.contains("-A PREROUTING -p tcp -j OUTRIGGER_INBOUND"),
        "{installed}"
    );

    // Idempotent: a second run changes nothing and says so.
    let (code, out) = net.init_iptables(&["--iptables", backend]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already in place; nothing changed"), "{out}");
    assert_eq!(net.nat_rules(save), installed);

    let bin = net.path("outrigger");
    let wrapper = [
        "ip",
        "netns",
        "exec",
        &app,
        "setpriv",
        "--reuid",
        PROXY_UID,
        "--regid",
        PROXY_UID,
        "--clear-groups",
    ];
    let proxy = Outrigger::start_wrapped(&wrapper, &bin, net.path("outrigger.yaml"), &[], 2);

    // The app calls the server by its address, with no proxy setting: through outrigger.
    let (status, body) = net.curl(&app, &["http://10.213.0.2:8080/orders?id=7"]);
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["server"], "backend");
    assert!(
        seen["headers"]["traceparent"].is_string(),
        "outrigger adds trace context: {seen}"
    );
    let request_id = seen["headers"]["x-request-id"].as_str().unwrap().to_owned();
    let line = proxy.access_log(&request_id).await;
    assert_eq!(line["route"], "backend", "{line}");
    assert_eq!(line["endpoint"], "10.213.0.2:8080", "{line}");
    assert_eq!(line["status"], 200);

    // The same over IPv6 (ip6tables, IP6T_SO_ORIGINAL_DST).
    let (status, body) = net.curl(&app, &["-g", "http://[fd00:213::2]:8080/v6"]);
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    let line = proxy
        .access_log(seen["headers"]["x-request-id"].as_str().unwrap())
        .await;
    assert_eq!(line["route"], "backend6", "{line}");

    // Inbound: a client on the other host calls the app's port; outrigger's inbound
    // listener answers, then the app.
    let (status, body) = net.curl(&srv, &["http://10.213.0.1:8080/in"]);
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["server"], "app");
    let line = proxy
        .access_log(seen["headers"]["x-request-id"].as_str().unwrap())
        .await;
    assert_eq!(line["route"], "app", "{line}");
    assert_eq!(line["endpoint"], "127.0.0.1:8080", "{line}");

    // The app's own TLS is never intercepted, even to a destination a route names: it
    // passes through untouched (or, on a listener that refuses what no route takes, is
    // refused).
    let cert = net.path("tls.crt");
    let (status, body) = net.curl(&app, &["--cacert", cert.to_str().unwrap(), "https://10.213.0.2:8443/"]);
    let kind = if unmatched == "passthrough" {
        "passthrough"
    } else {
        "refused"
    };
    assert_eq!(status, if unmatched == "passthrough" { 200 } else { 0 }, "{body}");
    let line = proxy
        .wait_for_log(|v| v["kind"] == kind && v["destination"] == "10.213.0.2:8443")
        .await;
    assert!(line["why"].as_str().unwrap().contains("it is TLS"), "{line}");

    // A destination no route names, HTTP or not: passed through, or refused, per listener.
    let echoed = sh(&[
        "ip",
        "netns",
        "exec",
        &app,
        "python3",
        "-c",
        "import socket; s = socket.create_connection(('10.213.0.2', 7000), timeout=20); s.sendall(b'\\x00\\x01not http\\n'); s.shutdown(socket.SHUT_WR); print(s.recv(100))",
    ]);
    let accesses = count(&proxy, |v| v["kind"] == "access");
    let (status, body) = net.curl(&app, &["http://10.213.0.2:9000/"]);
    if unmatched == "passthrough" {
        assert!(
            String::from_utf8_lossy(&echoed.stdout).contains("not http"),
            "{echoed:?}"
        );
        assert_eq!(status, 200, "{body}");
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["server"], "unconfigured");
        assert!(
            seen["headers"].get("traceparent").is_none(),
            "passed through untouched: {seen}"
        );
        for dst in ["10.213.0.2:7000", "10.213.0.2:9000"] {
            let line = proxy
                .wait_for_log(|v| v["kind"] == "passthrough" && v["destination"] == dst)
                .await;
            assert_eq!(line["why"], "no route matches its original destination", "{line}");
            assert!(line["bytes_received"].as_u64().unwrap() > 0, "{line}");
        }
        assert!(net.redirected("passthrough") >= 3.0);
    } else {
        assert!(
            !String::from_utf8_lossy(&echoed.stdout).contains("not http"),
            "{echoed:?}"
        );
        assert_eq!(status, 0, "refused: {body}");
        let line = proxy
            .wait_for_log(|v| v["kind"] == "refused" && v["destination"] == "10.213.0.2:9000")
            .await;
        assert_eq!(line["why"], "no route matches its original destination", "{line}");
        assert!(net.redirected("refused") >= 2.0);
    }
    assert_eq!(
        count(&proxy, |v| v["kind"] == "access"),
        accesses,
        "no access line for what no route took"
    );

    // No loop: a (hand-made) rule that sends the app's call to outrigger's own inbound port
    // back to the outbound listener is refused, not forwarded to itself.
    let iptables = format!("iptables-{backend}");
    let loop_rule = |op: &str| {
        ok(&[
            "ip",
            "netns",
            "exec",
            &app,
            &iptables,
            "-t",
            "nat",
            op,
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "10.213.0.1",
            "--dport",
            "15001",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15002",
        ])
    };
    loop_rule("-I");
    let (status, _) = net.curl(&app, &["http://10.213.0.1:15001/"]);
    assert_eq!(status, 0);
    let line = proxy
        .wait_for_log(|v| v["kind"] == "refused" && v["destination"] == "10.213.0.1:15001")
        .await;
    assert!(line["why"].as_str().unwrap().contains("forwarding loop"), "{line}");
    loop_rule("-D");
    assert!(net.redirected("http") >= 1.0);

    // Removed: the chains and jumps go, and the app's calls go direct again.
    let (code, out) = net.init_iptables(&["--remove", "--iptables", backend]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Removed outrigger's redirect rules"), "{out}");
    assert_eq!(net.nat_rules(save), empty);
    let accesses = count(&proxy, |v| v["kind"] == "access");
    let (status, body) = net.curl(&app, &["http://10.213.0.2:8080/direct"]);
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert!(
        seen["headers"].get("traceparent").is_none(),
        "not through outrigger: {seen}"
    );
    assert_eq!(count(&proxy, |v| v["kind"] == "access"), accesses);
    let (code, out) = net.init_iptables(&["--remove", "--iptables", backend]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing changed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_mode_with_iptables_nft_passes_unmatched_traffic_through() {
    transparent_mode("nft", "iptables-nft-save", "passthrough").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_mode_with_iptables_legacy_refuses_unmatched_traffic() {
    transparent_mode("legacy", "iptables-legacy-save", "refuse").await;
}

/// An inbound listener on loopback cannot take redirected connections: refused with the fix.
#[test]
fn init_iptables_without_a_config_listener_for_inbound_says_how_to_fix_it() {
    let cfg = temp_file(
        "loopback-inbound.yaml",
        "listeners: [{name: inbound, address: 127.0.0.1:15001}]\nupstreams: {app: {endpoints: [127.0.0.1:8080]}}\nroutes: [{name: a, match: {path_prefix: /}, upstream: app}]\n",
    );
    let (code, _, err) = run_cli(&["init-iptables", "--dry-run", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("listen on 0.0.0.0:15001 instead"), "{err}");
}
