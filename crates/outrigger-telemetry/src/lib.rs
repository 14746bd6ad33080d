//! outrigger's telemetry: the Prometheus registry with every metric pre-declared, JSON
//! logs (one object per line, a sentence in `msg`), and span export over OTLP.

pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod recent;
pub mod spans;

pub use metrics::Metrics;
pub use tracing::Level;
