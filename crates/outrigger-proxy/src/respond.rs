//! The response on its way back to the client: the upstream's streaming body or one the
//! proxy made, with the request's completion record, which writes the access line and
//! observes the metrics when the last frame has been handed to the client, or when the
//! client goes away first. An upstream body that goes silent for the route's
//! `body_idle_timeout`, or a gRPC call's that runs past its deadline, is ended with an error.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;
use crate::error::Code;
use crate::record::Completion;
use crate::upstream::pool::UpstreamBody;

/// The gRPC deadline passed while the response was streaming.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded(pub std::time::Duration);

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the deadline of {} passed while the response was streaming",
            outrigger_resilience::humanize(self.0)
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

/// What a response body is made of.
pub(crate) enum ProxyBody {
    /// Nothing.
    Empty,
    /// A body outrigger made (an error document), sent in one frame.
    Full(Option<Bytes>),
    /// The upstream's body, streamed.
    Upstream(UpstreamBody),
}

impl ProxyBody {
    /// An empty body.
    pub(crate) fn empty() -> Self {
        ProxyBody::Empty
    }

    /// A body of these bytes.
    pub(crate) fn full(bytes: Bytes) -> Self {
        ProxyBody::Full(Some(bytes))
    }

    /// An error rendered by [`crate::error::render`]: no body when it made none.
    pub(crate) fn rendered(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::full(bytes)
        }
    }
}

/// The response body stopped coming: the upstream sent nothing of it for this long.
#[derive(Debug)]
pub(crate) struct BodyIdle(pub std::time::Duration);

impl std::fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upstream sent nothing of the response body for {} (the route's body_idle_timeout)",
            outrigger_resilience::humanize(self.0)
        )
    }
}

impl std::error::Error for BodyIdle {}

/// What only some response bodies need: the timers of one that had to wait for the
/// upstream, and the copy kept for stale-if-error. Made at the first wait (or with a gRPC
/// deadline, or a copy), so a body that comes with its head carries none: a larger
/// `ResponseBody` cost a `memcpy` on each of the moves hyper makes of it.
#[derive(Default)]
struct Extras {
    /// gRPC: the stream must end by then; the deadline's length, for the log.
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, std::time::Duration)>,
    /// The longest silence allowed (the route's `body_idle_timeout`), and its timer.
    idle: Option<(Pin<Box<tokio::time::Sleep>>, std::time::Duration)>,
    /// The idle timer runs for the current silence (one clock read when it starts).
    idle_armed: bool,
    /// A copy of the body being kept for stale-if-error, when the route keeps answers.
    tee: Option<Box<crate::policy::stale::Tee>>,
}

impl Extras {
    /// The body ended (`whole`, or cut off): its copy is kept or dropped.
    #[cold]
    fn keep_copy(&mut self, whole: bool) {
        if let Some(tee) = self.tee.take()
            && whole
        {
            (*tee).keep();
        }
    }
}

/// A response body on its way to the client, with the request's completion record. An
/// upstream's body that goes silent for the route's `body_idle_timeout` is ended with an
/// error, as is a gRPC call's that runs past its deadline.
pub(crate) struct ResponseBody {
    body: ProxyBody,
    completion: Option<Box<Completion>>,
    extras: Option<Box<Extras>>,
}

impl ResponseBody {
    pub(crate) fn new(body: ProxyBody, completion: Option<Box<Completion>>) -> Self {
        ResponseBody {
            body,
            completion,
            extras: None,
        }
    }

    /// An upstream's body, with a copy kept as it streams when `tee` is given
    /// (stale-if-error; kept when the body ends whole).
    pub(crate) fn upstream(
        body: UpstreamBody,
        completion: Box<Completion>,
        tee: Option<Box<crate::policy::stale::Tee>>,
    ) -> Self {
        ResponseBody {
            body: ProxyBody::Upstream(body),
            completion: Some(completion),
            extras: tee.map(|tee| {
                Box::new(Extras {
                    tee: Some(tee),
                    ..Extras::default()
                })
            }),
        }
    }

