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
    let mut out = String::with_capacity(8);
    humanize_into(&mut out, d);
    out
}

/// [`humanize`], appended to `out` (the access line's sentence is built in place; the
/// millisecond and microsecond forms, which nearly every request takes, skip `fmt`).
pub fn humanize_into(out: &mut String, d: std::time::Duration) {
    use std::fmt::Write as _;
    let ms = d.as_millis();
    let mut digits = itoa::Buffer::new();
    if ms == 0 {
        out.push_str(digits.format(d.as_micros()));
        out.push_str("µs");
    } else if ms < 1000 {
        out.push_str(digits.format(ms));
        out.push_str("ms");
    } else if ms.is_multiple_of(1000) {
        out.push_str(digits.format(ms / 1000));
        out.push('s');
    } else {
        let _ = write!(out, "{:.1}s", d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_read_as_a_person_writes_them() {
        for (d, want) in [
            (Duration::ZERO, "0µs"),
            (Duration::from_nanos(40_900), "40µs"),
            (Duration::from_micros(999), "999µs"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_micros(250_700), "250ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(61_040), "61.0s"),
        ] {
            assert_eq!(super::humanize(d), want, "{d:?}");
            let mut appended = String::from("after ");
            super::humanize_into(&mut appended, d);
            assert_eq!(appended, format!("after {want}"));
        }
    }
}
