//! Listeners: accepting connections, terminating TLS where configured, speaking HTTP/1.1 and
//! HTTP/2 (h2c prior knowledge, or ALPN over TLS) on the same port, enforcing the
//! listener's limits, and draining on shutdown.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use outrigger_config::ListenerLimits;

use super::transparent::Decision;
use crate::path::ConnCtx;
use crate::runtime::{LiveRuntime, Runtime};
use crate::sys::net::{Socket, Tcp};
use crate::tls::PeerIdentity;
use crate::tls::rotate::LiveServer;

/// The HTTP server settings of one listener: HTTP/1.1 and HTTP/2 (prior knowledge, told
/// apart by the connection's first bytes) on the same port.
pub(crate) struct HttpServer {
    header_read_timeout: Duration,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// The first bytes of every HTTP/2 connection (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl HttpServer {
    pub(crate) fn new(limits: &ListenerLimits) -> HttpServer {
        // hyper's read buffer bounds the request head; it cannot go below 8 KiB. The exact
        // listener limit is checked again on the parsed head (431 problem+json).
        let max_buf = (limits.max_header_bytes + 1024).max(8192);
        let mut http1 = http1::Builder::new();
        // No hyper `header_read_timeout` (its default is 30 s once a timer is set, so it is
        // switched off explicitly): hyper starts it when it begins waiting for the next head,
        // so it also closed keep-alive connections idle for that long instead of the
        // listener's `idle_timeout`, and it boxed a new timer for every request. The
        // connection's watch times heads from their first bytes instead.
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_buf)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // Bounds on abusive clients (rapid reset, CVE-2023-44487): hyper's defaults, made explicit.
            .max_concurrent_streams(1024)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024);
        HttpServer {
            header_read_timeout: limits.header_read_timeout,
            http1,
            http2,
        }
    }
}

/// One listener's accept loop, as the server starts it (again after a reload that changed
/// its settings but not its address).
pub(crate) struct AcceptLoop {
    /// The bound socket.
    pub(crate) socket: TcpListener,
    /// The listener's name, as the runtime holds it.
    pub(crate) name: Arc<str>,
    /// Its limits.
    pub(crate) limits: ListenerLimits,
    /// Its TLS, when it terminates TLS.
    pub(crate) tls: Option<Arc<LiveServer>>,
}

/// How an accept loop ended.
pub(crate) enum Ended {
    /// Asked to stop: the socket is closed.
    Stopped,
    /// Asked to hand its socket over (a reload changed the listener's settings): the socket
    /// is still bound and keeps its backlog, so no connection attempt is refused meanwhile.
    HandedOver(TcpListener),
}

impl AcceptLoop {
    /// Accepts connections until `stop` turns true (then the socket closes) or `handover`
    /// fires (then the socket is returned). Each connection holds a clone of `alive` until
    /// it has closed, so the caller can wait for them all, and watches `stop` to close
    /// gracefully. Every request reads the runtime that is live when it arrives.
    pub(crate) async fn run(
        self,
        live: Arc<LiveRuntime>,
        mut stop: watch::Receiver<bool>,
        mut handover: tokio::sync::oneshot::Receiver<()>,
        alive: mpsc::Sender<()>,
    ) -> Ended {
        let AcceptLoop {
            socket,
            name,
            limits,
            tls,
        } = self;
        let builder = Arc::new(HttpServer::new(&limits));
        let handshakes = tls.map(|live_tls| Arc::new(Handshakes::new(live_tls, &name, &live.load().metrics)));
        let mut hint = 0;
        loop {
            let accepted = tokio::select! {
                r = socket.accept() => r,
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                _ = &mut handover => return Ended::HandedOver(socket),
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(kind = "listener", error = %e, "Accepting a connection failed; retrying in 50ms.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if let Some((i, _)) = live.load().listener(&name, hint) {
                hint = i;
            }
            tokio::spawn(serve_connection(
                Accepted {
                    stream,
                    peer,
                    listener: name.clone(),
                    hint,
                    handshakes: handshakes.clone(),
                },
                live.clone(),
                builder.clone(),
                limits.idle_timeout,
                stop.clone(),
                alive.clone(),
            ));
        }
    }
}

/// A connection just accepted, and what its listener does with it first.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    /// The listener's index in the live runtime.
    hint: usize,
    /// The listener's TLS, when it terminates TLS.
    handshakes: Option<Arc<Handshakes>>,
}

