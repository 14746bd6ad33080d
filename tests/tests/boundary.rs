//! Trust at the HTTP boundary, end to end through the binary: the `Host` an upstream sees is
//! the authority that was routed on; upstream framing faults are refused and never poison a
//! reused connection; a body that stalls is cut off; trailers carry no routing or framing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use outrigger_testkit::{Act, Mode, Scripted, Upstream};
use outrigger_tests::*;

/// A header's value in a raw HTTP/1.1 response (first match, any case).
fn header_of<'a>(raw: &'a str, name: &str) -> &'a str {
    raw.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or("")
}

/// The problem document of a raw response.
fn problem(raw: &str) -> serde_json::Value {
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not problem+json ({e}): {raw}"))
}

/// A config with one upstream at `addr` and one route with `route_settings` (`key: value, ...`).
fn one_route(addr: std::net::SocketAddr, route_settings: &str) -> String {
    config(
        &[addr],
        &format!("  - {{name: default, match: {{path_prefix: /}}, upstream: app, {route_settings}}}\n"),
    )
}

async fn bad_request_counted(proxy: &Outrigger) -> f64 {
    proxy
        .metric(
            "http_server_request_duration_seconds_count",
            &["error_type=\"bad_request\"", "http_response_status_code=\"400\""],
        )
        .await
}

