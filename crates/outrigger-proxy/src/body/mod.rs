//! The request body on its way to the upstream: the client's (`client`: size limit, stall
//! timeout, trailer rules), kept for a replay while it fits (`replay`), or none (`request`).
//! It streams frame by frame with hyper's backpressure: nothing here buffers a whole body
//! but the bounded replay buffer. The response side is `crate::respond`.

mod client;
pub(crate) mod replay;
mod request;

pub(crate) use client::{ClientBody, ClientBodyError};
pub(crate) use request::RequestBody;

/// The error a response body ends with: the upstream's, or a deadline passed mid-stream.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