/// A connection ready for HTTP: its socket, whether it speaks HTTP/1.1 (else HTTP/2), and
/// the client's identity from its certificate (mTLS).
struct Opened {
    io: Socket,
    http1: bool,
    identity: Option<PeerIdentity>,
}

impl Accepted {
    /// Tells HTTP/1.1 from HTTP/2 (by the first bytes, or by ALPN after the TLS handshake),
    /// within the header read timeout. `None`: nothing to serve (closed, silent, failed
    /// handshake).
    async fn open(self, header_read_timeout: Duration) -> Option<Opened> {
        let Some(handshakes) = self.handshakes else {
            // HTTP/1.1 is told from HTTP/2 by peeking, so hyper reads the first request whole
            // and in one piece. (hyper-util's `auto` detection reads the first bytes itself
            // and hands them back in a short first read; it also has no time limit while it
            // waits for them.)
            let http1 = match tokio::time::timeout(header_read_timeout, sniff(&self.stream)).await {
                Ok(Ok(Sniffed::Http1)) => true,
                Ok(Ok(Sniffed::Http2)) => false,
                // Closed, failed or silent before sending a byte: nothing to answer.
                Ok(Ok(Sniffed::Closed) | Err(_)) | Err(_) => return None,
            };
            return Some(Opened {
                io: Socket::new(self.stream),
                http1,
                identity: None,
            });
        };
        let accept = tokio_rustls::TlsAcceptor::from(handshakes.live.load_full()).accept(Tcp::new(self.stream));
        let tls = match tokio::time::timeout(header_read_timeout, accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                handshakes.failed(self.peer, &e);
                return None;
            }
            Err(_) => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the handshake did not finish within {} (header_read_timeout)",
                        crate::error::humanize(header_read_timeout)
                    ),
                );
                handshakes.failed(self.peer, &e);
                return None;
            }
        };
        let session = tls.get_ref().1;
        let http1 = session.alpn_protocol() != Some(b"h2");
        let identity = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(PeerIdentity::of);
        Some(Opened {
            io: Socket::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))),
            http1,
            identity,
        })
    }
}

/// A TLS listener's handshakes: its live config, the failure counter, and when each client
/// address was last logged (a failing client is logged once a minute, not per attempt).
struct Handshakes {
    live: Arc<LiveServer>,
    listener: Arc<str>,
    /// One counter per reason, resolved at start (so each shows as 0 until it happens).
    failures: Vec<(&'static str, prometheus::IntCounter)>,
    logged: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, tokio::time::Instant>>,
}

impl Handshakes {
    /// How often one client address is logged.
    const LOG_EVERY: Duration = Duration::from_secs(60);
    /// Client addresses remembered for that, at most (a scan from many addresses must not
    /// grow memory).
    const REMEMBERED: usize = 4096;

