//! Connections to one endpoint: HTTP/1.1 keep-alive connections reused one request at a
//! time (spoken by [`crate::upstream::h1`] inside the request's task), and one multiplexed HTTP/2
//! connection (hyper's client, on a task of its own).
//!
//! We keep our own pool instead of hyper-util's legacy client because the proxy must know,
//! for every attempt, whether the connection was fresh or reused and how long it had been
//! idle (the keep-alive race behind most "connection reset" mysteries), and must choose the
//! endpoint itself while keeping the client's `Host`/`:authority`.
//!
//! An HTTP/1.1 connection goes back to the idle list only once both messages ended cleanly
//! ([`UpstreamBody`] does that when its last frame is read); one abandoned mid-body is closed.
//! An idle connection has no task watching it: one the upstream closed while idle is noticed
//! (without a syscall, from the event loop's readiness) when it is next taken, and skipped.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use rustls_pki_types::ServerName;

use crate::body::{BoxError, RequestBody};
use crate::sys::net::{Socket, Tcp};
use crate::tls::rotate::LiveClient;
use crate::upstream::h1;

/// Pool settings of one upstream.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Close idle connections after this long.
    pub idle_timeout: Duration,
    /// Keep at most this many idle HTTP/1.1 connections.
    pub max_idle: usize,
    /// Speak TLS: the upstream's live client configs, and the `tls.server_name` override.
    pub tls: Option<(Arc<LiveClient>, Option<ServerName<'static>>)>,
}

/// Why a connection could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The connect did not finish in time.
    Timeout(Duration),
    /// The connect failed (refused, unreachable, reset).
    Io(io::Error),
    /// The HTTP handshake failed (HTTP/2 preface rejected).
    Handshake(hyper::Error),
    /// The TLS handshake failed, explained ([`crate::tls::upstream_failure`]).
    Tls(String),
}

impl ConnectError {
    /// A few words for the error detail: "connection refused", "timed out after 1s".
    pub(crate) fn reason(&self) -> String {
        match self {
            ConnectError::Timeout(d) => format!(
                "the connection was not established within {}",
                crate::error::humanize(*d)
            ),
            ConnectError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => {
                    "the connection was refused (nothing is listening on that port)".to_owned()
                }
                io::ErrorKind::ConnectionReset => "the connection was reset while connecting".to_owned(),
                _ => format!("{e}"),
            },
            ConnectError::Handshake(e) => format!("the HTTP/2 handshake failed ({e})"),
            ConnectError::Tls(why) => why.clone(),
        }
    }

    /// The TCP connection was made and the TLS handshake failed.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ConnectError::Tls(_))
    }
}

/// How the connection used for a request was obtained.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    /// It had served requests before.
    pub reused: bool,
    /// How long it had been idle before this request (zero when fresh).
    pub idle_for: Duration,
}

/// The connection an attempt got, noted the moment it has one: an attempt cut off by its
/// timeout drops its send, and with it the send's own answer; this outlives it, so the
/// record still says which connection timed out (or that none was ever made). One word,
/// written with a relaxed store: the attempt's future stays `Send` and allocation-free.
#[derive(Default)]
pub(crate) struct ConnSeen(std::sync::atomic::AtomicU64);

impl ConnSeen {
    const SET: u64 = 1 << 63;
    const REUSED: u64 = 1 << 62;

    /// Notes the connection taken (idle time kept in microseconds, up to 2^62).
    pub(crate) fn note(&self, info: ConnInfo) {
        let idle = u64::try_from(info.idle_for.as_micros()).unwrap_or(u64::MAX) & (Self::REUSED - 1);
        let reused = if info.reused { Self::REUSED } else { 0 };
        self.0
            .store(Self::SET | reused | idle, std::sync::atomic::Ordering::Relaxed);
    }

    /// The connection noted, if any.
    pub(crate) fn get(&self) -> Option<ConnInfo> {
        let v = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (v & Self::SET != 0).then(|| ConnInfo {
            reused: v & Self::REUSED != 0,
            idle_for: Duration::from_micros(v & (Self::REUSED - 1)),
        })
    }
}

struct IdleConn {
    conn: Box<h1::Conn>,
    since: Instant,
}

/// The connections to one resolved endpoint address.
pub(crate) struct EndpointPool {
    addr: SocketAddr,
    label: String,
    /// `"endpoint":…` as access lines carry it.
    log_member: outrigger_telemetry::logging::Rendered,
    settings: PoolSettings,
    /// Oldest first, so expired connections are found at the front and the warmest at the back.
    idle: Mutex<VecDeque<IdleConn>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// The name checked against the upstream's certificate (and sent as SNI), over TLS.
    server_name: Option<ServerName<'static>>,
}

