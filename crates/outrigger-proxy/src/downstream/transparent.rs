//! Transparent mode: connections that netfilter redirected to a listener
//! (`outrigger init-iptables`), told apart by their original destination.
//!
//! A redirected connection is served by the routes when a route claims its destination
//! (outbound: a route whose `destination` matches; inbound: also one without a
//! `destination`) and it speaks HTTP (its first bytes are peeked, not read). Everything
//! else (no route for the destination, TLS the app originates, a protocol that is not
//! HTTP, a client that waits for the server to speak first) follows the listener's
//! `unmatched`: forwarded untouched as TCP to where it was going, or closed. Request heads
//! are not looked into here: hyper stays the one parser of request bytes. A connection whose original
//! destination is outrigger itself is always closed: forwarding it would loop.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use outrigger_config::Unmatched;

use crate::runtime::Runtime;

/// How long a redirected connection may stay silent before it is taken for a protocol in
/// which the server speaks first (SMTP, MySQL): such a client would wait for ever for a
/// request outrigger never sends.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// Connecting to the original destination of a passed-through connection gives up after
/// this long (the app believes it is connected meanwhile).
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection to outrigger itself is refused.
const LOOP: &str = "its original destination is outrigger itself (a forwarding loop)";

/// Where an accepted connection was going, when netfilter redirected it here (its original
/// destination differs from the address it arrived on). IPv4 addresses carried in IPv6 are
/// given as IPv4.
pub(crate) fn original_destination(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let found = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        // An IPv6 socket may carry IPv4 connections, whose record is IPv4's.
        SocketAddr::V6(_) => socket.original_dst_v6().or_else(|_| socket.original_dst_v4()),
    };
    let dst = canonical(found.ok()?.as_socket()?);
    (dst != canonical(local)).then_some(dst)
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// What becomes of a redirected connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A route takes it: served as HTTP.
    Serve,
    /// Forwarded as TCP to its original destination, and why it was not served.
    Passthrough(&'static str),
    /// Closed, and why.
    Refuse(&'static str),
    /// The client closed before sending anything.
    Closed,
}

/// The facts a decision is made on, besides the connection's first bytes.
pub(crate) struct Redirected<'a> {
    pub(crate) runtime: &'a Runtime,
    /// The listener's index in `runtime`.
    pub(crate) listener: usize,
    pub(crate) unmatched: Unmatched,
    /// The address the connection arrived on (after the redirect).
    pub(crate) local: SocketAddr,
    /// Its original destination.
    pub(crate) destination: SocketAddr,
    /// The listener terminates TLS (the connection is then never looked into before the
    /// handshake: only its destination decides).
    pub(crate) tls: bool,
    pub(crate) header_read_timeout: Duration,
}

impl Redirected<'_> {
    /// Decides what becomes of the connection, peeking at its first bytes where that is
    /// needed (nothing is consumed).
    pub(crate) async fn decide(&self, stream: &TcpStream, peer: SocketAddr) -> Decision {
        if self.loops(peer) {
            return Decision::Refuse(LOOP);
        }
        let unmatched = |why| match self.unmatched {
            Unmatched::Passthrough => Decision::Passthrough(why),
            Unmatched::Refuse => Decision::Refuse(why),
        };
        let outbound = self.runtime.is_outbound(self.listener);
        if !self
            .runtime
            .router
            .serves_destination(self.listener, self.destination, outbound)
        {
            return unmatched("no route matches its original destination");
        }
        if self.tls {
            return Decision::Serve;
        }
        // A request line longer than this is served (hyper answers it).
        let mut buf = vec![0u8; 8192];
        match peek_head(stream, &mut buf, self.header_read_timeout).await {
            Ok(Peeked::Http1 | Peeked::Http2 | Peeked::Partial) => Decision::Serve,
            Ok(Peeked::Tls) => unmatched("it is TLS (outrigger never intercepts an app's own TLS)"),
            Ok(Peeked::NotHttp) => unmatched("it does not speak HTTP"),
            Ok(Peeked::Silent) => unmatched("it sent nothing within 1s (a protocol in which the server speaks first?)"),
            Ok(Peeked::Closed) | Err(_) => Decision::Closed,
        }
    }

    /// Whether forwarding the connection would bring it back here: its original
    /// destination is one of outrigger's own ports on one of this host's addresses, or it
    /// comes from one of outrigger's own passed-through connections (the redirect rules do
    /// not exclude outrigger's traffic).
    fn loops(&self, peer: SocketAddr) -> bool {
        let ours = OUR_PASSTHROUGH.lock().unwrap_or_else(PoisonError::into_inner);
        if ours.as_ref().is_some_and(|set| set.contains(&canonical(peer))) {
            return true;
        }
        drop(ours);
        let config = &self.runtime.config;
        let port = self.destination.port();
        let ours = port == self.local.port()
            || config.admin.address.port() == port
            || config.listeners.iter().any(|l| l.address.port() == port);
        ours && is_local(self.destination.ip())
    }
}