    fn new(live: Arc<LiveServer>, listener: &Arc<str>, metrics: &outrigger_telemetry::Metrics) -> Self {
        let reasons = [
            "no_client_cert",
            "unknown_ca",
            "expired",
            "bad_certificate",
            "protocol_version",
            "other",
        ];
        Handshakes {
            live,
            listener: listener.clone(),
            failures: reasons
                .into_iter()
                .map(|r| (r, metrics.tls_handshake_failures.with_label_values(&[listener, r])))
                .collect(),
            logged: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Counts and (at most once a minute per client address) logs a failed handshake. A
    /// client that closes before saying anything (a TCP health probe) is not a failure.
    fn failed(&self, peer: SocketAddr, e: &io::Error) {
        if !crate::tls::is_tls_error(e)
            && matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        {
            tracing::debug!(client = %peer, error = %e, "TLS client closed before completing a handshake");
            return;
        }
        let reason = crate::tls::inbound_failure(e);
        if let Some((_, c)) = self.failures.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
        let now = tokio::time::Instant::now();
        let due = {
            let mut logged = self.logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if logged.len() >= Self::REMEMBERED {
                logged.retain(|_, at| now.saturating_duration_since(*at) < Self::LOG_EVERY);
                if logged.len() >= Self::REMEMBERED {
                    logged.clear();
                }
            }
            match logged.get(&peer.ip()) {
                Some(at) if now.saturating_duration_since(*at) < Self::LOG_EVERY => false,
                _ => {
                    logged.insert(peer.ip(), now);
                    true
                }
            }
        };
        if due {
            tracing::warn!(
                kind = "tls",
                listener = %self.listener,
                client = %peer.ip(),
                reason,
                error = %e,
                "A TLS handshake from {} on listener '{}' failed: {reason} ({e}). Logged once a minute per client address; outrigger_tls_handshake_failures_total counts them all.",
                peer.ip(),
                self.listener,
            );
        }
    }
}

async fn serve_connection(
    accepted: Accepted,
    live: Arc<LiveRuntime>,
    builder: Arc<HttpServer>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let (peer, listener, hint, tls) = (
        accepted.peer,
        accepted.listener.clone(),
        accepted.hint,
        accepted.handshakes.is_some(),
    );
    // Where the client was going: a redirected connection's original destination, else
    // this listener's own address.
    let local = accepted.stream.local_addr().unwrap_or(peer);
    let redirected = super::transparent::original_destination(&accepted.stream, local);
    let accepted = match redirected {
        Some(destination) => {
            let header_read_timeout = builder.header_read_timeout;
            match take_redirected(accepted, destination, local, &live, header_read_timeout, &mut stop).await {
                Some(served) => served,
                None => return,
            }
        }
        None => accepted,
    };
    let opened = tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => return,
        o = accepted.open(builder.header_read_timeout) => o,
    };
    let Some(Opened {
        io: socket,
        http1: plain_http1,
        identity,
    }) = opened
    else {
        return;
    };
    let ctx = Arc::new(ConnCtx {
        listener,
        listener_hint: hint,
        active: Arc::new(AtomicUsize::new(0)),
        forwarding: crate::http::headers::Forwarding::new(peer.ip(), if tls { "https" } else { "http" }),
        identity,
        destination: redirected.unwrap_or(local),
        redirected: redirected.is_some(),
        attempt_timer: std::sync::Mutex::new(None),
    });
    let traffic = Arc::new(Traffic {
        moved: AtomicU64::new(0),
        head_ticks: AtomicU32::new(0),
        active: ctx.active.clone(),
        time_heads: plain_http1,
    });
    let io = TokioIo::new(ActivityIo {
        inner: socket,
        traffic: traffic.clone(),
    });
    let watch = Watch {
        traffic: traffic.clone(),
        idle_timeout,
        header_read_timeout: plain_http1.then_some(builder.header_read_timeout),
        stop,
    };
    // Boxed, so each connection holds memory for its own protocol's state only (an idle
    // HTTP/1.1 connection would otherwise carry room for an HTTP/2 one).
    if plain_http1 {
        // hyper keeps one boxed slot per connection for the request in progress.
        let service = service_fn(move |req| {
            // A whole head has arrived: its clock stops.
            traffic.head_ticks.store(0, Ordering::Relaxed);
            respond(live.load_full(), ctx.clone(), req)
        });
        let conn = builder.http1.serve_connection(io, service).with_upgrades();
        Box::pin(watch.drive(conn, |c| c.graceful_shutdown())).await;
    } else {
        // Each HTTP/2 stream is a task of its own: boxed, the request's future (~3.5 KiB) is
        // not moved into the stream and then into the task. Written into an uninitialized box
        // because `Box::pin` copies it twice on the way (docs/performance.md).
        let service = service_fn(move |req| {
            Box::into_pin(Box::write(
                Box::new_uninit(),
                respond(live.load_full(), ctx.clone(), req),
            ))
        });
        let conn = builder.http2.serve_connection(io, service);
        Box::pin(watch.drive(conn, |c| c.graceful_shutdown())).await;
    }
}

/// A connection redirected to this listener (transparent mode): returned when the routes
/// serve it; passed through to `destination` or refused here otherwise (`None`).
async fn take_redirected(
    accepted: Accepted,
    destination: SocketAddr,
    local: SocketAddr,
    live: &LiveRuntime,
    header_read_timeout: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<Accepted> {
    let (peer, listener) = (accepted.peer, accepted.listener.clone());
    let runtime = live.load_full();
    let (index, listener_rt) = runtime.listener(&listener, accepted.hint)?;
    let redirect = super::transparent::Redirected {
        runtime: &runtime,
        listener: index,
        unmatched: listener_rt.unmatched,
        local,
        destination,
        tls: accepted.handshakes.is_some(),
        header_read_timeout,
    };
    let decision = tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => return None,
        d = redirect.decide(&accepted.stream, peer) => d,
    };
    match decision {
        Decision::Serve => {
            runtime
                .metrics
                .redirected_connections
                .with_label_values(&[&listener, "http"])
                .inc();
            Some(accepted)
        }
        Decision::Passthrough(why) => {
            super::transparent::passthrough(runtime, listener, accepted.stream, peer, destination, why).await;
            None
        }
        Decision::Refuse(why) => {
            super::transparent::refused(&runtime, &listener, peer, destination, why);
            let _ = socket2::SockRef::from(&accepted.stream).set_linger(Some(Duration::ZERO));
            None
        }
        Decision::Closed => None,
    }
}

/// Answers one request with `shared`, the runtime live at its arrival; a panic inside
/// becomes a 500 for this request only.
async fn respond(
    shared: Arc<Runtime>,
    ctx: Arc<ConnCtx>,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<crate::respond::ResponseBody>, Infallible> {
    // The request's one arrival reading: its record's start and its new id's timestamp.
    let arrived = tokio::time::Instant::now();
    let mut carried = crate::http::headers::carried(req.headers());
    if carried.client_cert {
        // Only outrigger says who a client is: a client's own claim is gone before routing,
        // matching or logging can see it (every value, on every listener).
        while req
            .headers_mut()
            .remove(crate::http::headers::X_FORWARDED_CLIENT_CERT)
            .is_some()
        {}
        carried.client_cert = false;
    }
    let (mut id, version) = (
        crate::http::headers::request_id_of(req.headers(), carried, arrived.into_std()),
        req.version(),
    );
    // Marked never-indexed for HPACK: a value unique to each request would only churn the
    // HTTP/2 header tables.
    id.set_sensitive(true);
    // A bug in one request must not take the connection, let alone the proxy, down. Each
    // poll is guarded in place: wrapping the future (`catch_unwind()`) moved its ~3 KiB
    // state four times per request.
    let mut handling = std::pin::pin!(shared.clone().handle(req, ctx, id.clone(), carried, arrived));
    let guarded =
        std::future::poll_fn(
            |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| handling.as_mut().poll(cx))) {
                Ok(polled) => polled.map(Ok),
                Err(panic) => Poll::Ready(Err(panic)),
            },
        );
    let answer = match guarded.await {
        Ok(response) => response,
        Err(panic) => shared.panicked(&id, version, panic.as_ref()),
    };
    Ok(answer)
}

enum Sniffed {
    /// The first bytes are not the HTTP/2 preface.
    Http1,
    /// The HTTP/2 preface.
    Http2,
    /// The client closed or reset before sending anything.
    Closed,
}

/// Peeks at the first bytes of a connection without consuming them. The caller bounds the
/// wait with the header read timeout, so a client that stalls here is cut off like one that
/// stalls in its request head.
async fn sniff(stream: &TcpStream) -> io::Result<Sniffed> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(Sniffed::Closed);
        } else if buf[..n] != H2_PREFACE[..n] {
            return Ok(Sniffed::Http1);
        } else if n == H2_PREFACE.len() {
            return Ok(Sniffed::Http2);
        }
        // Part of the preface so far: real clients send it in one segment, so this is rare.
        // Peeking again at once would spin on the bytes already there.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a served connection is watched for: client idleness, a request head that takes too
