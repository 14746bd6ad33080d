//! Connections to upstream endpoints: the per-endpoint pool (HTTP/1.1 connections kept
//! between requests, one multiplexed HTTP/2 connection) and our own HTTP/1.1 client (`h1`),
//! driven inside the request's task. What an upstream is at run time (its breaker,
//! balancer and pools together) is `crate::runtime::upstream`.

pub(crate) mod h1;
pub(crate) mod pool;