/// The local ends of outrigger's own passed-through connections, so one that the redirect
/// rules send back here is recognised ([`Redirected::loops`]).
static OUR_PASSTHROUGH: Mutex<Option<HashSet<SocketAddr>>> = Mutex::new(None);

/// Whether `ip` is one of this host's (this network namespace's) addresses: only those can
/// be bound.
fn is_local(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Whether the first bytes can begin an HTTP/1 request: a method (upper-case letters) and a
/// space, and, once the first line has ended, ` HTTP/1.0` or ` HTTP/1.1` at its end (so a
/// line protocol such as Redis's `SET k v` is not taken for HTTP and waited on).
fn looks_like_http1(seen: &[u8]) -> bool {
    let method = seen.iter().take_while(|b| **b != b' ').count();
    if !seen[..method].iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    match seen.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &seen[..end];
            method > 0 && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        }
        None => true,
    }
}

enum Peeked {
    /// A whole HTTP/1 request line (or as much as fits the buffer).
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// HTTP/1-looking bytes whose first line did not complete within the header read timeout.
    Partial,
    /// A TLS handshake record.
    Tls,
    /// Bytes that are not the start of an HTTP request.
    NotHttp,
    /// Nothing within [`FIRST_BYTES_WAIT`].
    Silent,
    /// Closed before any byte.
    Closed,
}

/// The first bytes of every HTTP/2 connection (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks at the connection's first bytes until they tell what it speaks: for HTTP/1, until
/// the first request line is complete (or fills `buf`).
async fn peek_head(stream: &TcpStream, buf: &mut [u8], header_read_timeout: Duration) -> io::Result<Peeked> {
    let first_wait = FIRST_BYTES_WAIT.min(header_read_timeout);
    let Ok(first) = tokio::time::timeout(first_wait, stream.peek(buf)).await else {
        return Ok(Peeked::Silent);
    };
    let mut n = first?;
    let until = Instant::now() + header_read_timeout;
    loop {
        if n == 0 {
            return Ok(Peeked::Closed);
        }
        let seen = &buf[..n];
        if seen[0] == 0x16 {
            return Ok(Peeked::Tls);
        }
        if H2_PREFACE.starts_with(seen) || seen.starts_with(H2_PREFACE) {
            if seen.len() >= H2_PREFACE.len() {
                return Ok(Peeked::Http2);
            }
        } else if !looks_like_http1(seen) {
            return Ok(Peeked::NotHttp);
        } else if seen.windows(2).any(|w| w == b"\r\n") || n == buf.len() {
            return Ok(Peeked::Http1);
        }
        if Instant::now() >= until {
            return Ok(Peeked::Partial);
        }
        // More is on its way (a head split across segments is rare): peeking again at once
        // would spin on the bytes already here.
        tokio::time::sleep(Duration::from_millis(5)).await;
        n = stream.peek(buf).await?;
    }
}

