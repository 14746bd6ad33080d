//! The socket both sides of the proxy read and write through: TCP, or TLS over TCP.
//!
//! hyper hands a response or request over as several slices (the head, then each body
//! chunk) and a plain tokio socket turns them into `writev(2)`. For the small messages that
//! make up most sidecar traffic, copying the slices into one buffer and sending that with
//! `send(2)` costs less than the vectored call's extra work in the kernel (measured in
//! docs/performance.md); large writes stay vectored, so a body is never copied whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Writes up to this many bytes in all are gathered into one buffer (the thread's, reused).
const GATHER_LIMIT: usize = 2048;

thread_local! {
    /// Where this thread gathers a small vectored write: kept, so it is neither allocated nor
    /// zeroed per write (a zeroed 2 KiB array on the stack cost a `memset` per response).
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A connected stream, plain TCP or TLS over TCP. TLS streams are boxed: rustls keeps about
/// 1 KiB of state per connection, which plain connections (most of a sidecar's) should not
/// carry room for.
pub(crate) enum Socket {
    Plain(Tcp),
    Tls(Box<tokio_rustls::TlsStream<Tcp>>),
}

/// A TCP stream whose small vectored writes go out as one `send(2)`. TLS runs over it too:
/// rustls hands its records over as a vectored write, one slice per record, and a single
/// slice goes out as `send` rather than a one-element `writev`.
pub(crate) struct Tcp(TcpStream);

impl Tcp {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Tcp(stream)
    }
}

impl Socket {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Socket::Plain(Tcp(stream))
    }

    /// The TCP stream underneath.
    fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Plain(s) => &s.0,
            Socket::Tls(t) => &t.get_ref().0.0,
        }
    }

    /// For a connection at rest: true when the peer has neither closed it nor sent anything,
    /// as far as the event loop has seen. Free (no syscall) when the socket has signalled
    /// nothing; but bytes that arrived since the event loop last looked are not seen. Over
    /// TLS any record at rest (a close_notify, a key update) counts as not quiet.
    pub(crate) fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => self.is_quiet_now(),
        }
    }

    /// [`Socket::is_quiet`], asking the kernel itself (`recv` with `MSG_PEEK`, non-blocking):
    /// bytes that arrived a moment ago are seen too. One syscall, about 350 ns here.
    pub(crate) fn is_quiet_now(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(self.tcp()).peek(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

impl AsyncRead for Socket {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(&mut s.0).poll_read(cx, buf),
            Socket::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(&mut s.0).poll_write(cx, data),
            Socket::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, data),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            // rustls puts the slices into its records itself.
            Socket::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(&mut s.0).poll_flush(cx),
            Socket::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(&mut s.0).poll_shutdown(cx),
            Socket::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Tcp {
    #[inline]
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    #[inline]
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut stream = Pin::new(&mut self.0);
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        match (filled.next(), filled.next()) {
            (None, _) => Poll::Ready(Ok(0)),
            (Some(only), None) => stream.as_mut().poll_write(cx, only),
            (Some(_), Some(_)) => {
                let total: usize = bufs.iter().map(|b| b.len()).sum();
                if total > GATHER_LIMIT {
                    return stream.poll_write_vectored(cx, bufs);
                }
                GATHER.with_borrow_mut(|one| {
                    one.clear();
                    for b in bufs {
                        one.extend_from_slice(b);
                    }
                    stream.poll_write(cx, one)
                })
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Socket::new(client.unwrap()), accepted.unwrap().0)
    }

    /// Writes `slices` vectored until all of it is out and returns what the peer read.
    async fn round_trip(slices: &[&[u8]]) -> Vec<u8> {
        let (mut socket, mut peer) = pair().await;
        // Read while writing, so a large write cannot stall on full socket buffers.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.map(|_| got)
        });
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut sent = 0;
        while sent < total {
            // Rebuild the slices past what was written, as hyper does after a short write.
            let mut skip = sent;
            let rest: Vec<IoSlice<'_>> = slices
                .iter()
                .filter_map(|s| {
                    if skip >= s.len() {
                        skip -= s.len();
                        None
                    } else {
                        let part = &s[skip..];
                        skip = 0;
                        Some(IoSlice::new(part))
                    }
                })
                .collect();
            let n = socket.write_vectored(&rest).await.unwrap();
            assert!(n > 0);
            sent += n;
        }
        socket.shutdown().await.unwrap();
        reader.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn small_and_large_vectored_writes_arrive_whole_and_in_order() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".as_slice();
        assert_eq!(round_trip(&[head, b"", b"ok"]).await, [head, b"ok"].concat());
        assert_eq!(round_trip(&[b"", b"only"]).await, b"only");
        assert!(round_trip(&[b"", b""]).await.is_empty());
        // Exactly the limit is gathered; one byte more goes out vectored.
        let at_limit = vec![b'a'; GATHER_LIMIT - head.len()];
        assert_eq!(round_trip(&[head, &at_limit]).await, [head, &at_limit].concat());
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&[head, &big, b"tail"]).await, [head, &big, b"tail"].concat());
    }
}
