//! TLS end to end, with certificates made in the test: HTTPS listeners (HTTP/1.1 and HTTP/2
//! by ALPN, gRPC, WebSocket), mTLS with identities, `x-forwarded-client-cert` and `allow`,
//! verified TLS to upstreams and its failures explained, certificates rotated in place, and
//! `check` refusing unusable files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrigger_testkit::tls::{Issued, Pki, Validity};
use outrigger_testkit::{EchoClient, EchoRequest, EchoUpstream, Mode, Upstream};
use outrigger_tests::*;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;

/// A [`config`] whose inbound listener terminates TLS with `tls` (YAML flow mapping body).
fn tls_config(endpoints: &[SocketAddr], tls: &str, routes: &str) -> String {
    config(endpoints, routes).replace(
        "{name: inbound, address: 127.0.0.1:0}",
        &format!("{{name: inbound, address: 127.0.0.1:0, tls: {{{tls}}}}}"),
    )
}

fn server_tls(cert: &Issued) -> String {
    format!("cert: {}, key: {}", cert.cert.display(), cert.key.display())
}

/// A reply over TLS, and the certificate the server presented.
struct TlsReply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    peer: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

/// One request over a new TLS connection to `addr` (HTTP/2 when ALPN says so).
async fn tls_request(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    req: http::Request<Full<Bytes>>,
) -> Result<TlsReply, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(PATIENCE, tokio_rustls::TlsConnector::from(client).connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (peer, alpn) = {
        let session = tls.get_ref().1;
        (
            session.peer_certificates().unwrap()[0].clone().into_owned(),
            session.alpn_protocol().map(<[u8]>::to_vec),
        )
    };
    let io = TokioIo::new(tls);
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(TlsReply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        peer,
        alpn,
    })
}

fn get_req(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header("host", "localhost")
        .body(Full::default())
        .unwrap()
}

async fn curl(args: &[&str]) -> (String, String, i32) {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// curl over HTTPS: HTTP/1.1 and HTTP/2 chosen by ALPN, the certificate verified against
/// the test CA, and the upstream told the request came over https.
#[tokio::test]
async fn curl_gets_through_https_with_http1_and_http2() {
    let up = Upstream::start(Mode::Ok).await;
    let pki = Pki::new("https");
    let cert = pki.issue("proxy", &["localhost", "127.0.0.1"]);
    let proxy = Outrigger::start(&tls_config(&[up.addr()], &server_tls(&cert), DEFAULT_ROUTE));
    let url = format!("https://localhost:{}/echo", proxy.inbound().port());
    let resolve = format!("localhost:{}:127.0.0.1", proxy.inbound().port());
    let ca = pki.ca.display().to_string();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (out, err, code) = curl(&[
            flag,
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "--write-out",
            "\n%{http_version} %{http_code}",
            &url,
        ])
        .await;
        assert_eq!(code, 0, "curl {flag}: {err}");
        assert!(out.ends_with(&format!("\n{version} 200")), "curl {flag}: {out}");
        let headers = up.last_request_headers().unwrap();
        assert_eq!(headers["x-forwarded-proto"], "https");
    }
    // A TCP health probe (connect, close) is not a handshake failure. Reading the close
    // means the listener has finished with it.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut probe = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
        probe.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, probe.read_to_end(&mut rest)).await;
    }
    assert_eq!(
        proxy
            .metric("outrigger_tls_handshake_failures_total", &["listener=\"inbound\""])
            .await,
        0.0,
        "a probe is not counted"
    );
    // Plain HTTP to a TLS port gets no answer, and no request reaches the upstream.
    let before = up.requests();
    let (_, _, code) = curl(&[&proxy.url("/echo")]).await;
    assert_ne!(code, 0);
    assert_eq!(up.requests(), before);
}

