//! An upstream that answers with raw bytes from a script, for the faults a well-behaved HTTP
//! server cannot make: bare LFs in chunk lines, two lengths, a body after a 204, an HTTP/1.0
//! chunked answer, silence in the middle of a body.
//!
//! ```no_run
//! # async fn f() {
//! use outrigger_testkit::{Act, Scripted};
//! let up = Scripted::start(vec![
//!     Act::send("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
//!     Act::Hang,                                      // three bytes of ten, then silence
//! ]).await;
//! # }
//! ```
//!
//! Each connection reads a request (head and body, by its `Content-Length` or chunked
//! framing), plays the script, and, unless the script closed or hung, reads the next one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One step of the answer.
#[derive(Clone, Debug)]
pub enum Act {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long before the next step (the bytes before it are already on the wire).
    Pause(Duration),
    /// Keep the connection open and say nothing more, ever.
    Hang,
    /// Close the connection.
    Close,
}

impl Act {
    /// [`Act::Send`] of text.
    pub fn send(text: &str) -> Act {
        Act::Send(text.as_bytes().to_vec())
    }
}

/// A running scripted upstream on 127.0.0.1, port chosen by the OS. Stops when dropped.
pub struct Scripted {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Starts an upstream that answers every request with `script`.
    pub async fn start(script: Vec<Act>) -> Scripted {
        let (listener, addr) = crate::bind_loopback().await;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script.clone(), seen.clone()));
            }
        });
        Scripted {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, as raw bytes (head, body and trailers), as text.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, script: Vec<Act>, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(request);
        for act in &script {
            match act {
                Act::Send(bytes) => {
                    if stream.write_all(bytes).await.is_err() {
                        return;
                    }
                }
                Act::Pause(d) => tokio::time::sleep(*d).await,
                Act::Hang => {
                    // Read (and drop) whatever comes until the peer goes away.
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                Act::Close => return,
            }
        }
    }
}

/// Reads one request from `stream` (`buf` keeps what came after it); `None` at the close.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let end = if head.contains("transfer-encoding: chunked") {
        // The last chunk (`0` on a line of its own), then trailers up to an empty line.
        loop {
            let body = &buf[head_end..];
            let last = if body.starts_with(b"0\r\n") {
                Some(0)
            } else {
                find(body, b"\r\n0\r\n").map(|i| i + 2)
            };
            if let Some(last) = last
                && let Some(i) = find(&body[last..], b"\r\n\r\n")
            {
                break head_end + last + i + 4;
            }
            fill(stream, buf).await?;
        }
    } else {
        let end = head_end + length.unwrap_or(0);
        while buf.len() < end {
            fill(stream, buf).await?;
        }
        end
    };
    let request = buf[..end].to_vec();
    buf.drain(..end);
    Some(request)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        _ => None,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