impl EndpointPool {
    /// A pool for `addr` (no connection is made yet). `name` is the configured host when it
    /// was a DNS name, shown beside the address in logs.
    pub(crate) fn new(addr: SocketAddr, name: Option<&str>, settings: PoolSettings) -> Self {
        let label = match name {
            Some(n) => format!("{addr} ({n})"),
            None => addr.to_string(),
        };
        // The configured override, else the endpoint's DNS name, else its address.
        let server_name = settings.tls.as_ref().map(|(_, forced)| {
            forced
                .clone()
                .or_else(|| name.and_then(|n| ServerName::try_from(n.to_owned()).ok()))
                .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
        });
        EndpointPool {
            addr,
            log_member: outrigger_telemetry::logging::rendered(&[("endpoint", &label)]),
            label,
            settings,
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
            server_name,
        }
    }

    /// The address connected to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ip:port` (and the DNS name it came from), for logs and error details.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The DNS name this address was resolved from (`None`: configured as an address).
    pub(crate) fn dns_name(&self) -> Option<&str> {
        self.label.strip_suffix(')')?.rsplit_once(" (").map(|(_, n)| n)
    }

    /// The label as an access line's `endpoint` member.
    pub(crate) fn log_member(&self) -> &outrigger_telemetry::logging::Rendered {
        &self.log_member
    }

    /// A new connection: TCP, then the TLS handshake when the upstream has `tls`, offering
    /// `h2` or `http/1.1` by ALPN. Each step has `connect_timeout`.
    async fn connect(&self, http2: bool) -> Result<Socket, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::Io)?;
        // Small requests must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let (Some((live, _)), Some(name)) = (&self.settings.tls, &self.server_name) else {
            return Ok(Socket::new(stream));
        };
        let config = if http2 {
            live.http2.load_full()
        } else {
            live.http1.load_full()
        };
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name.clone(), Tcp::new(stream));
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => Ok(Socket::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)))),
            Ok(Err(e)) => Err(ConnectError::Tls(crate::tls::upstream_failure(&e))),
            Err(_) => Err(ConnectError::Tls(format!(
                "the TLS handshake did not finish within {}",
                crate::error::humanize(timeout)
            ))),
        }
    }

    /// Sends one request over HTTP/1.1 on an idle connection that is still open, or on a
    /// new one, and waits for the response head.
    ///
    /// An idle connection the upstream closed (the keep-alive race) is found before anything
    /// is written to it when its close has reached us, and skipped; one that closes while the
    /// request is on its way fails the attempt as a reset, which the caller may retry.
    pub(crate) async fn send_http1(
        self: &Arc<Self>,
        head: &http::request::Parts,
        added: &crate::http::added::Added,
        body: RequestBody,
        fresh_only: bool,
        now: Instant,
        seen: &ConnSeen,
    ) -> Result<(Response<UpstreamBody>, ConnInfo), SendError> {
        let (conn, info) = match if fresh_only { None } else { self.take_idle(now) } {
            Some(found) => found,
            None => (
                // Boxed: connecting is rare on a warm pool, and unboxed its state would
                // size every request's future.
                Box::pin(self.connect(false))
                    .await
                    .map(h1::Conn::new)
                    .map_err(SendError::Connect)?,
                ConnInfo {
                    reused: false,
                    idle_for: Duration::ZERO,
                },
            ),
        };
        seen.note(info);
        match h1::Exchange::new(conn, head, added, body).response().await {
            Ok(resp) => {
                let pool = (!resp.body().is_upgrade()).then(|| self.clone());
                Ok((resp.map(|exchange| UpstreamBody::http1(exchange, pool)), info))
            }
            Err(e) => Err(SendError::Http1(e, info)),
        }
    }

    /// Sends one request over this endpoint's HTTP/2 connection, connecting if needed.
    pub(crate) async fn send_http2(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        mut fresh_only: bool,
        seen: &ConnSeen,
    ) -> Result<(Response<UpstreamBody>, ConnInfo), SendError> {
        // At most two passes: the shared connection, then (if it turned out dead) a fresh one.
        loop {
            let existing = if fresh_only {
                None
            } else {
                self.lock_h2().as_ref().filter(|s| !s.is_closed()).cloned()
            };
            let (mut sender, info) = match existing {
                Some(s) => (
                    s,
                    ConnInfo {
                        reused: true,
                        idle_for: Duration::ZERO,
                    },
                ),
                None => (
                    // Boxed, as above (the HTTP/2 handshake's state is over 1 KiB).
                    Box::pin(self.connect_http2()).await?,
                    ConnInfo {
                        reused: false,
                        idle_for: Duration::ZERO,
                    },
                ),
            };
            seen.note(info);
            if let Err(e) = sender.ready().await {
                if info.reused {
                    // The shared connection died (GOAWAY, reset) since it was last used.
                    self.forget_h2();
                    fresh_only = true;
                    continue;
                }
                return Err(SendError::Request(e, info));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp.map(UpstreamBody::http2), info)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed under us. Safe to send on a new one.
                    Some(unsent) if info.reused => {
                        self.forget_h2();
                        fresh_only = true;
                        req = unsent;
                    }
                    _ => return Err(SendError::Request(e.into_error(), info)),
                },
            }
        }
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<RequestBody>, SendError> {
        let io = TokioIo::new(self.connect(true).await.map_err(SendError::Connect)?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(ConnectError::Handshake(e)))?;
        let label = self.label.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        *self.lock_h2() = Some(sender.clone());
        Ok(sender)
    }

    /// Drops the shared HTTP/2 connection if it has closed, so the next request connects anew.
    fn forget_h2(&self) {
        let mut slot = self.lock_h2();
        if slot.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *slot = None;
        }
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Option<http2::SendRequest<RequestBody>>> {
        // A poisoned lock only means another thread panicked while holding a plain Option.
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<IdleConn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open and not too old.
    ///
    /// Bounded work per request whatever the pool size: no clock read (`now` is the attempt's
    /// start), expired connections popped from the front, and a scan from the back that
    /// usually stops at the first entry (a scan over the whole list grows with the number of
    /// client connections).
    fn take_idle(&self, now: Instant) -> Option<(Box<h1::Conn>, ConnInfo)> {
        loop {
            // The socket is asked outside the lock (a syscall).
            let found = {
                let mut idle = self.lock_idle();
                drop_expired(&mut idle, now, self.settings.idle_timeout);
                idle.pop_back()?
            };
            let idle_for = now.saturating_duration_since(found.since);
            if found.conn.is_open(idle_for) {
                return Some((found.conn, ConnInfo { reused: true, idle_for }));
            }
            tracing::debug!(endpoint = %self.label, "idle upstream connection was closed by the upstream; skipped");
        }
    }

    /// Keeps `conn`, idle since `now`, for a later request.
    fn checkin(&self, conn: Box<h1::Conn>, now: Instant) {
        if self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.lock_idle();
        drop_expired(&mut idle, now, self.settings.idle_timeout);
        if idle.len() >= self.settings.max_idle {
            idle.pop_front();
        }
        idle.push_back(IdleConn { conn, since: now });
    }
}