/// A connector for tonic: TLS to outrigger with ALPN h2.
#[derive(Clone)]
struct TlsConnector {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(this.addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(this.config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// A tonic client over TLS (ALPN h2) through outrigger to a gRPC upstream.
#[tokio::test]
async fn a_tonic_client_calls_through_tls() {
    let echo = EchoUpstream::start().await;
    let pki = Pki::new("grpc");
    let cert = pki.issue("proxy", &["localhost"]);
    let yaml = with_upstream_setting(
        &tls_config(&[echo.addr()], &server_tls(&cert), DEFAULT_ROUTE),
        "protocol: http2",
    );
    let proxy = Outrigger::start(&yaml);
    let channel = tonic::transport::Endpoint::from_static("https://localhost")
        .connect_with_connector(TlsConnector {
            addr: proxy.inbound(),
            config: pki.client_config(&[b"h2"], None),
        })
        .await
        .unwrap();
    let mut client = EchoClient::from_channel(channel);
    let reply = client
        .unary(EchoRequest {
            message: "over tls".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "over tls");
}

/// A WebSocket upgrade over TLS (HTTP/1.1 by ALPN): messages flow both ways.
#[tokio::test]
async fn a_websocket_works_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    let up = Upstream::start(Mode::Ok).await;
    let pki = Pki::new("ws");
    let cert = pki.issue("proxy", &["localhost"]);
    let proxy = Outrigger::start(&tls_config(&[up.addr()], &server_tls(&cert), DEFAULT_ROUTE));
    let tcp = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"], None))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::client_async("wss://localhost/ws", tls))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const OPS: &str = "spiffe://cluster.local/ns/ops/sa/debug";

/// mTLS: the caller's SPIFFE id goes upstream in `x-forwarded-client-cert` (a spoofed one is
/// gone), into the access log, and `allow` admits only the listed identities (403 otherwise).
#[tokio::test]
async fn mtls_forwards_the_identity_and_allow_guards_a_route() {
    let up = Upstream::start(Mode::Ok).await;
    let pki = Pki::new("mesh");
    let cert = pki.issue("proxy", &["localhost"]);
    let web = pki.issue("web", &[WEB]);
    let ops = pki.issue("ops", &[OPS]);
    let routes = concat!(
        "  - {name: admin, match: {path_prefix: /admin}, upstream: app, allow: {identities: [\"spiffe://cluster.local/ns/ops/*\"]}}\n",
        "  - {name: default, match: {path_prefix: /}, upstream: app}\n",
    );
    let yaml = tls_config(
        &[up.addr()],
        &format!("{}, client_ca: {}", server_tls(&cert), pki.ca.display()),
        routes,
    )
    // The outbound listener is plain, so it may not reach the guarded route.
    .replace("  - {name: outbound, role: outbound, address: 127.0.0.1:0}\n", "");
    let proxy = Outrigger::start(&yaml);

    let mut req = get_req("/echo");
    req.headers_mut().insert(
        "x-forwarded-client-cert",
        "Hash=00;URI=spiffe://evil/admin".parse().unwrap(),
    );
    req.headers_mut().insert("x-request-id", "mtls-web-1".parse().unwrap());
    let reply = tls_request(proxy.inbound(), pki.client_config(&[b"http/1.1"], Some(&web)), req)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let seen = up.last_request_headers().unwrap();
    let xfcc: Vec<&str> = seen
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(xfcc.len(), 1, "only outrigger's: {xfcc:?}");
    assert!(
        xfcc[0].starts_with("Hash=") && xfcc[0].ends_with(&format!(";URI={WEB}")),
        "{xfcc:?}"
    );
    let line = proxy.access_log("mtls-web-1").await;
    assert_eq!(line["client_identity"], WEB);

    let reply = tls_request(
        proxy.inbound(),
        pki.client_config(&[b"h2"], Some(&web)),
        get_req("/admin/users"),
    )
    .await
    .unwrap();
    assert_eq!(reply.alpn.as_deref(), Some(b"h2".as_slice()));
    assert_eq!(reply.status, 403);
    let problem: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(problem["code"], "forbidden");
    assert_eq!(problem["class"], "client");
    assert!(problem["detail"].as_str().unwrap().contains(WEB), "{problem}");
    assert_eq!(reply.headers["outrigger-error"], "forbidden");

    let before = up.requests();
    let reply = tls_request(
        proxy.inbound(),
        pki.client_config(&[b"http/1.1"], Some(&ops)),
        get_req("/admin/users"),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(up.requests(), before + 1);
    assert_eq!(
        proxy
            .metric(
                "http_server_request_duration_seconds_count",
                &["error_type=\"forbidden\"", "http_route=\"admin\""]
            )
            .await,
        1.0
    );
}

/// An mTLS listener refuses a client without a certificate and one from another CA at the
/// handshake: nothing reaches the upstream; both are counted by reason and logged.
#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_or_from_another_ca() {
    let up = Upstream::start(Mode::Ok).await;
    let pki = Pki::new("mesh");
    let rogue = Pki::new("rogue");
    let cert = pki.issue("proxy", &["localhost"]);
    let stranger = rogue.issue("stranger", &[WEB]);
    let yaml = tls_config(
        &[up.addr()],
        &format!("{}, client_ca: {}", server_tls(&cert), pki.ca.display()),
        DEFAULT_ROUTE,
    );
    let proxy = Outrigger::start(&yaml);
    let no_cert = tls_request(proxy.inbound(), pki.client_config(&[b"http/1.1"], None), get_req("/")).await;
    assert!(no_cert.is_err(), "answered without a client certificate");
    // The stranger's chain does not lead to the mesh CA; it trusts the mesh CA for the server.
    let mut config = (*pki.client_config(&[b"http/1.1"], None)).clone();
    config = rustls::ClientConfig::builder_with_provider(config.crypto_provider().clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            let mut r = rustls::RootCertStore::empty();
            r.add(pki.ca_der()).unwrap();
            r
        })
        .with_client_auth_cert(vec![stranger.der.clone()], stranger.key_der())
        .unwrap();
    let other_ca = tls_request(proxy.inbound(), Arc::new(config), get_req("/")).await;
    assert!(other_ca.is_err(), "answered a certificate from another CA");
    assert_eq!(up.requests(), 0);
    for reason in ["no_client_cert", "unknown_ca"] {
        let label = format!("reason=\"{reason}\"");
        let deadline = std::time::Instant::now() + PATIENCE;
        while proxy
            .metric(
                "outrigger_tls_handshake_failures_total",
                &["listener=\"inbound\"", &label],
            )
            .await
            != 1.0
        {
            assert!(std::time::Instant::now() < deadline, "{reason} not counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let line = proxy
        .wait_for_log(|v| v["kind"] == "tls" && v["reason"] == "no_client_cert")
        .await;
    assert_eq!(line["listener"], "inbound");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["level"], "warn");
    // Both failures came from 127.0.0.1 within a minute: counted twice, logged once.
    let logged = proxy.logs().into_iter().filter(|v| v["kind"] == "tls").count();
    assert_eq!(logged, 1, "{:#?}", proxy.logs());
}

/// A plain listener never forwards a client's `x-forwarded-client-cert`.
#[tokio::test]
async fn a_spoofed_client_cert_header_is_removed_on_a_plain_listener() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let req = http::Request::get(proxy.url("/echo"))
        .header(
            "x-forwarded-client-cert",
            "Hash=00;URI=spiffe://cluster.local/ns/ops/sa/admin",
        )
        .header("X-Forwarded-Client-Cert", "By=x")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&http1_client(), req).await.status, 200);
    let seen = up.last_request_headers().unwrap();
    assert!(seen.get("x-forwarded-client-cert").is_none(), "{seen:?}");
}

/// An upstream config with TLS towards `up`.
fn upstream_tls(up: &Upstream, tls: &str, protocol: &str) -> String {
    with_upstream_setting(
        &config(&[up.addr()], DEFAULT_ROUTE),
        &format!("protocol: {protocol}\n    tls: {{{tls}}}"),
    )
}

/// TLS to an upstream with a private CA and a `server_name`: verified, HTTP/1.1 and HTTP/2
/// (ALPN), and the connection pooled like a plain one.
#[tokio::test]
async fn upstream_tls_with_a_private_ca_is_verified_and_pooled() {
    let pki = Pki::new("upstream");
    let cert = pki.issue("payments", &["payments.internal"]);
    for protocol in ["http1", "http2"] {
        let up = Upstream::start_tls(Mode::Ok, Pki::server_config(&cert, None)).await;
        let tls = format!("server_name: payments.internal, ca: {}", pki.ca.display());
        let proxy = Outrigger::start(&upstream_tls(&up, &tls, protocol));
        for _ in 0..3 {
            let reply = get(&proxy.url("/echo")).await;
            assert_eq!(reply.status, 200, "{protocol}: {:?}", reply.body);
        }
        assert_eq!(up.requests(), 3);
        assert_eq!(up.connections(), 1, "{protocol}: pooled");
        // The certificate the upstream presented expires in a year: that is its expiry.
        let expiry = proxy
            .metric(
                "outrigger_tls_certificate_expiry_timestamp_seconds",
                &["scope=\"upstream\"", "name=\"app\""],
            )
            .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (expiry - now - 365.0 * 86400.0).abs() < 2.0 * 86400.0,
            "expiry {expiry}"
        );
    }
}

/// mTLS to an upstream: outrigger presents `cert` + `key`; the upstream's CA accepts it.
/// Without them, the refusal is explained.
#[tokio::test]
async fn upstream_mtls_presents_the_client_certificate() {
    let pki = Pki::new("upstream-mtls");
    let server = pki.issue("payments", &["127.0.0.1"]);
    let me = pki.issue("sidecar", &[WEB]);
    let up = Upstream::start_tls(Mode::Ok, Pki::server_config(&server, Some(&pki))).await;
    let with_cert = format!(
        "ca: {}, cert: {}, key: {}",
        pki.ca.display(),
        me.cert.display(),
        me.key.display()
    );
    let proxy = Outrigger::start(&upstream_tls(&up, &with_cert, "http1"));
    assert_eq!(get(&proxy.url("/echo")).await.status, 200);
    drop(proxy);

    let proxy = Outrigger::start(&upstream_tls(&up, &format!("ca: {}", pki.ca.display()), "http1"));
    let reply = get(&proxy.url("/echo")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["code"], "upstream_connect_failed");
    let detail = reply.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("client certificate"), "{detail}");
}

