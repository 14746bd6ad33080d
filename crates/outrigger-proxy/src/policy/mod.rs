//! The reliability decisions a request meets on its way to an upstream, in order: fault
//! injection for rehearsals (`fault`), the retry policy and budget (`retry`), the circuit
//! breaker and concurrency limit (`circuit`), and the choice of endpoint (`balance`). The
//! rules themselves are pure state machines in `outrigger-resilience`; these modules wire
//! them to requests.

pub(crate) mod balance;
pub mod circuit;
pub(crate) mod fault;
pub(crate) mod retry;
pub(crate) mod stale;