/// Forwards `client` untouched to `destination` until either side closes. A destination
/// that cannot be reached resets the client's connection (the app sees the failure it
/// would have seen without outrigger). Logged when it ends.
pub(crate) async fn passthrough(
    runtime: Arc<Runtime>,
    listener: Arc<str>,
    mut client: TcpStream,
    peer: SocketAddr,
    destination: SocketAddr,
    why: &'static str,
) {
    let started = Instant::now();
    let metrics = &runtime.metrics;
    metrics
        .redirected_connections
        .with_label_values(&[&listener, "passthrough"])
        .inc();
    let connected = match tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(destination)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no connection within {}",
            crate::error::humanize(PASSTHROUGH_CONNECT_TIMEOUT)
        )),
    };
    let mut upstream = match connected {
        Ok(s) => s,
        Err(error) => {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            if allowed(&runtime, "passthrough", &listener) {
                tracing::warn!(
                    kind = "passthrough",
                    listener = %listener,
                    client = %peer,
                    destination = %destination,
                    error = %error,
                    "A connection redirected to listener '{listener}' was passed through to {destination} ({why}), which could not be reached: {error}. The app's connection was reset, as it would have been without outrigger."
                );
            }
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let local = upstream.local_addr().ok().map(canonical);
    if let Some(a) = local {
        OUR_PASSTHROUGH
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(a);
    }
    let moved = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    if let Some(a) = local
        && let Some(set) = OUR_PASSTHROUGH.lock().unwrap_or_else(PoisonError::into_inner).as_mut()
    {
        set.remove(&a);
    }
    if allowed(&runtime, "passthrough", &listener) {
        let (sent, received, error) = match &moved {
            Ok((up, down)) => (*up, *down, None),
            Err(e) => (0, 0, Some(e.to_string())),
        };
        tracing::info!(
            kind = "passthrough",
            listener = %listener,
            client = %peer,
            destination = %destination,
            why,
            bytes_sent = sent,
            bytes_received = received,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error = error.as_deref(),
            "A connection redirected to listener '{listener}' was passed through to {destination} untouched: {why}."
        );
    }
}

/// Counts and (rate-limited, like every other kind of line) logs a refused connection.
pub(crate) fn refused(runtime: &Runtime, listener: &Arc<str>, peer: SocketAddr, destination: SocketAddr, why: &str) {
    runtime
        .metrics
        .redirected_connections
        .with_label_values(&[listener, "refused"])
        .inc();
    let hint = if why == LOOP {
        "The redirect rules must leave outrigger's own traffic (its uid) and traffic within the pod alone, as `outrigger init-iptables` does"
    } else {
        "With `unmatched: refuse` only what a route takes gets through"
    };
    if allowed(runtime, "refused", listener) {
        tracing::warn!(
            kind = "refused",
            listener = %listener,
            client = %peer,
            destination = %destination,
            why,
            "A connection redirected to listener '{listener}' for {destination} was closed: {why}. {hint}; see docs/transparent.md."
        );
    }
}

fn allowed(runtime: &Runtime, kind: &'static str, listener: &Arc<str>) -> bool {
    runtime
        .sinks
        .log_limiter
        .allow(kind, listener, std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_can_begin_an_http1_request_is_taken_for_one() {
        for yes in [
            &b"G"[..],
            b"GET",
            b"GET /",
            b"GET / HTTP/1.1\r\n",
            b"POST /x HTTP/1.0\r\nHost: a",
        ] {
            assert!(looks_like_http1(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"\x16\x03\x01"[..],
            b"get / HTTP/1.1",
            b"SET k v\r\n",
            b"PING\r\n",
            b"GET / HTTP/2.0\r\n",
            b" / HTTP/1.1\r\n",
        ] {
            assert!(!looks_like_http1(no), "{}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn loopback_and_unspecified_addresses_are_local_and_documentation_ones_are_not() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("0.0.0.0".parse().unwrap()));
        assert!(!is_local("192.0.2.1".parse().unwrap()));
    }
}
