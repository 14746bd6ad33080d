//! What the proxy needs from the machine, below HTTP: small copies carved from a per-thread
//! chunk (`arena`), the wall clock at an instant (`clock`), sockets that gather small writes
//! (`net`). Nothing here knows about requests.

pub(crate) mod arena;
pub(crate) mod clock;
pub(crate) mod counter;
pub(crate) mod net;
