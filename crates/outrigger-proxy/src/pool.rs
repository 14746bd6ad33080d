//! Connections to one endpoint: HTTP/1.1 keep-alive connections reused one request at a
//! time, and one multiplexed HTTP/2 connection.
//!
//! We keep our own pool instead of hyper-util's legacy client because the proxy must know,
//! for every attempt, whether the connection was fresh or reused and how long it had been
//! idle (the keep-alive race behind most "connection reset" mysteries), and must choose the
//! endpoint itself while keeping the client's `Host`/`:authority`.
//!
//! An HTTP/1.1 connection goes back to the idle list only once its response body has been
//! read to the end ([`UpstreamBody`] does that); one abandoned mid-body is closed.

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
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::net::Socket;

/// Pool settings of one upstream.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Close idle connections after this long.
    pub idle_timeout: Duration,
    /// Keep at most this many idle HTTP/1.1 connections.
    pub max_idle: usize,
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The connect did not finish in time.
    Timeout(Duration),
    /// The connect failed (refused, unreachable, reset).
    Io(io::Error),
    /// The HTTP handshake failed (HTTP/2 preface rejected).
    Handshake(hyper::Error),
}

impl ConnectError {
    /// A few words for the error detail: "connection refused", "timed out after 1s".
    pub fn reason(&self) -> String {
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
        }
    }
}

/// How the connection used for a request was obtained.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// It had served requests before.
    pub reused: bool,
    /// How long it had been idle before this request (zero when fresh).
    pub idle_for: Duration,
}

struct IdleConn {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// The connections to one resolved endpoint address.
pub struct EndpointPool {
    addr: SocketAddr,
    label: String,
    settings: PoolSettings,
    /// Oldest first, so expired connections are found at the front and the warmest at the back.
    idle: Mutex<VecDeque<IdleConn>>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

impl EndpointPool {
    /// A pool for `addr` (no connection is made yet). `name` is the configured host when it
    /// was a DNS name, shown beside the address in logs.
    pub fn new(addr: SocketAddr, name: Option<&str>, settings: PoolSettings) -> Self {
        let label = match name {
            Some(n) => format!("{addr} ({n})"),
            None => addr.to_string(),
        };
        EndpointPool {
            addr,
            label,
            settings,
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
        }
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ip:port` (and the DNS name it came from), for logs and error details.
    pub fn label(&self) -> &str {
        &self.label
    }

    async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout(self.settings.connect_timeout))?
            .map_err(ConnectError::Io)?;
        // Small requests must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends one request over HTTP/1.1, reusing an idle connection when one is ready.
    ///
    /// A reused connection that turns out to be closed before any byte of the request was
    /// written (the upstream closed it while idle: the keep-alive race) gets the request
    /// back from hyper, and the request goes out on a fresh connection instead. This is
    /// always safe, whatever the method, because the upstream never saw it.
    pub async fn send_http1(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        fresh_only: bool,
    ) -> Result<(Response<UpstreamBody>, ConnInfo), SendError> {
        loop {
            let (mut sender, info) = match if fresh_only { None } else { self.take_idle() } {
                Some(found) => found,
                None => (
                    // Boxed: connecting is rare on a warm pool, and unboxed its state would
                    // size every request's future (about 300 bytes each in flight).
                    Box::pin(self.connect_http1()).await?,
                    ConnInfo {
                        reused: false,
                        idle_for: Duration::ZERO,
                    },
                ),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let back = if upgraded {
                        None
                    } else {
                        Some(Checkin {
                            pool: self.clone(),
                            sender,
                        })
                    };
                    return Ok((resp.map(|body| UpstreamBody::new(body, back)), info));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if info.reused => {
                        tracing::debug!(endpoint = %self.label, idle_ms = info.idle_for.as_millis() as u64, "reused upstream connection was already closed; sending on another");
                        req = unsent;
                    }
                    _ => return Err(SendError::Request(e.into_error(), info)),
                },
            }
        }
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let io = TokioIo::new(Socket::new(self.connect_tcp().await.map_err(SendError::Connect)?));
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(ConnectError::Handshake(e)))?;
        let label = self.label.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/1.1 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends one request over this endpoint's HTTP/2 connection, connecting if needed.
    pub async fn send_http2(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        mut fresh_only: bool,
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
                Ok(resp) => return Ok((resp.map(|b| UpstreamBody::new(b, None)), info)),
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
        let io = TokioIo::new(Socket::new(self.connect_tcp().await.map_err(SendError::Connect)?));
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
    /// Bounded work per request whatever the pool size: one clock read, expired connections
    /// popped from the front, and a scan from the back that usually stops at the first entry
    /// (a scan over the whole list cost 6 % of the CPU at 1,000 client connections).
    fn take_idle(&self) -> Option<(http1::SendRequest<RequestBody>, ConnInfo)> {
        let now = Instant::now();
        let mut idle = self.lock_idle();
        drop_expired(&mut idle, now, self.settings.idle_timeout);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_closed() {
                idle.remove(i);
            } else if idle[i].sender.is_ready() {
                let conn = idle.remove(i)?;
                return Some((
                    conn.sender,
                    ConnInfo {
                        reused: true,
                        idle_for: now.saturating_duration_since(conn.since),
                    },
                ));
            }
            // Not ready yet: its previous response just ended and the connection has not
            // noticed; leave it for the next request rather than closing it.
        }
        None
    }

    fn checkin(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() || self.settings.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock_idle();
        drop_expired(&mut idle, now, self.settings.idle_timeout);
        if idle.len() >= self.settings.max_idle {
            idle.pop_front();
        }
        idle.push_back(IdleConn { sender, since: now });
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
pub enum SendError {
    /// No connection could be made.
    Connect(ConnectError),
    /// The request or response failed on an established connection.
    Request(hyper::Error, ConnInfo),
}

struct Checkin {
    pool: Arc<EndpointPool>,
    sender: http1::SendRequest<RequestBody>,
}

/// An upstream response body that returns its HTTP/1.1 connection to the pool once read
/// to the end.
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<Checkin>,
}

impl UpstreamBody {
    fn new(inner: Incoming, checkin: Option<Checkin>) -> Self {
        let mut body = UpstreamBody { inner, checkin };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.pool.checkin(c.sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            // A failed body leaves the connection unusable: dropping the sender closes it.
            Some(Err(_)) => this.checkin = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