/// long to arrive (HTTP/1.1) and the drain signal.
struct Watch {
    traffic: Arc<Traffic>,
    idle_timeout: Duration,
    header_read_timeout: Option<Duration>,
    stop: watch::Receiver<bool>,
}

/// A connection's traffic as its watch sees it: kept up to date by the socket wrapper and
/// the service with relaxed atomics, without a clock read (a head's age is counted in the
/// watch's ticks).
struct Traffic {
    /// Reads and writes that moved bytes.
    moved: AtomicU64,
    /// Zero while no request head is being read; once bytes arrived with no request in
    /// flight (a head began), one plus the watch's ticks since.
    head_ticks: AtomicU32,
    /// Requests in flight on the connection (kept by the request record).
    active: Arc<AtomicUsize>,
    /// Whether heads are timed (HTTP/1.1; an HTTP/2 connection reads frames between
    /// requests, and its streams' heads arrive whole).
    time_heads: bool,
}

impl Traffic {
    /// Bytes were read: when no request is in flight they are a new head's first bytes.
    fn on_read(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
        if self.time_heads && self.head_ticks.load(Ordering::Relaxed) == 0 && self.active.load(Ordering::Relaxed) == 0 {
            self.head_ticks.store(1, Ordering::Relaxed);
        }
    }

