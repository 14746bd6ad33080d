//! HTTP/1.1 to an upstream, driven inside the request's own task.
//!
//! hyper's client runs every upstream connection as a task of its own and hands it each
//! request over a channel: per request a second task wake-up, a channel send and a oneshot
//! back, and per connection about 25 KiB of buffers and channel blocks. A sidecar sends one
//! request at a time on an HTTP/1.1 connection, so the request's task writes the request and
//! reads the response itself here, the way HAProxy and nginx do in their event loops
//! (docs/performance.md says what it bought). HTTP/2 stays with hyper.
//!
//! What it speaks (RFC 9112): requests framed by `Content-Length`, or chunked when the length
//! is unknown (trailers included); responses framed by `Content-Length`, chunked (trailers
//! passed on) or by the connection's close; no body for `HEAD`, 1xx, 204 and 304; interim
//! 1xx responses skipped; `101 Switching Protocols` hands the socket over (`Upgraded`).
//! The request body keeps flowing while the response streams (an echo, a slow upload) and a
//! response that ends first ends the exchange. A connection is reused only when both
//! messages ended cleanly and the upstream did not ask to close.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod decode;

use decode::{Decoder, READ_BUF_MAX, Step, digits};

use crate::body::{BoxError, RequestBody};
use crate::http::added::Added;
use crate::sys::net::Socket;

/// The read buffer a connection starts with.
const READ_BUF: usize = 8 * 1024;
/// A connection idle this long is checked with a peek before reuse ([`Conn::is_open`]).
const PEEK_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// A connection going idle keeps a grown buffer up to this size (responses of a few tens of
/// KiB would otherwise grow it again on every request) and gives back anything larger.
const READ_BUF_KEPT: usize = 32 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Reading or writing the connection failed (reset, broken pipe).
    Io(io::Error),
    /// The upstream closed the connection before the response was complete.
    Closed(&'static str),
    /// The upstream's bytes are not HTTP/1.1.
    Protocol(&'static str),
    /// The client's request body failed on its way (too large, stalled, cut off).
    Body(BoxError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "the connection failed: {e}"),
            Error::Closed(when) => write!(f, "the upstream closed the connection {when}"),
            Error::Protocol(what) => write!(f, "the upstream's response is not valid HTTP/1.1: {what}"),
            Error::Body(e) => write!(f, "the request body failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Body(e) => Some(e.as_ref()),
            Error::Closed(_) | Error::Protocol(_) => None,
        }
    }
}

/// An HTTP/1.1 connection to an upstream, between exchanges or in one.
pub(crate) struct Conn {
    io: Socket,
    /// Bytes read and not consumed yet; the spare capacity is what the next read fills.
    buf: BytesMut,
    /// How much the next read asks room for: doubles while a large body streams, the way
    /// hyper's adaptive read strategy does.
    room: usize,
    /// The request head being written, kept between requests for its capacity.
    out: Vec<u8>,
    out_pos: usize,
    /// The last read filled all the room there was: a large body is streaming.
    filled: bool,
    /// The last response had no body by rule (`HEAD`, 204, 304, length 0): bytes after it
    /// are the likeliest stray ones ([`Conn::is_open`]).
    bodiless: bool,
}

impl Conn {
    pub(crate) fn new(io: Socket) -> Box<Self> {
        Box::new(Conn {
            io,
            buf: BytesMut::with_capacity(READ_BUF),
            room: READ_BUF,
            out: Vec::with_capacity(512),
            out_pos: 0,
            filled: false,
            bodiless: false,
        })
    }

    /// Whether an idle connection, idle for `idle_for`, can carry a request: nothing is left
    /// in its buffer and the upstream has neither closed it nor sent anything unasked.
    ///
    /// Bytes the upstream sends after a response are read as the next request's response
    /// if they are not seen first. Where they are likely, the socket itself is asked (a
    /// peek, one syscall): after a response that had no body by rule (`HEAD`, 204, 304, a
    /// length of 0), which a faulty upstream may follow with one anyway, right behind it;
    /// and after a second or more idle, when an upstream's idle timer may have sent a 408
    /// just now. Otherwise the event loop's readiness is asked, which is free and sees all
    /// but bytes that arrived within its last turn: peeking on every reuse would add a fifth
    /// syscall to every request (docs/architecture.md weighs the two).
    pub(crate) fn is_open(&self, idle_for: std::time::Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        if self.bodiless || idle_for >= PEEK_AFTER_IDLE {
            self.io.is_quiet_now()
        } else {
            self.io.is_quiet()
        }
    }

    /// Drops what a large exchange grew, before the connection waits in the pool.
    fn shrink(&mut self) {
        self.filled = false;
        self.room = self.room.min(READ_BUF_KEPT);
        if self.buf.capacity() > READ_BUF_KEPT {
            self.buf = BytesMut::with_capacity(READ_BUF);
        }
        if self.out.capacity() > 4 * 1024 {
            self.out = Vec::with_capacity(512);
        }
    }

