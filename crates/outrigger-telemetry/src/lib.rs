//! outrigger's telemetry: the Prometheus registry with every metric pre-declared, and JSON
//! logs (one object per line, a sentence in `msg`).

pub mod logging;
pub mod metrics;
pub mod ratelimit;

pub use metrics::Metrics;
pub use tracing::Level;