/// Closes the connections at the front of `idle` that have been idle for `timeout`.
fn drop_expired(idle: &mut VecDeque<IdleConn>, now: Instant, timeout: Duration) {
    while idle
        .front()
        .is_some_and(|c| now.saturating_duration_since(c.since) >= timeout)
    {
        idle.pop_front();
    }
}

/// Why an attempt failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made.
    Connect(ConnectError),
    /// The HTTP/2 request or response failed on an established connection.
    Request(hyper::Error, ConnInfo),
    /// The HTTP/1.1 exchange failed on an established connection.
    Http1(h1::Error, ConnInfo),
}

/// An upstream response body. Over HTTP/1.1 reading it drives the exchange (and the rest of
/// the request body); once it has ended cleanly the connection goes back to the pool.
pub(crate) struct UpstreamBody(Inner);

enum Inner {
    Http1 {
        exchange: h1::Exchange,
        /// Where the connection goes back to; `None` when it cannot be reused (an upgrade).
        pool: Option<Arc<EndpointPool>>,
        /// When the body came whole with the head: the head's arrival, which the connection
        /// is idle since (no clock read when the body ends). See [`UpstreamBody::headed_at`].
        idle_from: Option<Instant>,
    },
    Http2(Incoming),
    /// The HTTP/1.1 body ended and its connection was handed back (or closed).
    Ended,
}

impl UpstreamBody {
    fn http1(exchange: h1::Exchange, pool: Option<Arc<EndpointPool>>) -> Self {
        let mut body = UpstreamBody(Inner::Http1 {
            exchange,
            pool,
            idle_from: None,
        });
        if body.is_end_stream() && !body.is_upgrade() {
            body.release(Instant::now());
        }
        body
    }

    /// The response head arrived at `at` (the attempt's end, which the caller reads anyway):
    /// a body that came whole with it leaves its connection idle from then on, and the pool
    /// takes that time instead of reading the clock when the body has been read.
    pub(crate) fn headed_at(&mut self, at: Instant) {
        if let Inner::Http1 {
            exchange, idle_from, ..
        } = &mut self.0
            && exchange.body_buffered()
        {
            *idle_from = Some(at);
        }
    }