#[tokio::test]
async fn the_upstream_host_is_always_the_authority_that_was_routed_on() {
    let up = Upstream::start(Mode::Ok).await;
    let routes = "  - {name: public, match: {host: public.example, path_prefix: /}, upstream: app, timeout: 2s}\n";
    let proxy = Outrigger::start(&config(&[up.addr()], routes));

    // HTTP/2: routed on `:authority`, so `:authority` is the Host, whatever `host` says.
    let req = http::Request::get(format!("http://public.example:{}/x", proxy.inbound().port()))
        .header("host", "payments.internal")
        .body(Full::<Bytes>::default())
        .unwrap();
    // A name that does not resolve, on a connection to the proxy.
    let stream = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp.into_body().collect().await.unwrap());
    let seen = up.last_request_headers().unwrap();
    let hosts: Vec<_> = seen.get_all("host").iter().collect();
    assert_eq!(hosts, [format!("public.example:{}", proxy.inbound().port()).as_str()]);

    // HTTP/1.1 absolute form: the target's authority replaces the Host field (RFC 9112 §3.2.2).
    let raw = raw_request(
        proxy.inbound(),
        b"GET http://public.example/y HTTP/1.1\r\nHost: payments.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let seen = up.last_request_headers().unwrap();
    let hosts: Vec<_> = seen.get_all("host").iter().collect();
    assert_eq!(hosts, ["public.example"]);

    // A Host the route does not allow is not routed, whichever form carries it.
    let raw = raw_request(
        proxy.inbound(),
        b"GET /z HTTP/1.1\r\nHost: payments.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn two_host_fields_or_none_in_http_1_1_is_400_and_nothing_is_sent() {
    let up = Upstream::start(Mode::Ok).await;
    let routes = "  - {name: public, match: {host: public.example, path_prefix: /}, upstream: app, timeout: 2s}\n  - {name: default, match: {path_prefix: /}, upstream: app, timeout: 2s}\n";
    let proxy = Outrigger::start(&config(&[up.addr()], routes));
    for (request, why) in [
        (
            &b"GET / HTTP/1.1\r\nHost: public.example\r\nHost: payments.internal\r\nConnection: close\r\n\r\n"[..],
            "more than one Host field",
        ),
        (
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "must carry a Host field",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: user@public.example\r\nConnection: close\r\n\r\n",
            "not a valid host[:port]",
        ),
        (
            b"GET http://public.example/ HTTP/1.1\r\nConnection: close\r\n\r\n",
            "must carry a Host field",
        ),
    ] {
        let raw = raw_request(proxy.inbound(), request).await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
        assert_eq!(header_of(&raw, "outrigger-error"), "bad_request");
        let p = problem(&raw);
        assert_eq!(p["code"], "bad_request");
        assert_eq!(p["class"], "client");
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
        let line = proxy.access_log(header_of(&raw, "x-request-id")).await;
        assert_eq!(line["code"], "bad_request");
        assert_eq!(line["status"], 400);
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
    assert_eq!(bad_request_counted(&proxy).await, 4.0);

    // HTTP/1.0 may leave Host out: the upstream then gets an empty one (RFC 9112 §3.2).
    let raw = raw_request(proxy.inbound(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    let seen = up.last_request_headers().unwrap();
    assert_eq!(seen.get_all("host").iter().collect::<Vec<_>>(), [""]);
}

#[tokio::test]
async fn connect_is_refused_at_run_time_and_by_check() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let raw = raw_request(
        proxy.inbound(),
        b"CONNECT payments.internal:443 HTTP/1.1\r\nHost: payments.internal:443\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(
        problem(&raw)["detail"]
            .as_str()
            .unwrap()
            .contains("CONNECT is not supported")
    );
    assert_eq!(up.requests(), 0);

    let yaml = config(
        &[up.addr()],
        "  - {name: tunnel, match: {path_prefix: /, methods: [GET, CONNECT]}, upstream: app}\n",
    );
    let (code, _, stderr) = run_cli(&["check", "-c", temp_file("connect.yaml", &yaml).to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("CONNECT is not supported"), "{stderr}");
    assert!(stderr.contains("fix: remove CONNECT from `methods`"), "{stderr}");
}

/// Answers from a scripted upstream that are not valid HTTP/1.1: 502 upstream_protocol_error,
/// logged with its stage, counted, and the connection never reused.
#[tokio::test]
async fn faulty_upstream_framing_is_a_502_protocol_error() {
    for (answer, why) in [
        (
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "cannot use Transfer-Encoding",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            "did not ask to",
        ),
        (
            "HTTP/1.1 204 No Content\r\nContent-Length: 5, 6\r\n\r\n",
            "two different Content-Lengths",
        ),
    ] {
        let up = Scripted::start(vec![Act::send(answer)]).await;
        let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
        let raw = raw_request(
            proxy.inbound(),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 502"), "{answer:?}: {raw}");
        assert_eq!(header_of(&raw, "outrigger-error"), "upstream_protocol_error");
        assert_eq!(problem(&raw)["code"], "upstream_protocol_error");
        let line = proxy.access_log(header_of(&raw, "x-request-id")).await;
        assert_eq!(line["code"], "upstream_protocol_error");
        assert_eq!(line["attempts"][0]["stage"], "await_headers");
        let cause = line["cause"].as_str().unwrap();
        assert!(
            cause.contains("upstream_protocol_error") && cause.contains(why),
            "{cause}"
        );
        assert!(problem(&raw)["detail"].as_str().unwrap().contains(why), "{raw}");
        assert_eq!(
            proxy
                .metric(
                    "http_client_request_duration_seconds_count",
                    &["error_type=\"upstream_protocol_error\""]
                )
                .await,
            1.0
        );
    }
}

/// Chunk framing with bare LFs (the "funky chunks" desync class): the client's response is
/// cut off, the line says why, and the connection is not reused for the next request.
#[tokio::test]
async fn bare_lf_in_chunk_lines_or_trailers_breaks_the_body_and_the_connection() {
    for body in [
        "5;a\nXXXX\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nx-t: 1\n\r\n",
    ] {
        // A good chunk first, so the head is on its way to the client before the fault.
        let up = Scripted::start(vec![
            Act::send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"),
            Act::Pause(Duration::from_millis(50)),
            Act::send(body),
        ])
        .await;
        let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
        let client = http1_client();
        let resp = tokio::time::timeout(
            PATIENCE,
            client.request(http::Request::get(proxy.url("/a")).body(Full::default()).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 200, "the head went out before the fault");
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let got = tokio::time::timeout(PATIENCE, resp.into_body().collect())
            .await
            .unwrap();
        assert!(got.is_err(), "{body:?}: the client must see the body break off");
        let line = proxy.access_log(&id).await;
        assert_eq!(line["code"], "upstream_protocol_error", "{body:?}: {line}");
        assert_eq!(line["attempts"][0]["stage"], "body_stream");
        assert_eq!(line["attempts"][0]["code"], "upstream_protocol_error");
        // The next request gets a fresh connection: nothing of the broken one is reused.
        let raw = raw_request(
            proxy.inbound(),
            b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert_eq!(up.connections(), 2, "{body:?}");
    }
}

/// `Content-Length: 10`, three bytes, then silence: the route timeout bounds every silence
/// in the body (RFC-wise the response is still open, but the client must not wait forever).
#[tokio::test]
async fn a_body_that_stalls_after_the_head_is_cut_off_by_the_route_timeout() {
    let up = Scripted::start(vec![
        Act::send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        Act::Hang,
    ])
    .await;
    let proxy = Outrigger::start(&one_route(up.addr(), "timeout: 1s"));
    let started = Instant::now();
    let raw = raw_request(
        proxy.inbound(),
        b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        started.elapsed() < PATIENCE,
        "the client was held until the test gave up"
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.ends_with("\r\n\r\nabc"),
        "three bytes, then the connection closed: {raw:?}"
    );
    let line = proxy.access_log(header_of(&raw, "x-request-id")).await;
    assert_eq!(line["code"], "upstream_timeout");
    assert_eq!(line["class"], "upstream");
    assert_eq!(line["attempts"][0]["status"], 200);
    assert_eq!(line["attempts"][0]["stage"], "body_stream");
    assert_eq!(line["attempts"][0]["code"], "upstream_timeout");
    assert!(
        line["cause"]
            .as_str()
            .unwrap()
            .contains("sent nothing of the response body for 1s"),
        "{line}"
    );
    assert_eq!(
        proxy
            .metric(
                "http_server_request_duration_seconds_count",
                &["error_type=\"upstream_timeout\"", "http_route=\"default\""]
            )
            .await,
        1.0
    );
}

/// `body_idle_timeout` sets the silence apart from the route timeout: a body that keeps
/// flowing is never cut, however long it runs; one that stops is cut after the idle limit,
/// not after the (much longer) route timeout.
#[tokio::test]
async fn body_idle_timeout_cuts_silence_not_long_streams() {
    let mut script = vec![Act::send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")];
    for _ in 0..8 {
        script.push(Act::send("2\r\nok\r\n"));
        script.push(Act::Pause(Duration::from_millis(150)));
    }
    script.push(Act::send("0\r\n\r\n"));
    let up = Scripted::start(script).await;
    // 8 x 150 ms = 1.2 s of body, with no silence longer than 150 ms: longer than the 500 ms idle limit.
    let proxy = Outrigger::start(&one_route(up.addr(), "timeout: 500ms, body_idle_timeout: 500ms"));
    let reply = get(&proxy.url("/stream")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], "ok".repeat(8).as_bytes());

    let up = Scripted::start(vec![
        Act::send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        Act::Hang,
    ])
    .await;
    let proxy = Outrigger::start(&one_route(up.addr(), "timeout: 60s, body_idle_timeout: 300ms"));
    let started = Instant::now();
    let raw = raw_request(
        proxy.inbound(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.ends_with("abc"), "{raw:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cut by the idle limit, not the route timeout"
    );
    let line = proxy.access_log(header_of(&raw, "x-request-id")).await;
    assert_eq!(line["code"], "upstream_timeout");
    assert!(line["cause"].as_str().unwrap().contains("300ms"), "{line}");
}

/// A client's trailer section reaches the upstream without the fields that may not be
/// trailers (framing, routing, authentication, the proxy's own).
#[tokio::test]
async fn request_trailers_carry_no_framing_routing_or_auth_fields() {
    let up = Scripted::start(vec![Act::send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let raw = raw_request(
        proxy.inbound(),
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nx-sum: 42\r\nhost: payments.internal\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\
          authorization: Bearer stolen\r\nx-request-id: forged\r\ngrpc-status: 0\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let requests = up.requests();
    assert_eq!(requests.len(), 1);
    let sent = requests[0].to_ascii_lowercase();
    let (_, trailers) = sent
        .split_once("\r\n0\r\n")
        .expect("a chunked body with its last chunk");
    assert!(trailers.contains("x-sum: 42\r\n"), "{sent}");
    assert!(trailers.contains("grpc-status: 0\r\n"), "{sent}");
    for forbidden in [
        "host:",
        "content-length:",
        "transfer-encoding:",
        "authorization:",
        "x-request-id:",
    ] {
        assert!(
            !trailers.contains(forbidden),
            "{forbidden} went upstream in the trailers: {sent}"
        );
    }
}

/// Bytes after a complete response (a body after a 204, arriving a moment later) are never
/// read as the next request's response.
#[tokio::test]
async fn stray_bytes_after_a_response_never_answer_the_next_request() {
    let up = Scripted::start(vec![
        Act::send("HTTP/1.1 204 No Content\r\n\r\n"),
        Act::Pause(Duration::from_millis(20)),
        Act::send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"),
    ])
    .await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let client = http1_client();
    for _ in 0..4 {
        let reply = send(
            &client,
            http::Request::get(proxy.url("/")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.status, 204, "a stale answer was served: {:?}", reply.body);
        // The stray bytes arrive 20 ms after the 204, before the next request: what the
        // pool must notice when it takes the connection.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(up.requests().len(), 4);
    assert_eq!(up.connections(), 4, "no connection that had stray bytes was reused");
}

/// The client is told the length as a number, once, however the upstream wrote it.
#[tokio::test]
async fn content_length_reaches_the_client_as_the_number() {
    for written in ["005", "5, 5", "5\r\nContent-Length: 5"] {
        let up = Scripted::start(vec![Act::send(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {written}\r\n\r\nhello"
        ))])
        .await;
        let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
        let raw = raw_request(
            proxy.inbound(),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        let head = raw.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert_eq!(head.matches("content-length:").count(), 1, "{head}");
        assert!(
            head.contains("content-length: 5\r\n") || head.ends_with("content-length: 5"),
            "{head}"
        );
        assert!(raw.ends_with("\r\n\r\nhello"), "{raw}");
    }
}

/// An upstream's trailers reach the client without fields that may not be trailers.
#[tokio::test]
async fn response_trailers_carry_no_framing_or_auth_fields() {
    let up = Scripted::start(vec![Act::send(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n2\r\nok\r\n0\r\n\
         x-checksum: 1\r\nset-cookie: session=stolen\r\ncontent-length: 99\r\ngrpc-status: 0\r\n\r\n",
    )])
    .await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let resp = tokio::time::timeout(
        PATIENCE,
        http2_client().request(http::Request::get(proxy.url("/t")).body(Full::default()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("trailers reach an HTTP/2 client");
    assert_eq!(&body.to_bytes()[..], b"ok");
    assert_eq!(trailers["x-checksum"], "1");
    assert_eq!(trailers["grpc-status"], "0");
    assert!(trailers.get("set-cookie").is_none(), "{trailers:?}");
    assert!(trailers.get("content-length").is_none(), "{trailers:?}");
}
