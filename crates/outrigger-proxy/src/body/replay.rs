//! A request body that can be sent again, up to a byte limit.
//!
//! The first attempt streams the client's body as it arrives (no waiting for the whole
//! body, so gRPC streams and large uploads are not delayed) while keeping a copy of each
//! chunk. A retry replays the copy and then carries on reading the client's body where the
//! previous attempt left off. Once the body outgrows the limit the copy is dropped and the
//! request can no longer be retried: it is sent once.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ClientBody};

struct ReplayState {
    /// Chunks read from the client so far (while within the limit).
    chunks: Vec<Bytes>,
    buffered: usize,
    limit: usize,
    /// The limit was passed: no replay possible.
    overflowed: bool,
    /// The client's body, until it ends.
    source: Option<ClientBody>,
    trailers: Option<HeaderMap>,
    size_hint: SizeHint,
}

/// One attempt's view of a replayable request body.
pub(crate) struct ReplayBody {
    shared: Arc<Mutex<ReplayState>>,
    /// Next chunk of `chunks` this replica has not sent yet.
    next: usize,
    trailers_sent: bool,
}

impl ReplayBody {
    /// Wraps the client's body, keeping up to `limit` bytes for replays.
    pub(crate) fn new(body: ClientBody, limit: usize) -> Self {
        let size_hint = body.size_hint();
        let overflowed = size_hint.lower() > limit as u64;
        let shared = ReplayState {
            chunks: Vec::new(),
            buffered: 0,
            limit,
            overflowed,
            source: Some(body),
            trailers: None,
            size_hint,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(shared)),
            next: 0,
            trailers_sent: false,
        }
    }

    /// A fresh replica for another attempt, or `None` when the body outgrew the limit.
    pub(crate) fn replay(&self) -> Option<ReplayBody> {
        let s = lock(&self.shared);
        (!s.overflowed).then(|| ReplayBody {
            shared: self.shared.clone(),
            next: 0,
            trailers_sent: false,
        })
    }

    /// Whether a replay is still possible.
    pub(crate) fn is_replayable(&self) -> bool {
        !lock(&self.shared).overflowed
    }
}

fn lock(m: &Mutex<ReplayState>) -> MutexGuard<'_, ReplayState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = lock(&this.shared);
        if let Some(chunk) = s.chunks.get(this.next).cloned() {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(source) = s.source.as_mut() else {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !s.overflowed {
                            if s.buffered + data.len() <= s.limit {
                                s.buffered += data.len();
                                s.chunks.push(data.clone());
                                this.next = s.chunks.len();
                            } else {
                                // Too big to replay: free the copy, this attempt is the only one.
                                s.overflowed = true;
                                s.chunks = Vec::new();
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref() {
                            s.trailers = Some(t.clone());
                            this.trailers_sent = true;
                        }
                        frame
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        self.next >= s.chunks.len()
            && s.source.as_ref().is_none_or(Body::is_end_stream)
            && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.shared).size_hint
    }
}
