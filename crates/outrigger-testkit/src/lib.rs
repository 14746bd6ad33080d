//! Programmable loopback upstreams for outrigger's tests, benches and demo.
//!
//! ```no_run
//! # async fn f() {
//! use outrigger_testkit::{Mode, Upstream};
//! let up = Upstream::start(Mode::Ok).await;          // 200 "ok", /echo, /bytes/N, /count, /ws ...
//! up.set_mode(Mode::Delay(std::time::Duration::from_millis(300)));
//! up.set_mode(Mode::Hang);                            // accepts, never answers
//! let nowhere = outrigger_testkit::refused_addr();    // nothing listens there
//! # }
//! ```
//!
//! Every server binds 127.0.0.1 port 0 and speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge)
//! on the same port. Modes switch at run time and apply to the next connection or request.

mod echo;
mod grpc;
pub mod otlp;
mod paths;
mod scripted;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use echo::{EchoClient, EchoReply, EchoRequest, EchoService, EchoUpstream};
pub use grpc::GrpcUpstream;
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use scripted::{Act, Scripted};

/// How the upstream behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer at once: `200 ok` on most paths; see the path list in `paths.rs`.
    Ok,
    /// Answer like `Ok`, after this delay.
    Delay(Duration),
    /// Accept connections and read requests, but never answer.
    Hang,
    /// Send a response head promising 1 MiB, 100 bytes of it, then reset the connection.
    ResetMidBody,
    /// Reset the connection as soon as a request arrives, answering nothing.
    ResetBeforeResponse,
    /// Answer the first request on each connection (keep-alive), then reset the connection
    /// when the next request on it arrives: the keep-alive race, made deterministic.
    ResetReused,
    /// Answer the first request on each connection as if keeping it alive (no
    /// `Connection: close`), then close it: an upstream whose keep-alive timeout is zero.
    CloseWhenIdle,
    /// `500` with an HTML page holding a stack trace and a fake secret.
    Html500,
    /// Bytes that are not HTTP.
    Garbage,
    /// Every request gets this status with a short text body.
    Status(u16),
}

impl Mode {
    /// Modes that misbehave below HTTP, decided when a connection is accepted.
    fn is_raw(&self) -> bool {
        matches!(
            self,
            Mode::Hang | Mode::ResetMidBody | Mode::ResetBeforeResponse | Mode::Garbage | Mode::CloseWhenIdle
        )
    }
}

/// The base mode and a number of one-off failures to serve first.
struct Plan {
    mode: Mode,
    fail_left: usize,
    fail_mode: Mode,
}

impl Plan {
    fn shared(mode: Mode) -> Arc<Mutex<Plan>> {
        Arc::new(Mutex::new(Plan {
            mode,
            fail_left: 0,
            fail_mode: Mode::Ok,
        }))
    }

    /// The mode for the next connection (`raw`) or request: a pending failure of the right
    /// kind first, else the base mode.
    fn next(&mut self, raw: bool) -> Mode {
        if self.fail_left > 0 && self.fail_mode.is_raw() == raw {
            self.fail_left -= 1;
            return self.fail_mode.clone();
        }
        self.mode.clone()
    }
}

/// What the upstream has seen.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    connections: AtomicUsize,
    closed: AtomicUsize,
    last_headers: Mutex<Option<http::HeaderMap>>,
}

/// A running programmable upstream. Stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    mode: Arc<Mutex<Plan>>,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts an upstream on 127.0.0.1, port chosen by the OS.
    pub async fn start(mode: Mode) -> Upstream {
        let (listener, addr) = bind_loopback().await;
        let (mode, seen) = (Plan::shared(mode), Arc::new(Seen::default()));
        let task = tokio::spawn(accept(listener, mode.clone(), seen.clone()));
        Upstream { addr, mode, seen, task }
    }

    /// Starts an upstream that speaks HTTP (the modes `Ok`, `Delay`, `Status`, `Html500`)
    /// over TLS with `config`; HTTP/2 when the client offers `h2` by ALPN.
    pub async fn start_tls(mode: Mode, config: Arc<rustls::ServerConfig>) -> Upstream {
        let (listener, addr) = bind_loopback().await;
        let (mode, seen) = (Plan::shared(mode), Arc::new(Seen::default()));
        let (plan, counts) = (mode.clone(), seen.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counts.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, plan, counts) = (acceptor.clone(), plan.clone(), counts.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_http(tls, plan, counts).await;
                    }
                });
            }
        });
        Upstream { addr, mode, seen, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the behaviour for what comes next.
    pub fn set_mode(&self, mode: Mode) {
        lock(&self.mode).mode = mode;
    }

    /// Serves the next `n` connections (raw modes such as `ResetBeforeResponse`) or requests
    /// (HTTP modes such as `Status(503)`) with `failure`, then goes back to the base mode.
    pub fn fail_next(&self, n: usize, failure: Mode) {
        let mut plan = lock(&self.mode);
        plan.fail_left = n;
        plan.fail_mode = failure;
    }

    /// Requests received so far (counted once their head is read).
    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Connections this upstream has closed itself (`CloseWhenIdle`).
    pub fn closed(&self) -> usize {
        self.seen.closed.load(Ordering::SeqCst)
    }

    /// The headers of the last request served by the HTTP server (not the raw-socket modes).
    pub fn last_request_headers(&self) -> Option<http::HeaderMap> {
        lock(&self.seen.last_headers).clone()
    }
}