    /// Ends the stream with an error (HTTP/2 RST_STREAM, or a closed HTTP/1 connection) if it
    /// is still going at `at`; `budget` is the deadline's length, for the log.
    pub(crate) fn with_deadline(mut self, at: tokio::time::Instant, budget: std::time::Duration) -> Self {
        self.extras.get_or_insert_with(Box::default).deadline = Some((Box::pin(tokio::time::sleep_until(at)), budget));
        self
    }

    fn finish(&mut self, error: Option<(Code, String)>) {
        if let Some(extras) = self.extras.as_mut()
            && extras.tee.is_some()
        {
            extras.keep_copy(error.is_none());
        }
        if let Some(mut c) = self.completion.take() {
            c.body_finished(error);
        }
    }

    /// The upstream has nothing ready: the error that ends the body if a timer has run
    /// out, after (re)arming the idle timer for this silence.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Option<BoxError> {
        let idle_limit = self.completion.as_ref().and_then(|c| c.body_idle_timeout());
        let timers = self.extras.get_or_insert_with(Box::default);
        if let Some((sleep, budget)) = timers.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let e = DeadlineExceeded(*budget);
            self.finish(Some((Code::UpstreamTimeout, e.to_string())));
            return Some(Box::new(e));
        }
        let limit = idle_limit?;
        let now = tokio::time::Instant::now();
        let at = now.checked_add(limit).unwrap_or(now);
        let (sleep, _) = timers
            .idle
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep_until(at)), limit));
        if !timers.idle_armed {
            sleep.as_mut().reset(at);
            timers.idle_armed = true;
        }
        if sleep.as_mut().poll(cx).is_ready() {
            let e = BodyIdle(limit);
            self.finish(Some((Code::UpstreamTimeout, e.to_string())));
            return Some(Box::new(e));
        }
        None
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.body {
            ProxyBody::Empty => None,
            ProxyBody::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            ProxyBody::Upstream(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(mut frame) => {
                    if let Some(t) = this.extras.as_mut() {
                        t.idle_armed = false;
                        if let Some(Ok(f)) = &frame
                            && let Some(tee) = &mut t.tee
                            && f.data_ref().is_some_and(|d| !tee.push(d))
                        {
                            t.tee = None;
                        }
                    }
                    if let Some(Ok(f)) = &mut frame {
                        crate::http::headers::strip_frame_trailers(f);
                    }
                    frame
                }
                Poll::Pending => {
                    return match this.waiting(cx) {
                        Some(e) => Poll::Ready(Some(Err(e))),
                        None => Poll::Pending,
                    };
                }
            },
        };
        match &polled {
            None => this.finish(None),
            Some(Err(e)) => {
                if let Some(t) = this.extras.as_mut() {
                    t.tee = None;
                }
                // Bytes that are not HTTP (bad chunk framing, bare LFs) are the upstream's
                // protocol error; anything else cut the body off.
                let code = match e.downcast_ref::<crate::upstream::h1::Error>() {
                    Some(crate::upstream::h1::Error::Protocol(_)) => Code::UpstreamProtocolError,
                    _ => Code::UpstreamReset,
                };
                this.finish(Some((
                    code,
                    format!("the response body from upstream broke off mid-stream ({e})"),
                )));
            }
            Some(Ok(_)) if this.body.is_end_stream() => this.finish(None),
            Some(Ok(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(b) => b.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut c) = self.completion.take() {
            // hyper may never poll a body that is empty from the start (HEAD, 204, 304); one
            // that still had frames to send was abandoned by the client.
            if self.body.is_end_stream() {
                if let Some(extras) = self.extras.as_mut() {
                    extras.keep_copy(true);
                }
                c.body_finished(None);
            } else {
                c.client_gone();
            }
        }
    }
}

impl ProxyBody {
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
        }
    }
}

/// Copies bytes both ways between a client and an upstream after a `101 Switching Protocols`
/// (WebSocket), until either side closes.
pub(crate) async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    mut upstream: crate::upstream::h1::Upgraded,
    upstream_name: std::sync::Arc<str>,
) {
    let client = match client.await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(kind = "upgrade", upstream = %upstream_name, error = %e, "A protocol upgrade (WebSocket) could not be completed.");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(upstream = %upstream_name, error = %e, "upgraded connection ended with an error");
    }
}