    fn http2(inner: Incoming) -> Self {
        UpstreamBody(Inner::Http2(inner))
    }

    fn is_upgrade(&self) -> bool {
        matches!(&self.0, Inner::Http1 { exchange, .. } if exchange.is_upgrade())
    }

    /// Returns a finished HTTP/1.1 connection to its pool, when it can carry another
    /// request. `now`: when the body ended.
    fn release(&mut self, now: Instant) {
        if let Inner::Http1 { exchange, pool, .. } = std::mem::replace(&mut self.0, Inner::Ended)
            && let (Some(pool), Some(conn)) = (pool, exchange.into_reusable())
        {
            pool.checkin(conn, now);
        }
    }

    /// After `101 Switching Protocols` from an HTTP/1.1 upstream: its connection, for the
    /// tunnel. `None` for any other response.
    pub(crate) fn take_upgrade(&mut self) -> Option<h1::Upgraded> {
        if !self.is_upgrade() {
            return None;
        }
        match std::mem::replace(&mut self.0, Inner::Ended) {
            Inner::Http1 { exchange, .. } => exchange.into_upgraded(),
            _ => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.0 {
            Inner::Http1 {
                exchange, idle_from, ..
            } => {
                let idle_from = *idle_from;
                let frame = ready!(Pin::new(exchange).poll_frame(cx));
                match &frame {
                    Some(Ok(_)) if !this.is_end_stream() => {}
                    // Ended, cleanly or not: `release` reuses the connection only when clean.
                    _ => this.release(idle_from.unwrap_or_else(Instant::now)),
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Inner::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            Inner::Ended => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Http1 { exchange, .. } => exchange.is_end_stream(),
            Inner::Http2(body) => body.is_end_stream(),
            Inner::Ended => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Http1 { exchange, .. } => exchange.size_hint(),
            Inner::Http2(body) => body.size_hint(),
            Inner::Ended => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    fn pool(max_idle: usize) -> EndpointPool {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            max_idle,
            tls: None,
        };
        EndpointPool::new("127.0.0.1:1".parse().expect("addr"), None, settings)
    }

    /// A connected pair: our side as a pooled connection, and the upstream's socket.
    async fn conn(listener: &TcpListener) -> (Box<h1::Conn>, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            h1::Conn::new(Socket::new(ours.expect("connect"))),
            theirs.expect("accept").0,
        )
    }

    fn id(conn: &h1::Conn) -> *const h1::Conn {
        std::ptr::from_ref(conn)
    }

    /// The most recently used connection is taken first, with its idle age; connections idle
    /// for the pool's `idle_timeout` are dropped, not handed out; at most `max_idle` are kept
    /// (the oldest goes). Time is tokio's, paused and advanced by the test.
    #[tokio::test(start_paused = true)]
    async fn the_freshest_connection_first_expired_ones_never_and_at_most_max_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let p = pool(2);
        let (a, _ua) = conn(&listener).await;
        let (b, _ub) = conn(&listener).await;
        let (c, _uc) = conn(&listener).await;
        let (idb, idc) = (id(&b), id(&c));
        let t0 = Instant::now();
        p.checkin(a, t0);
        p.checkin(b, t0 + Duration::from_secs(1));
        p.checkin(c, t0 + Duration::from_secs(2));
        // Two kept (max_idle: 2): `a`, the oldest, went.
        let (got, info) = p.take_idle(t0 + Duration::from_secs(3)).expect("an idle connection");
        assert_eq!(id(&got), idc, "the most recently used first");
        assert!(info.reused);
        assert_eq!(info.idle_for, Duration::from_secs(1));
        let (got, _) = p.take_idle(t0 + Duration::from_secs(3)).expect("the other");
        assert_eq!(id(&got), idb);
        assert!(
            p.take_idle(t0 + Duration::from_secs(3)).is_none(),
            "`a`, the oldest, was let go"
        );

        // Idle for the pool's idle_timeout (4 s): dropped, not handed out.
        p.checkin(got, t0 + Duration::from_secs(3));
        assert!(p.take_idle(t0 + Duration::from_secs(7)).is_none());
    }

    /// A connection the upstream closed while it waited is skipped (the keep-alive race is
    /// not run into when it can be seen), and the next one is handed out.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let p = pool(4);
        let (a, _ua) = conn(&listener).await;
        let (b, ub) = conn(&listener).await;
        let ida = id(&a);
        let now = Instant::now();
        p.checkin(a, now);
        p.checkin(b, now);
        drop(ub);
        // A peek after a long idle sees the close at once.
        let later = now + Duration::from_secs(2);
        let (got, _) = p.take_idle(later).expect("the open one");
        assert_eq!(id(&got), ida);
        assert!(p.take_idle(later).is_none());
    }
}