    /// Called on each of the watch's ticks: whether a head began at least `limit_ticks`
    /// whole ticks ago and is still not complete. The tick after a head began may come
    /// at once, so a head is overdue on its `limit_ticks + 1`-th tick: between one and one
    /// and a quarter times the limit (four ticks per limit) after its first bytes.
    fn head_overdue(&self, limit_ticks: u32) -> bool {
        let ticks = self.head_ticks.load(Ordering::Relaxed);
        if ticks == 0 || self.active.load(Ordering::Relaxed) > 0 {
            return false;
        }
        self.head_ticks.store(ticks.saturating_add(1), Ordering::Relaxed);
        ticks > limit_ticks
    }
}

impl Watch {
    /// Runs `conn` to the end, shutting it down gracefully when the client has been idle
    /// for the idle timeout or the listener drains.
    async fn drive<C, E>(self, conn: C, graceful_shutdown: impl Fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let Watch {
            traffic,
            idle_timeout,
            header_read_timeout,
            mut stop,
        } = self;
        tokio::pin!(conn);
        // Checked four times per period, so a connection closes within 1.25× its timeout.
        let period =
            (header_read_timeout.map_or(idle_timeout, |h| h.min(idle_timeout)) / 4).max(Duration::from_millis(1));
        // Whole ticks a head may take (a period divides the header read timeout exactly when
        // it is the smaller timeout).
        let head_limit_ticks = header_read_timeout
            .map(|limit| u32::try_from(limit.as_nanos().div_ceil(period.as_nanos().max(1))).unwrap_or(u32::MAX));
        let tick = tokio::time::sleep(period);
        tokio::pin!(tick);
        let mut last_seen = u64::MAX;
        let mut idle_since = tokio::time::Instant::now();
        let mut closing = false;
        // The drain signal's future is polled once to register its waker, and again only once
        // the signal changed: this loop wakes on every read and write of the connection, and
        // re-polling a timer or a channel there costs a lock or a waker swap each time.
        let mut probe = stop.clone();
        probe.mark_unchanged();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        let mut registered = false;
        let mut armed = false;
        std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                    return Poll::Ready(());
                }
                if closing {
                    return Poll::Pending;
                }
                if !registered || !matches!(probe.has_changed(), Ok(false)) {
                    registered = true;
                    probe.mark_unchanged();
                    if stopped.as_mut().poll(cx).is_ready() {
                        closing = true;
                        graceful_shutdown(conn.as_mut());
                        continue;
                    }
                }
                // The timer's waker is registered by polling it once after each reset; in
                // between, whether it fired is one atomic load.
                let fired = if armed {
                    tick.is_elapsed()
                } else {
                    armed = true;
                    tick.as_mut().poll(cx).is_ready()
                };
                if !fired {
                    return Poll::Pending;
                }
                armed = false;
                let now = tick.deadline();
                tick.as_mut().reset(now + period);
                if head_limit_ticks.is_some_and(|limit| traffic.head_overdue(limit)) {
                    // A head begun and never finished (a trickling client): nothing to
                    // answer, and waiting for a graceful end would wait for the client.
                    tracing::debug!("request head not complete within header_read_timeout; connection closed");
                    return Poll::Ready(());
                }
                let seen = traffic.moved.load(Ordering::Relaxed);
                if seen != last_seen || traffic.active.load(Ordering::Relaxed) > 0 {
                    last_seen = seen;
                    idle_since = now;
                } else if now.saturating_duration_since(idle_since) >= idle_timeout {
                    closing = true;
                    graceful_shutdown(conn.as_mut());
                }
            }
        })
        .await;
    }
}

/// A socket that counts the reads and writes that moved bytes and notes when a request head
/// begins, so the watch sees traffic without a clock read per I/O.
struct ActivityIo {
    inner: Socket,
    traffic: Arc<Traffic>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.traffic.on_read();
        }
        res
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.traffic.moved.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.traffic.moved.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds a TCP listener, with the address in the error.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, io::Error> {
    TcpListener::bind(addr).await
}