/// Each refusal of an upstream's certificate is a 503 `upstream_connect_failed` at stage
/// `tls` with a cause a person can act on.
#[tokio::test]
async fn upstream_certificate_refusals_are_explained() {
    let pki = Pki::new("upstream");
    let rogue = Pki::new("rogue");
    let cases = [
        (
            pki.issue_with("expired", &["payments.internal"], Validity::ExpiredDaysAgo(3)),
            "the certificate of payments.internal expired 3 days ago (not after ",
        ),
        (
            pki.issue("other", &["*.other.svc"]),
            "the certificate is for *.other.svc, not payments.internal",
        ),
        (
            rogue.issue("untrusted", &["payments.internal"]),
            "signed by an unknown authority (CN=outrigger test CA rogue)",
        ),
    ];
    for (i, (cert, cause)) in cases.iter().enumerate() {
        let up = Upstream::start_tls(Mode::Ok, Pki::server_config(cert, None)).await;
        let tls = format!("server_name: payments.internal, ca: {}", pki.ca.display());
        let proxy = Outrigger::start(&upstream_tls(&up, &tls, "http1"));
        let id = format!("tls-refusal-{i}");
        let req = http::Request::get(proxy.url("/echo"))
            .header("x-request-id", &id)
            .body(Full::default())
            .unwrap();
        let reply = send(&http1_client(), req).await;
        assert_eq!(reply.status, 503, "{cause}");
        let problem = reply.json();
        assert_eq!(problem["code"], "upstream_connect_failed");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(cause), "wanted {cause:?} in {detail:?}");
        assert_eq!(up.requests(), 0);
        let line = proxy.access_log(&id).await;
        assert_eq!(line["attempts"][0]["stage"], "tls", "{line}");
    }
}

