//! Listeners: accepting connections, speaking HTTP/1.1 and HTTP/2 (h2c prior knowledge) on
//! the same port, enforcing the listener's limits, and draining on shutdown.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use outrigger_config::ListenerLimits;

use crate::stack::{ConnCtx, Shared};

/// The HTTP server settings of one listener.
pub(crate) fn http_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's read buffer bounds the request head; it cannot go below 8 KiB. The exact
        // listener limit is checked again on the parsed head (431 problem+json).
        .max_buf_size((limits.max_header_bytes + 1024).max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Bounds on abusive clients (rapid reset, CVE-2023-44487): hyper's defaults, made explicit.
        .max_concurrent_streams(1024)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    b
}

/// Accepts connections until `stop` turns true; each connection holds a clone of `alive`
/// until it has closed, so the caller can wait for them all.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    index: usize,
    limits: ListenerLimits,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let builder = Arc::new(http_builder(&limits));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
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
        let ctx = Arc::new(ConnCtx {
            listener: index,
            peer,
            active: Arc::new(AtomicUsize::new(0)),
            forwarding: crate::headers::Forwarding::new(peer.ip(), "http"),
        });
        tokio::spawn(serve_connection(
            stream,
            ctx,
            shared.clone(),
            builder.clone(),
            limits.idle_timeout,
            stop.clone(),
            alive.clone(),
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
    });
    let active = ctx.active.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        let ctx = ctx.clone();
        async move {
            let (id, version) = (crate::headers::request_id(req.headers()), req.version());
            // A bug in one request must not take the connection, let alone the proxy, down.
            let answer = match AssertUnwindSafe(shared.clone().handle(req, ctx, id.clone()))
                .catch_unwind()
                .await
            {
                Ok(response) => response,
                Err(panic) => shared.panicked(&id, version, panic.as_ref()),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // Checked a few times per idle period, so a connection closes within 1.25× the timeout.
    let mut ticker = tokio::time::interval(idle_timeout / 4);
    ticker.tick().await;
    let mut last_seen = u64::MAX;
    let mut idle_since = tokio::time::Instant::now();
    let mut closing = false;
    // Made once: the loop wakes on every read and write of the connection.
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = ticker.tick(), if !closing => {
                let seen = activity.load(Ordering::Relaxed);
                if seen != last_seen || active.load(Ordering::Relaxed) > 0 {
                    last_seen = seen;
                    idle_since = tokio::time::Instant::now();
                } else if idle_since.elapsed() >= idle_timeout {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = &mut stopped, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Copies bytes both ways between a client and an upstream after a `101 Switching Protocols`
/// (WebSocket), until either side closes.
pub(crate) async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, upstream_name: Arc<str>) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(kind = "upgrade", upstream = %upstream_name, error = %e, "A protocol upgrade (WebSocket) could not be completed.");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(upstream = %upstream_name, error = %e, "upgraded connection ended with an error");
    }
}

/// A socket that counts the reads and writes that moved bytes, so the idle check can see
/// traffic without a clock read per I/O.
struct ActivityIo {
    inner: TcpStream,
    activity: Arc<AtomicU64>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.fetch_add(1, Ordering::Relaxed);
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
            self.activity.fetch_add(1, Ordering::Relaxed);
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
