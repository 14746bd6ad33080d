//! The decisions behind outrigger's resilience, apart from any I/O.
//!
//! Every type here is a plain state machine: it is told the time (`now`) and what happened,
//! and answers what to do. That keeps each rule testable with a table of events, and keeps
//! the proxy's layers down to wiring these answers to requests.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod ewma;
pub mod inflation;
pub mod outlier;
mod window;

pub use breaker::{Admission, Breaker, BreakerSettings, BreakerState, Call, Transition};
pub use budget::RetryBudget;
pub use ewma::PeakEwma;
pub use inflation::{InflationSettings, LatencyBaseline};
pub use outlier::{Outlier, OutlierSettings};

/// A duration as a person writes it: `250ms`, `2s`, `1.5s`, `40µs`.
pub fn humanize(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        format!("{}µs", d.as_micros())
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