/// Replaces `target` with `content` the way Kubernetes updates a Secret volume: written
/// beside it, then renamed over it (a reader never sees half a file).
fn replace_file(target: &Path, content: &[u8]) {
    let tmp = target.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

/// The listener's certificate is replaced in place: new handshakes get the new one without
/// a restart. A broken replacement keeps the last good certificate serving, logged with the
/// path and counted.
#[tokio::test]
async fn a_rotated_certificate_is_served_and_a_broken_one_keeps_the_old() {
    let up = Upstream::start(Mode::Ok).await;
    let pki = Pki::new("rotate");
    let first = pki.issue("first", &["localhost"]);
    let second = pki.issue("second", &["localhost"]);
    // The listener points at files that get replaced.
    let live_cert = pki.dir().join("live.crt");
    let live_key = pki.dir().join("live.key");
    std::fs::copy(&first.cert, &live_cert).unwrap();
    std::fs::copy(&first.key, &live_key).unwrap();
    let tls = format!("cert: {}, key: {}", live_cert.display(), live_key.display());
    let proxy = Outrigger::start(&tls_config(&[up.addr()], &tls, DEFAULT_ROUTE));
    let client = pki.client_config(&[b"http/1.1"], None);
    let served = tls_request(proxy.inbound(), client.clone(), get_req("/"))
        .await
        .unwrap();
    assert_eq!(served.peer, first.der);

    // An open connection carries on; new ones get the new certificate.
    replace_file(&live_key, &std::fs::read(&second.key).unwrap());
    replace_file(&live_cert, &std::fs::read(&second.cert).unwrap());
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let r = tls_request(proxy.inbound(), client.clone(), get_req("/"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        if r.peer == second.der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy
        .wait_for_log(|v| v["kind"] == "tls" && v["level"] == "info" && v["name"] == "inbound")
        .await;

    // A key that is not a key: refused, logged with the path, the previous pair serves on.
    replace_file(
        &live_key,
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    let line = proxy
        .wait_for_log(|v| v["kind"] == "tls" && v["level"] == "error")
        .await;
    assert_eq!(line["path"], live_key.display().to_string());
    assert_eq!(line["setting"], "tls.key");
    assert_eq!(
        proxy
            .metric(
                "outrigger_tls_certificate_reloads_total",
                &["scope=\"listener\"", "name=\"inbound\"", "result=\"rejected\""]
            )
            .await,
        1.0
    );
    let r = tls_request(proxy.inbound(), client, get_req("/")).await.unwrap();
    assert_eq!((r.status, r.peer), (200, second.der.clone()));
    let expiry = proxy
        .metric(
            "outrigger_tls_certificate_expiry_timestamp_seconds",
            &["scope=\"listener\"", "name=\"inbound\""],
        )
        .await;
    let in_a_year = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 365.0 * 86400.0;
    assert!((expiry - in_a_year).abs() < 2.0 * 86400.0, "expiry {expiry}");
}

/// `check` (and `run`) load every TLS file: a missing one, a key of another certificate and
/// an expired listener certificate are refused with the path and the reason; so is `allow`
/// on a route a listener without `client_ca` reaches.
#[test]
fn check_refuses_unusable_tls_material() {
    let pki = Pki::new("check");
    let good = pki.issue("good", &["localhost"]);
    let other = pki.issue("other", &["localhost"]);
    let old = pki.issue_with("old", &["localhost"], Validity::ExpiredDaysAgo(2));
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let missing = pki.dir().join("missing.crt");
    let cases = [
        (
            format!("cert: {}, key: {}", missing.display(), good.key.display()),
            vec![missing.display().to_string(), "cannot read it".to_owned()],
        ),
        (
            format!("cert: {}, key: {}", good.cert.display(), other.key.display()),
            vec![
                other.key.display().to_string(),
                "does not belong to the certificate".to_owned(),
            ],
        ),
        (
            server_tls(&old),
            vec![old.cert.display().to_string(), "the certificate expired on".to_owned()],
        ),
    ];
    for (tls, wanted) in cases {
        let path = temp_file("tls-check.yaml", &tls_config(&[up], &tls, DEFAULT_ROUTE));
        let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        for w in wanted {
            assert!(err.contains(&w), "wanted {w:?} in {err}");
        }
        let (code, _, err) = run_cli(&["run", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "run: {err}");
    }
    let routes = "  - {name: default, match: {path_prefix: /}, upstream: app, allow: {identities: [spiffe://x/y]}}\n";
    let path = temp_file("tls-allow.yaml", &tls_config(&[up], &server_tls(&good), routes));
    let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("without asking for a client certificate"), "{err}");
    assert!(err.contains("`inbound`") && err.contains("`outbound`"), "{err}");
}

/// The server span of a request over mTLS says who called (`outrigger.client.identity`) and
/// that it came over https (`url.scheme`).
#[tokio::test]
async fn the_server_span_carries_the_client_identity() {
    let otlp = outrigger_testkit::OtlpReceiver::start().await;
    let up = Upstream::start(Mode::Ok).await;
    let pki = Pki::new("span");
    let cert = pki.issue("proxy", &["localhost"]);
    let web = pki.issue("web", &[WEB]);
    let yaml = format!(
        "{}telemetry:\n  tracing:\n    otlp_endpoint: {}\n    otlp_protocol: grpc\n",
        tls_config(
            &[up.addr()],
            &format!("{}, client_ca: {}", server_tls(&cert), pki.ca.display()),
            DEFAULT_ROUTE,
        ),
        otlp.grpc_endpoint()
    );
    let proxy = Outrigger::start_with(&yaml, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = get_req("/echo");
    req.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let reply = tls_request(proxy.inbound(), pki.client_config(&[b"h2"], Some(&web)), req)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let spans = otlp
        .wait_until(PATIENCE, |s| {
            s.iter()
                .any(|s| s.trace_id == trace && s.kind == outrigger_testkit::otlp::KIND_SERVER)
        })
        .await;
    let server = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == outrigger_testkit::otlp::KIND_SERVER)
        .unwrap();
    assert_eq!(server.attr("outrigger.client.identity"), Some(WEB));
    assert_eq!(server.attr("url.scheme"), Some("https"));
}
