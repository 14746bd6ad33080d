//! Where requests come in: the listeners (accept loop, HTTP/1.1 or HTTP/2 told apart by
//! peeking, a watch over each connection's timeouts) hand each request to the request path
//! (`crate::path`) and its response back to the client.

pub(crate) mod listener;
mod transparent;
