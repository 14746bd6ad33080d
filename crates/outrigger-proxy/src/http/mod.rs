//! HTTP fields at the proxy boundary: which fields a request carries (one scan), request
//! ids, hop-by-hop removal, forwarding fields, `Host` and trailer rules (`headers`); W3C and
//! B3 trace context (`trace`); the fields the proxy adds upstream (`added`). Layered in that
//! order: `added` uses `trace`, which uses `headers`.

pub mod added;
pub mod headers;
pub(crate) mod trace;