/// Serves the fast upstream (`Mode::Ok`) on 127.0.0.1:`port` until the task is dropped: the
/// benchmark harness runs it as its own pinned process.
#[allow(
    clippy::expect_used,
    reason = "start-up of a benchmark upstream: without its port there is nothing to measure"
)]
pub async fn serve_fast(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the upstream port");
    let mode = Arc::new(Mutex::new(Plan {
        mode: Mode::Ok,
        fail_left: 0,
        fail_mode: Mode::Ok,
    }));
    accept(listener, mode, Arc::new(Seen::default())).await;
}

/// An address on loopback where nothing listens: connecting is refused.
///
/// The port stays bound (by a socket that never listens) for the life of the test process,
/// so no other test's listener can be given it: a freed port would be a race under load.
#[allow(
    clippy::expect_used,
    reason = "test set-up: a test that cannot get a loopback socket cannot run"
)]
pub fn refused_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local addr");
    // Bound without listen(): connections to it are refused, and the port is ours.
    std::mem::forget(socket);
    addr
}

/// A listener on 127.0.0.1, port chosen by the OS, and its address.
#[allow(
    clippy::expect_used,
    reason = "test set-up: a test that cannot bind loopback cannot run, and says so"
)]
pub(crate) async fn bind_loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address of a bound listener");
    (listener, addr)
}

/// Locks `m`, taking the data even when a panicking test thread poisoned it: the servers
/// must keep answering for the tests that are still running.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(listener: TcpListener, mode: Arc<Mutex<Plan>>, seen: Arc<Seen>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        seen.connections.fetch_add(1, Ordering::SeqCst);
        let current = lock(&mode).next(true);
        let mode = mode.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            match current {
                Mode::Hang => hang(stream, &seen).await,
                Mode::ResetMidBody => reset_mid_body(stream, &seen).await,
                Mode::ResetBeforeResponse => reset_before_response(stream, &seen).await,
                Mode::Garbage => garbage(stream, &seen).await,
                Mode::ResetReused => reset_reused(stream, &seen).await,
                Mode::CloseWhenIdle => close_when_idle(stream, &seen).await,
                Mode::Ok | Mode::Delay(_) | Mode::Html500 | Mode::Status(_) => serve_http(stream, mode, seen).await,
            }
        });
    }
}

/// Reads one request head from a raw socket (up to the blank line).
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

async fn hang(mut stream: TcpStream, seen: &Seen) {
    if read_head(&mut stream).await.is_some() {
        seen.requests.fetch_add(1, Ordering::SeqCst);
    }
    // Hold the connection open without answering until the peer gives up.
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

async fn reset_mid_body(mut stream: TcpStream, seen: &Seen) {
    if read_head(&mut stream).await.is_none() {
        return;
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1048576\r\n\r\n")
        .await;
    let _ = stream.write_all(&[b'x'; 100]).await;
    let _ = stream.flush().await;
    // Let the proxy read what was sent before the reset.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn reset_before_response(mut stream: TcpStream, seen: &Seen) {
    if read_head(&mut stream).await.is_some() {
        seen.requests.fetch_add(1, Ordering::SeqCst);
    }
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads a request and answers `200 ok` without closing; false when no request came.
async fn answer_one(stream: &mut TcpStream, seen: &Seen) -> bool {
    if read_head(stream).await.is_none() {
        return false;
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
        .await;
    true
}

async fn reset_reused(mut stream: TcpStream, seen: &Seen) {
    if !answer_one(&mut stream, seen).await {
        return;
    }
    if read_head(&mut stream).await.is_some() {
        seen.requests.fetch_add(1, Ordering::SeqCst);
    }
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn close_when_idle(mut stream: TcpStream, seen: &Seen) {
    if answer_one(&mut stream, seen).await {
        drop(stream);
        seen.closed.fetch_add(1, Ordering::SeqCst);
    }
}

async fn garbage(mut stream: TcpStream, seen: &Seen) {
    if read_head(&mut stream).await.is_some() {
        seen.requests.fetch_add(1, Ordering::SeqCst);
    }
    let _ = stream
        .write_all(b"\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
}

async fn serve_http<S>(stream: S, mode: Arc<Mutex<Plan>>, seen: Arc<Seen>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let mode = lock(&mode).next(false);
        let seen = seen.clone();
        async move {
            seen.requests.fetch_add(1, Ordering::SeqCst);
            *lock(&seen.last_headers) = Some(req.headers().clone());
            Ok::<_, std::convert::Infallible>(paths::answer(req, mode).await)
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
}
