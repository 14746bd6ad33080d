//! Hostile and malformed client input: rejected clearly, never forwarded.

use std::time::Duration;

use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn garbage_request_line_gets_400_and_nothing_is_forwarded() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let resp = raw_request(proxy.inbound(), b"\x16\x03\x01 this is not http\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_inbound_limits(&config(&[up.addr()], DEFAULT_ROUTE), "max_header_bytes: 16384");
    let proxy = Outrigger::start(&yaml);
    // Over the listener limit but within hyper's read buffer: a full problem+json 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(16_500)
    );
    let resp = raw_request(proxy.inbound(), big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert!(resp.contains("outrigger-error: header_too_large"), "{resp}");
    assert!(resp.contains("\"code\":\"header_too_large\""), "{resp}");
    // Far beyond: refused while the head is still being read (bare 431).
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let resp = raw_request(proxy.inbound(), huge.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert_eq!(up.requests(), 0);
    let line = proxy.wait_for_log(|l| l["code"] == "header_too_large").await;
    assert_eq!(line["class"], "client");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_te_and_nothing_is_smuggled() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let smuggle = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = raw_request(proxy.inbound(), smuggle).await;
    // RFC 9112 §6.1: Transfer-Encoding wins, Content-Length is dropped, and the connection
    // closes after the response, so the bytes after the chunked body are never a request.
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "exactly one response: {resp}");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    assert!(resp.contains("connection: close"), "{resp}");
    assert!(
        resp.contains("\"body_len\":0"),
        "the chunked body (empty) is what was forwarded: {resp}"
    );
    assert!(
        !resp.contains("content-length\":"),
        "Content-Length is not forwarded: {resp}"
    );
    assert_eq!(up.requests(), 1, "the smuggled GET never reaches the upstream");
}

#[tokio::test]
async fn duplicate_conflicting_content_length_is_refused() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let resp = raw_request(
        proxy.inbound(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn a_client_that_trickles_headers_is_cut_off() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_inbound_limits(&config(&[up.addr()], DEFAULT_ROUTE), "header_read_timeout: 300ms");
    let proxy = Outrigger::start(&yaml);
    let mut s = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Never finish the head; the proxy must give up on us.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection was not closed");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn a_client_that_connects_and_stays_silent_is_cut_off() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_inbound_limits(&config(&[up.addr()], DEFAULT_ROUTE), "header_read_timeout: 300ms");
    let proxy = Outrigger::start(&yaml);
    // Silent from the start, and silent after the first bytes of an HTTP/2 preface (the
    // proxy cannot tell the protocol yet): both are closed after the header read timeout.
    for opening in [&b""[..], b"PRI * HTTP/2"] {
        let mut s = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
        s.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "connection opened with {opening:?} was not closed");
    }
    assert_eq!(get(&proxy.url("/")).await.status, 200, "still serving");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn idle_client_connections_are_closed_after_the_idle_timeout() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_inbound_limits(
        &config(&[up.addr()], DEFAULT_ROUTE),
        "idle_timeout: 400ms, header_read_timeout: 30s",
    );
    let proxy = Outrigger::start(&yaml);
    let mut s = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("idle connection closed")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        started.elapsed()
    );
}

/// Sends one request on an open connection and reads its (short) response.
async fn exchange_on(s: &mut tokio::net::TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_kept_alive_connection_waits_for_the_idle_timeout_not_the_header_read_timeout() {
    // The header read timeout times a head from its first bytes; between requests the
    // listener's idle timeout applies (clients keep connections warm far longer than 10 s).
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_inbound_limits(
        &config(&[up.addr()], DEFAULT_ROUTE),
        "header_read_timeout: 200ms, idle_timeout: 60s",
    );
    let proxy = Outrigger::start(&yaml);
    let mut s = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    assert!(exchange_on(&mut s).await.starts_with("HTTP/1.1 200"));
    // Proving a close does not happen takes waiting: past 30 s, hyper's own default header
    // read timeout, which would otherwise close the connection while it waits.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let again = exchange_on(&mut s).await;
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "the idle connection was closed: {again:?}"
    );
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn a_head_trickled_on_a_kept_alive_connection_is_cut_off() {
    let up = Upstream::start(Mode::Ok).await;
    let yaml = with_inbound_limits(
        &config(&[up.addr()], DEFAULT_ROUTE),
        "header_read_timeout: 300ms, idle_timeout: 60s",
    );
    let proxy = Outrigger::start(&yaml);
    let mut s = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    assert!(exchange_on(&mut s).await.starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    s.write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("the unfinished head was cut off")
        .unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Well before the 60 s idle timeout, and not before the header read timeout.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert_eq!(up.requests(), 1);
}