    /// Reads more bytes into the buffer, making room first; `Ok(0)` at end of stream.
    /// Unconsumed bytes (a partial head, line or trailer section) may fill at most `limit`.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<usize, Error>> {
        let unconsumed = self.buf.len();
        if self.filled && unconsumed == 0 {
            self.room = (self.room * 2).min(READ_BUF_MAX);
        }
        if unconsumed >= limit {
            return Poll::Ready(Err(Error::Protocol(
                "the response head (or a trailer section) is larger than 64 KiB",
            )));
        }
        // A partial head grows the buffer by doubling, up to the limit.
        let room = self.room.max(unconsumed).min(limit - unconsumed);
        // Reading into what is left while that is at least half the room saves moving the
        // buffer back to its start after every small response.
        if self.buf.capacity() - unconsumed < room.div_ceil(2) {
            self.buf.reserve(room);
        }
        let spare = self.buf.capacity() - unconsumed;
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)).map_err(Error::Io)?;
        self.filled = n > 0 && n == spare;
        Poll::Ready(Ok(n))
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length`: this many bytes still to send.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// One request and its response on one connection. `B` is the request body: the proxy's
/// [`RequestBody`]; any streaming body in the tests.
pub(crate) struct Exchange<B = RequestBody> {
    conn: Box<Conn>,
    /// The request body still to send (`None` once it has all been queued or has failed).
    body: Option<B>,
    framing: Framing,
    /// Queued for the wire after `conn.out[conn.out_pos..]`: a body chunk, then its CRLF.
    out_data: Bytes,
    out_tail: &'static [u8],
    /// A write that failed while the response head was awaited: the response may still be
    /// readable (an upstream that answers 413 and closes), so it is reported only if not.
    write_failed: Option<io::Error>,
    /// The response, from the connection's buffer.
    dec: Decoder,
    /// The request side allows reuse: it was sent whole, by its framing.
    keep_alive: bool,
}

impl<B> Exchange<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    /// Queues the request's head on `conn` (written from `parts`, which the caller keeps for
    /// a retry); nothing is written until the exchange is polled. `parts` must carry an
    /// origin-form URI and a `Host` header.
    /// `added`: the fields this proxy sets, written after the client's ([`Added`]).
    pub(crate) fn new(mut conn: Box<Conn>, parts: &http::request::Parts, added: &Added, body: B) -> Self {
        let out = &mut conn.out;
        out.clear();
        conn.out_pos = 0;
        out.extend_from_slice(parts.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut field = |name: &str, value: &[u8]| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        let mut declared = None;
        let mut upgrade = false;
        for (name, value) in &parts.headers {
            // The framing headers are ours to write (hop-by-hop `Transfer-Encoding` is gone
            // already; the length is checked against the body as it is sent).
            if name == CONTENT_LENGTH {
                declared = declared.or_else(|| digits(value.as_bytes().trim_ascii()));
            } else if name != TRANSFER_ENCODING {
                // `Upgrade` is still here only when the proxy performs the upgrade.
                upgrade |= name == UPGRADE;
                field(name.as_str(), value.as_bytes());
            }
        }
        added.each(field);

        let empty = body.is_end_stream();
        // The length header written: the client's when it gave one, else the body's exact size
        // when known; chunked otherwise. RFC 9110 §8.6: a request whose method gives content a
        // meaning says its length even when it is zero.
        let (framing, length) = if empty {
            let meaningful = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
            (Framing::Length(0), (declared.is_some() || meaningful).then_some(0))
        } else {
            match declared.or(body.size_hint().exact()) {
                Some(n) => (Framing::Length(n), Some(n)),
                None => (Framing::Chunked, None),
            }
        };
        match (framing, length) {
            (Framing::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            (Framing::Length(_), Some(n)) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            (Framing::Length(_), None) => {}
        }
        out.extend_from_slice(b"\r\n");

        Exchange {
            conn,
            body: (!empty).then_some(body),
            framing,
            out_data: Bytes::new(),
            out_tail: b"",
            write_failed: None,
            dec: Decoder::new(parts.method == Method::HEAD, upgrade),
            keep_alive: true,
        }
    }

    /// Sends the request and waits for the response head (skipping interim 1xx responses).
    pub(crate) async fn response(mut self) -> Result<Response<Self>, Error> {
        let head = std::future::poll_fn(|cx| self.poll_head(cx)).await?;
        Ok(Response::from_parts(head, self))
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<http::response::Parts, Error>> {
        self.drive_send(cx)?;
        loop {
            if let Some(parts) = self.dec.head(&mut self.conn.buf)? {
                if self.dec.is_upgrade() {
                    self.body = None;
                }
                return Poll::Ready(Ok(parts));
            }
            let read = ready!(self.conn.poll_fill(cx, self.dec.read_limit()));
            match read {
                Ok(0) | Err(Error::Io(_)) if self.write_failed.is_some() => {
                    let e = self
                        .write_failed
                        .take()
                        .map_or(Error::Closed("while the request was sent"), Error::Io);
                    return Poll::Ready(Err(e));
                }
                Ok(0) if self.conn.buf.is_empty() => {
                    return Poll::Ready(Err(Error::Closed("before sending a response")));
                }
                Ok(0) => return Poll::Ready(Err(Error::Closed("in the middle of the response head"))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Moves the request along as far as it goes without waiting. A failed write stops the
    /// sending but not the exchange: the upstream may have answered and closed (a 413 before
    /// the whole upload), so the response is still read; the client's body failing ends it.
    fn drive_send(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.write_failed.is_some() {
            return Ok(());
        }
        match self.poll_send(cx) {
            Poll::Ready(Err(Error::Io(e))) => {
                self.body = None;
                self.keep_alive = false;
                self.write_failed = Some(e);
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    /// Writes what is queued and queues the next piece of the request body, until the body
    /// has all gone out (`Ready(Ok)`) or there is nothing to do until woken.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            // Write what is queued: the head or a chunk-size line, a body chunk, its CRLF.
            loop {
                let pending_out = &self.conn.out[self.conn.out_pos..];
                if pending_out.is_empty() && self.out_data.is_empty() && self.out_tail.is_empty() {
                    break;
                }
                let slices = [
                    io::IoSlice::new(pending_out),
                    io::IoSlice::new(&self.out_data),
                    io::IoSlice::new(self.out_tail),
                ];
                let mut n = match ready!(Pin::new(&mut self.conn.io).poll_write_vectored(cx, &slices)) {
                    Ok(0) => return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(Error::Io(e))),
                };
                let from_out = n.min(pending_out.len());
                self.conn.out_pos += from_out;
                n -= from_out;
                let from_data = n.min(self.out_data.len());
                self.out_data.advance(from_data);
                n -= from_data;
                self.out_tail = &self.out_tail[n.min(self.out_tail.len())..];
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            self.conn.out.clear();
            self.conn.out_pos = 0;
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Err(e)) => {
                    self.body = None;
                    self.keep_alive = false;
                    return Poll::Ready(Err(Error::Body(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => match &mut self.framing {
                        Framing::Length(left) => {
                            let len = data.len() as u64;
                            if len > *left {
                                self.body = None;
                                self.keep_alive = false;
                                return Poll::Ready(Err(Error::Body(
                                    "the request body is longer than its Content-Length".into(),
                                )));
                            }
                            *left -= len;
                            self.out_data = data;
                        }
                        Framing::Chunked => {
                            let mut hex = [0u8; 16];
                            let size = hex_digits(data.len(), &mut hex);
                            self.conn.out.extend_from_slice(size);
                            self.conn.out.extend_from_slice(b"\r\n");
                            self.out_data = data;
                            self.out_tail = b"\r\n";
                        }
                    },
                    Err(frame) => {
                        if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), self.framing) {
                            self.body = None;
                            let out = &mut self.conn.out;
                            out.extend_from_slice(b"0\r\n");
                            for (name, value) in &trailers {
                                out.extend_from_slice(name.as_str().as_bytes());
                                out.extend_from_slice(b": ");
                                out.extend_from_slice(value.as_bytes());
                                out.extend_from_slice(b"\r\n");
                            }
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                },
                None => {
                    self.body = None;
                    match self.framing {
                        Framing::Chunked => self.conn.out.extend_from_slice(b"0\r\n\r\n"),
                        Framing::Length(0) => {}
                        Framing::Length(_) => {
                            self.keep_alive = false;
                            return Poll::Ready(Err(Error::Body(
                                "the request body ended before its Content-Length".into(),
                            )));
                        }
                    }
                }
            }
        }
    }

    /// Whether the request has all been written.
    fn sent(&self) -> bool {
        self.body.is_none()
            && self.write_failed.is_none()
            && self.conn.out_pos == self.conn.out.len()
            && self.out_data.is_empty()
            && self.out_tail.is_empty()
    }

    /// The next piece of the response body, from the buffer or the socket.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        // The request body keeps flowing while the response streams.
        if !self.sent()
            && let Err(e) = self.drive_send(cx)
        {
            self.dec.abandon();
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match self.dec.body(&mut self.conn.buf) {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => {
                    self.dec.abandon();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(self.conn.poll_fill(cx, self.dec.read_limit())) {
                Ok(0) => {
                    return Poll::Ready(self.dec.eof().err().map(Err));
                }
                Ok(_) => {}
                Err(e) => {
                    self.dec.abandon();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// The connection, when both messages ended cleanly and it may carry another request.
    pub(crate) fn into_reusable(self) -> Option<Box<Conn>> {
        let reusable =
            self.keep_alive && self.dec.keep_alive && self.dec.finished() && self.sent() && self.conn.buf.is_empty();
        reusable.then(|| {
            let mut conn = self.conn;
            conn.shrink();
            conn.bodiless = self.dec.bodiless();
            conn
        })
    }

    /// After `101 Switching Protocols`: the socket, with whatever the upstream sent past the
    /// response head.
    pub(crate) fn into_upgraded(self) -> Option<Upgraded> {
        if !self.dec.is_upgrade() {
            return None;
        }
        let leftover = Bytes::copy_from_slice(&self.conn.buf);
        Some(Upgraded {
            io: self.conn.io,
            leftover,
        })
    }

    /// Whether the whole response body (of a known length) is read already: the upstream
    /// is done with the connection.
    pub(crate) fn body_buffered(&self) -> bool {
        self.dec.body_buffered(self.conn.buf.len())
    }

    /// Whether this response switched protocols.
    pub(crate) fn is_upgrade(&self) -> bool {
        self.dec.is_upgrade()
    }
}

impl<B> Body for Exchange<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.get_mut().poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.dec.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.dec.size_hint()
    }
}

/// `n` in lower-case hex, without leading zeros.
fn hex_digits(n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// An upstream connection after `101 Switching Protocols`: reads return what the upstream
/// sent right behind the response head first, then the socket's bytes.
pub(crate) struct Upgraded {
    io: Socket,
    leftover: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.leftover.is_empty() {
            let n = self.leftover.len().min(buf.remaining());
            buf.put_slice(&self.leftover[..n]);
            self.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::decode::MAX_HEAD;
    use super::*;
    use http::Request;
    use http::{HeaderMap, HeaderValue, Version};
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// A request body fed frame by frame from the test.
    struct Chan(mpsc::UnboundedReceiver<Frame<Bytes>>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|f| f.map(Ok))
        }
    }

    fn chan() -> (mpsc::UnboundedSender<Frame<Bytes>>, Chan) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Chan(rx))
    }

    /// A request with a body that has already ended (and says so).
    fn empty() -> http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> {
        http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    const LIMIT: Duration = Duration::from_secs(20);

    /// Our side of a loopback connection, and the test upstream's.
    async fn pair() -> (Box<Conn>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Conn::new(Socket::new(ours.unwrap())), theirs.unwrap().0)
    }

    /// Reads exactly `n` bytes as the upstream.
    async fn read_n(sock: &mut TcpStream, n: usize) -> String {
        let mut buf = vec![0; n];
        tokio::time::timeout(LIMIT, sock.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Reads a request head as the upstream (up to and with the blank line).
    async fn read_head(sock: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(LIMIT, sock.read(&mut byte))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                n,
                1,
                "connection closed inside the head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// The exchange for a whole request (the proxy passes the head by reference).
    fn exchange<B>(conn: Box<Conn>, req: Request<B>) -> Exchange<B>
    where
        B: Body<Data = Bytes, Error = BoxError> + Unpin,
    {
        let (parts, body) = req.into_parts();
        Exchange::new(conn, &parts, &Added::default(), body)
    }

    fn request<B>(method: &str, path: &str, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = method.parse().unwrap();
        *req.uri_mut() = path.parse().unwrap();
        req.headers_mut().insert("host", HeaderValue::from_static("app.local"));
        req
    }

    /// Sends `req`, answers with `reply` as the upstream, returns the response and what the
    /// upstream read (the head only).
    async fn exchange_with<B>(req: Request<B>, reply: &'static [u8]) -> (Result<Response<Exchange<B>>, Error>, String)
    where
        B: Body<Data = Bytes, Error = BoxError> + Unpin,
    {
        let (conn, mut up) = pair().await;
        let upstream = async move {
            let head = read_head(&mut up).await;
            up.write_all(reply).await.unwrap();
            // Keep the socket open until the client is done (a close would end bodies early).
            tokio::time::sleep(Duration::from_millis(200)).await;
            (head, up)
        };
        let (resp, (head, _up)) = tokio::join!(tokio::time::timeout(LIMIT, exchange(conn, req).response()), upstream);
        (resp.unwrap(), head)
    }

    async fn body_of<B>(resp: Response<Exchange<B>>) -> (Result<(Bytes, Option<HeaderMap>), Error>, Exchange<B>)
    where
        B: Body<Data = Bytes, Error = BoxError> + Unpin,
    {
        let mut exchange = resp.into_body();
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match tokio::time::timeout(LIMIT, exchange.frame()).await.unwrap() {
                None => break,
                Some(Err(e)) => return (Err(e), exchange),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
            }
        }
        (Ok((Bytes::from(data), trailers)), exchange)
    }

    #[tokio::test]
    async fn the_request_head_goes_out_as_given_and_a_sized_response_is_read_and_reusable() {
        let mut req = request("GET", "/a/b?c=1", empty());
        req.headers_mut().insert("x-one", HeaderValue::from_static("1"));
        req.headers_mut().append("x-one", HeaderValue::from_static("2"));
        // The upstream stays connected: an idle connection it closed is not open.
        let (conn, mut up) = pair().await;
        let upstream = async {
            let head = read_head(&mut up).await;
            up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: yes\r\n\r\nhello")
                .await
                .unwrap();
            head
        };
        let (resp, head) = tokio::join!(exchange(conn, req).response(), upstream);
        assert_eq!(
            head,
            "GET /a/b?c=1 HTTP/1.1\r\nhost: app.local\r\nx-one: 1\r\nx-one: 2\r\n\r\n"
        );
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), Version::HTTP_11);
        assert_eq!(resp.headers()["x-up"], "yes");
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        let (body, exchange) = body_of(resp).await;
        assert_eq!(body.unwrap().0, "hello");
        let conn = exchange
            .into_reusable()
            .expect("a clean keep-alive exchange is reusable");
        assert!(conn.is_open(Duration::ZERO));
    }

    #[tokio::test]
    async fn an_empty_post_says_content_length_zero_and_a_get_says_nothing() {
        let (_, head) = exchange_with(request("POST", "/p", empty()), b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(head, "POST /p HTTP/1.1\r\nhost: app.local\r\ncontent-length: 0\r\n\r\n");
        let (_, head) = exchange_with(request("GET", "/", empty()), b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(head, "GET / HTTP/1.1\r\nhost: app.local\r\n\r\n");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_goes_chunked_with_its_trailers() {
        let (tx, body) = chan();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("8"));
        for frame in [
            Frame::data(Bytes::from_static(b"abc")),
            Frame::data(Bytes::new()),
            Frame::data(Bytes::from(vec![b'z'; 26])),
            Frame::trailers(trailers),
        ] {
            tx.send(frame).unwrap();
        }
        let mut req = request("POST", "/up", body);
        // A hop-by-hop framing header that slipped through is not repeated.
        req.headers_mut()
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let (conn, mut up) = pair().await;
        let exchange = exchange(conn, req);
        let upstream = async move {
            let head = read_head(&mut up).await;
            let wire = format!("3\r\nabc\r\n1a\r\n{}\r\n0\r\nx-sum: 8\r\n\r\n", "z".repeat(26));
            let body = read_n(&mut up, wire.len()).await;
            up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            (head, body, wire, up)
        };
        let (resp, (head, body, wire, _up)) = tokio::join!(exchange.response(), upstream);
        assert_eq!(
            head,
            "POST /up HTTP/1.1\r\nhost: app.local\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(body, wire);
        let resp = resp.unwrap();
        assert!(resp.body().is_end_stream());
        assert!(resp.into_body().into_reusable().is_some());
    }

    #[tokio::test]
    async fn a_declared_length_body_goes_raw_and_a_short_one_is_refused() {
        let (tx, body) = chan();
        tx.send(Frame::data(Bytes::from_static(b"abc"))).unwrap();
        tx.send(Frame::data(Bytes::from_static(b"def"))).unwrap();
        drop(tx);
        let mut req = request("PUT", "/x", body);
        req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("6"));
        let (conn, mut up) = pair().await;
        let upstream = async move {
            let head = read_head(&mut up).await;
            let body = read_n(&mut up, 6).await;
            up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            (head, body, up)
        };
        let (resp, (head, body, _up)) = tokio::join!(exchange(conn, req).response(), upstream);
        assert_eq!(head, "PUT /x HTTP/1.1\r\nhost: app.local\r\ncontent-length: 6\r\n\r\n");
        assert_eq!(body, "abcdef");
        assert!(resp.unwrap().into_body().into_reusable().is_some());

        // The body ends three bytes short of what it declared: the client's body failed.
        let (tx, body) = chan();
        tx.send(Frame::data(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut req = request("PUT", "/x", body);
        req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("6"));
        let (conn, _up) = pair().await;
        let err = tokio::time::timeout(LIMIT, exchange(conn, req).response())
            .await
            .unwrap()
            .err();
        assert!(matches!(err, Some(Error::Body(_))), "{err:?}");
    }

    #[tokio::test]
    async fn a_chunked_response_arriving_byte_by_byte_keeps_its_data_and_trailers() {
        let (conn, mut up) = pair().await;
        let wire: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;name=value\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n";
        let upstream = async move {
            read_head(&mut up).await;
            for b in wire {
                up.write_all(&[*b]).await.unwrap();
                up.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            up
        };
        let (resp, _up) = tokio::join!(exchange(conn, request("GET", "/", empty())).response(), upstream);
        let (body, exchange) = body_of(resp.unwrap()).await;
        let (data, trailers) = body.unwrap();
        assert_eq!(data, "wikipedia in\r\n\r\nchunks.");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
        assert!(exchange.into_reusable().is_some());
    }

    #[tokio::test]
    async fn a_response_without_length_runs_to_the_close_and_ends_the_connection() {
        let (conn, mut up) = pair().await;
        let upstream = async move {
            read_head(&mut up).await;
            up.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of ").await.unwrap();
            up.write_all(b"it").await.unwrap();
        };
        let (resp, ()) = tokio::join!(exchange(conn, request("GET", "/", empty())).response(), upstream);
        let (body, exchange) = body_of(resp.unwrap()).await;
        assert_eq!(body.unwrap().0, "all of it");
        assert!(exchange.into_reusable().is_none());
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_their_headers_say() {
        for (method, reply) in [
            ("HEAD", &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"[..]),
            ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
            ("GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
        ] {
            let (resp, _) = exchange_with(request(method, "/", empty()), reply).await;
            let resp = resp.unwrap();
            assert!(resp.body().is_end_stream(), "{method} {}", resp.status());
            assert!(resp.into_body().into_reusable().is_some());
        }
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (resp, _) = exchange_with(
            request("GET", "/", empty()),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 201);
        assert!(!resp.headers().contains_key("link"));
        assert_eq!(body_of(resp).await.0.unwrap().0, "ok");
    }

    #[tokio::test]
    async fn switching_protocols_hands_over_the_socket_with_the_bytes_behind_the_head() {
        let (conn, mut up) = pair().await;
        let mut req = request("GET", "/ws", empty());
        req.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        let upstream = async move {
            let head = read_head(&mut up).await;
            up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nearly")
                .await
                .unwrap();
            (head, up)
        };
        let (resp, (head, mut up)) = tokio::join!(exchange(conn, req).response(), upstream);
        assert!(head.contains("connection: upgrade\r\n") && head.contains("upgrade: websocket\r\n"));
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 101);
        assert!(resp.body().is_end_stream());
        let mut tunnel = resp.into_body().into_upgraded().expect("a 101 hands the socket over");
        let mut got = [0u8; 5];
        tunnel.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early");
        up.write_all(b" late").await.unwrap();
        tunnel.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b" late");
        tunnel.write_all(b"back").await.unwrap();
        assert_eq!(read_n(&mut up, 4).await, "back");
    }

    #[tokio::test]
    async fn malformed_responses_are_protocol_errors() {
        let many_headers: &'static [u8] = {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..101 {
                head.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            Box::leak(head.into_boxed_slice())
        };
        let huge_head: &'static [u8] = {
            let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            head.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
            head.extend_from_slice(b"\r\n\r\n");
            Box::leak(head.into_boxed_slice())
        };
        for reply in [
            &b"HELLO THERE\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            many_headers,
            huge_head,
        ] {
            let (resp, _) = exchange_with(request("GET", "/", empty()), reply).await;
            let err = resp.err();
            assert!(
                matches!(err, Some(Error::Protocol(_))),
                "{:?}: {err:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(40)])
            );
        }
        // Bad framing inside a chunked body fails the body, and the connection is not reused.
        for reply in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nbad trailer\r\n\r\n",
        ] {
            let (resp, _) = exchange_with(request("GET", "/", empty()), reply).await;
            let (body, exchange) = body_of(resp.unwrap()).await;
            assert!(matches!(body, Err(Error::Protocol(_))), "{body:?}");
            assert!(exchange.into_reusable().is_none());
        }
    }

    #[tokio::test]
    async fn an_upstream_that_closes_early_is_a_closed_connection_error() {
        // Before any response.
        let (conn, mut up) = pair().await;
        let upstream = async move {
            read_head(&mut up).await;
            drop(up);
        };
        let (resp, ()) = tokio::join!(exchange(conn, request("GET", "/", empty())).response(), upstream);
        assert!(matches!(resp.err(), Some(Error::Closed("before sending a response"))));

        // Three bytes of ten, then the close.
        let (conn, mut up) = pair().await;
        let upstream = async move {
            read_head(&mut up).await;
            up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .unwrap();
            drop(up);
        };
        let (resp, ()) = tokio::join!(exchange(conn, request("GET", "/", empty())).response(), upstream);
        let (body, exchange) = body_of(resp.unwrap()).await;
        assert!(matches!(body, Err(Error::Closed(_))), "{body:?}");
        assert!(exchange.into_reusable().is_none());
    }

    #[tokio::test]
    async fn connection_close_http_1_0_and_trailing_bytes_end_the_connection() {
        for (reply, reusable) in [
            (
                &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
                false,
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
            (
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA", false),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
                false,
            ),
        ] {
            let (resp, _) = exchange_with(request("GET", "/", empty()), reply).await;
            let (body, exchange) = body_of(resp.unwrap()).await;
            body.unwrap();
            assert_eq!(
                exchange.into_reusable().is_some(),
                reusable,
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[tokio::test]
    async fn framing_only_hop_by_hop_fields_stay_out_of_the_response_head() {
        let (resp, _) = exchange_with(
            request("GET", "/", empty()),
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nx-kept: 1\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let resp = resp.unwrap();
        let h = resp.headers();
        assert!(h.get("connection").is_none() && h.get("keep-alive").is_none(), "{h:?}");
        assert_eq!(h.get("x-kept").unwrap(), "1");
        let (body, exchange) = body_of(resp).await;
        body.unwrap();
        assert!(exchange.into_reusable().is_some());

        // A `Connection` that names another field stays, so the hop-by-hop strip removes both;
        // its `close` still ends the connection.
        let (resp, _) = exchange_with(
            request("GET", "/", empty()),
            b"HTTP/1.1 200 OK\r\nconnection: close, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let resp = resp.unwrap();
        assert_eq!(resp.headers().get("connection").unwrap(), "close, x-hop");
        let mut head = resp.headers().clone();
        crate::http::headers::strip_hop_by_hop(&mut head, false);
        assert!(head.len() == 1 && head.contains_key(CONTENT_LENGTH), "{head:?}");
        let (body, exchange) = body_of(resp).await;
        body.unwrap();
        assert!(exchange.into_reusable().is_none());
    }

    #[tokio::test]
    async fn response_fields_are_named_and_framed_whatever_their_case() {
        let (resp, _) = exchange_with(
            request("GET", "/", empty()),
            b"HTTP/1.1 200 OK\r\nSERVER: up\r\nDate: today\r\nContent-TYPE: text/plain\r\nX-Length-Of-It: 9\r\nCONTENT-LENGTH: 3\r\n\r\nabc",
        )
        .await;
        let resp = resp.unwrap();
        let h = resp.headers();
        assert_eq!(h.get(http::header::SERVER).unwrap(), "up");
        assert_eq!(h.get(http::header::DATE).unwrap(), "today");
        assert_eq!(h.get(http::header::CONTENT_TYPE).unwrap(), "text/plain");
        assert_eq!(h.get("x-length-of-it").unwrap(), "9");
        assert_eq!(h.get(CONTENT_LENGTH).unwrap(), "3");
        let (body, exchange) = body_of(resp).await;
        assert_eq!(&body.unwrap().0[..], b"abc");
        assert!(exchange.into_reusable().is_some());

        let (resp, _) = exchange_with(
            request("GET", "/", empty()),
            b"HTTP/1.1 200 OK\r\nTransfer-ENCODING: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        .await;
        let (body, _) = body_of(resp.unwrap()).await;
        assert_eq!(&body.unwrap().0[..], b"ok");
    }

    #[tokio::test]
    async fn the_request_body_keeps_flowing_while_the_response_streams() {
        // An echo: the upstream answers at once and sends back each piece as it arrives, so
        // the exchange must write and read at the same time.
        let (tx, body) = chan();
        let mut req = request("POST", "/echo", body);
        req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("15"));
        let (conn, mut up) = pair().await;
        let upstream = tokio::spawn(async move {
            read_head(&mut up).await;
            up.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            for _ in 0..3 {
                let piece = read_n(&mut up, 5).await;
                up.write_all(format!("5\r\n{piece}\r\n").as_bytes()).await.unwrap();
            }
            up.write_all(b"0\r\n\r\n").await.unwrap();
            up
        });
        let resp = tokio::time::timeout(LIMIT, exchange(conn, req).response())
            .await
            .unwrap()
            .unwrap();
        let mut exchange = resp.into_body();
        for piece in ["ping1", "ping2", "ping3"] {
            tx.send(Frame::data(Bytes::from(piece))).unwrap();
            let frame = tokio::time::timeout(LIMIT, exchange.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(frame.into_data().unwrap(), piece);
        }
        drop(tx);
        assert!(tokio::time::timeout(LIMIT, exchange.frame()).await.unwrap().is_none());
        assert!(exchange.into_reusable().is_some());
        drop(upstream.await.unwrap());
    }

    #[tokio::test]
    async fn a_response_that_ends_before_the_upload_does_closes_the_connection() {
        let (_tx, body) = chan();
        let mut req = request("POST", "/big", body);
        req.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("1000000"));
        let (resp, _) = exchange_with(req, b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!").await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 413);
        let (body, exchange) = body_of(resp).await;
        assert_eq!(body.unwrap().0, "big!");
        assert!(exchange.into_reusable().is_none());
    }

    #[tokio::test]
    async fn a_head_near_the_limit_and_a_chunked_body_arriving_in_pieces_are_read_whole() {
        let (conn, mut up) = pair().await;
        let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-big: ";
        let mut head = start.to_vec();
        head.resize(MAX_HEAD - 200, b'h');
        head.extend_from_slice(b"\r\n\r\n");
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = head.clone();
        for chunk in body.chunks(30_000) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let upstream = tokio::spawn(async move {
            read_head(&mut up).await;
            for piece in wire.chunks(1000) {
                up.write_all(piece).await.unwrap();
                up.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            up
        });
        let resp = exchange(conn, request("GET", "/", empty())).response().await.unwrap();
        assert_eq!(resp.headers()["x-big"].len(), MAX_HEAD - 200 - start.len());
        let (got, exchange) = body_of(resp).await;
        assert_eq!(got.unwrap().0, body);
        assert!(exchange.into_reusable().is_some());
        drop(upstream.await.unwrap());
    }

    #[tokio::test]
    async fn a_large_body_is_read_whole_and_the_grown_buffer_is_given_back() {
        let (conn, mut up) = pair().await;
        let size = 3 * READ_BUF_MAX + 123;
        let upstream = tokio::spawn(async move {
            read_head(&mut up).await;
            up.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            up.write_all(&body).await.unwrap();
            up
        });
        let resp = exchange(conn, request("GET", "/", empty())).response().await.unwrap();
        let (body, exchange) = body_of(resp).await;
        let data = body.unwrap().0;
        assert_eq!(data.len(), size);
        assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        let conn = exchange.into_reusable().unwrap();
        assert_eq!(conn.buf.capacity(), READ_BUF);
        drop(upstream.await.unwrap());
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_or_wrote_to_is_not_open() {
        for unasked in [None, Some(&b"HTTP/1.1 408 Request Timeout\r\n\r\n"[..])] {
            let (resp, up) = {
                let (conn, mut up) = pair().await;
                let upstream = async move {
                    read_head(&mut up).await;
                    up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    up
                };
                let (resp, up) = tokio::join!(exchange(conn, request("GET", "/", empty())).response(), upstream);
                (resp.unwrap(), up)
            };
            let conn = resp.into_body().into_reusable().unwrap();
            assert!(conn.is_open(Duration::ZERO), "a quiet idle connection is open");
            let mut up = up;
            match unasked {
                Some(bytes) => up.write_all(bytes).await.unwrap(),
                None => drop(up),
            }
            // The event loop learns of it when it next polls the socket: wait for that.
            tokio::time::timeout(LIMIT, async {
                while conn.is_open(Duration::ZERO) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the close (or the unasked bytes) is noticed");
        }
    }

    /// Where stray bytes are likely (after a response with no body by rule, after a long
    /// idle), bytes that reached the socket before the event loop has looked (no await
    /// between the upstream's write and the reuse) are still seen: the socket is asked.
    #[tokio::test(flavor = "current_thread")]
    async fn stray_bytes_the_event_loop_has_not_seen_yet_stop_a_reuse() {
        for (method, answer) in [
            ("HEAD", &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..]),
            ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
            ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ] {
            let (conn, mut up) = pair().await;
            let upstream = async {
                read_head(&mut up).await;
                up.write_all(answer).await.unwrap();
            };
            let (resp, ()) = tokio::join!(exchange(conn, request(method, "/", empty())).response(), upstream);
            let conn = resp
                .unwrap()
                .into_body()
                .into_reusable()
                .expect("a clean bodiless exchange");
            assert!(conn.is_open(Duration::ZERO));
            let mut up = up.into_std().unwrap();
            up.set_nonblocking(false).unwrap();
            std::io::Write::write_all(&mut up, b"hello").unwrap();
            // No await since the write: the runtime's readiness still says "quiet".
            assert!(
                !conn.is_open(Duration::ZERO),
                "a body after {method} {answer:?} must be noticed"
            );
        }
        // A long idle: a 408 from the upstream's idle timer, written just now.
        let (conn, up) = pair().await;
        assert!(conn.is_open(PEEK_AFTER_IDLE));
        let mut up = up.into_std().unwrap();
        up.set_nonblocking(false).unwrap();
        std::io::Write::write_all(&mut up, b"HTTP/1.1 408 Request Timeout\r\n\r\n").unwrap();
        assert!(
            !conn.is_open(PEEK_AFTER_IDLE),
            "a 408 after a long idle must be noticed"
        );
        let (conn, up) = pair().await;
        up.into_std().unwrap().shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!conn.is_open(PEEK_AFTER_IDLE), "a close must be noticed at once");
    }

    /// A response carrying `body`: framed by length (0), chunked at `cuts` (1, with a trailer
    /// when asked) or by the close (2).
    fn response_wire(body: &[u8], framing: u8, cuts: &[usize], trailer: bool) -> Vec<u8> {
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        match framing {
            0 => {
                wire.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                wire.extend_from_slice(body);
            }
            1 => {
                wire.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
                bounds.extend([0, body.len()]);
                bounds.sort_unstable();
                bounds.dedup();
                for piece in bounds.windows(2) {
                    let chunk = &body[piece[0]..piece[1]];
                    wire.extend_from_slice(format!("{:X};x=y\r\n", chunk.len()).as_bytes());
                    wire.extend_from_slice(chunk);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n");
                if trailer {
                    wire.extend_from_slice(b"x-digest: abc\r\n");
                }
                wire.extend_from_slice(b"\r\n");
            }
            _ => {
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(body);
            }
        }
        wire
    }

    /// Plays `wire` as the upstream in pieces of the given sizes (cycled), then closes when
    /// `close`, and returns the exchange's response.
    fn play(wire: Vec<u8>, pieces: Vec<usize>, close: bool) -> Result<(Bytes, Option<HeaderMap>, bool), Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (conn, mut up) = pair().await;
            let upstream = tokio::spawn(async move {
                read_head(&mut up).await;
                let mut at = 0;
                for size in pieces.iter().cycle() {
                    if at >= wire.len() {
                        break;
                    }
                    let n = (*size).max(1).min(wire.len() - at);
                    if up.write_all(&wire[at..at + n]).await.is_err() {
                        break;
                    }
                    at += n;
                    tokio::task::yield_now().await;
                }
                if close {
                    drop(up);
                    None
                } else {
                    Some(up)
                }
            });
            let resp = tokio::time::timeout(LIMIT, exchange(conn, request("GET", "/", empty())).response())
                .await
                .unwrap()?;
            let (body, exchange) = body_of(resp).await;
            let kept = upstream.await.unwrap();
            let (data, trailers) = body?;
            let reusable = exchange.into_reusable().is_some();
            drop(kept);
            Ok((data, trailers, reusable))
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the framing and however the bytes are split on the wire, the body (and
        /// trailer) read is the body sent, and only a close-delimited one ends the connection.
        #[test]
        fn any_framing_split_anywhere_reads_back_the_same_body(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
            framing in 0u8..3,
            cuts in proptest::collection::vec(0usize..3000, 0..6),
            pieces in proptest::collection::vec(1usize..700, 1..6),
            trailer in proptest::bool::ANY,
        ) {
            let wire = response_wire(&body, framing, &cuts, trailer);
            let (data, trailers, reusable) = play(wire, pieces, framing == 2).unwrap();
            assert_eq!(&data[..], &body[..]);
            assert_eq!(trailers.is_some(), framing == 1 && trailer);
            if let Some(t) = trailers {
                assert_eq!(t["x-digest"], "abc");
            }
            assert_eq!(reusable, framing != 2);
        }

        /// Arbitrary bytes, as a whole response or after a valid head, end in a response or
        /// an error: never a panic, never a hang.
        #[test]
        fn arbitrary_bytes_from_the_upstream_end_in_an_answer_or_an_error(
            head in 0u8..3,
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            pieces in proptest::collection::vec(1usize..200, 1..4),
        ) {
            let mut wire = match head {
                0 => Vec::new(),
                1 => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                _ => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec(),
            };
            wire.extend_from_slice(&junk);
            let _ = play(wire, pieces, true);
        }
    }

    #[test]
    fn content_lengths_are_plain_digits_that_fit() {
        for (text, n) in [
            (&b"0"[..], Some(0)),
            (b"007", Some(7)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"", None),
            (b"+1", None),
            (b"-1", None),
            (b" 1", None),
            (b"1a", None),
            (b"1 2", None),
        ] {
            assert_eq!(digits(text), n, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex_without_leading_zeros() {
        let mut buf = [0u8; 16];
        assert_eq!(hex_digits(0, &mut buf), b"0");
        assert_eq!(hex_digits(26, &mut buf), b"1a");
        assert_eq!(hex_digits(0x10000, &mut buf), b"10000");
        assert_eq!(hex_digits(usize::MAX, &mut buf), b"ffffffffffffffff");
    }
}
