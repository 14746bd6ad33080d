//! Peak-sensitive exponentially weighted moving average of latency, as linkerd2-proxy and
//! Finagle balance with: a slower observation is taken at once (so a degrading endpoint is
//! avoided immediately), a faster one is blended in with a decay of `tau`.

use std::time::{Duration, Instant};

/// A latency estimate.
#[derive(Clone, Debug)]
pub struct PeakEwma {
    value_ns: f64,
    at: Instant,
    tau_ns: f64,
}

impl PeakEwma {
    /// Starts at `initial` with decay time constant `tau`.
    pub fn new(initial: Duration, tau: Duration, now: Instant) -> Self {
        PeakEwma {
            value_ns: initial.as_nanos() as f64,
            at: now,
            tau_ns: tau.as_nanos().max(1) as f64,
        }
    }

    /// Folds in one observed latency.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        if rtt_ns > self.value_ns {
            self.value_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let w = (-elapsed / self.tau_ns).exp();
            self.value_ns = self.value_ns * w + rtt_ns * (1.0 - w);
        }
        self.at = now;
    }

    /// The current estimate.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.value_ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_taken_at_once_and_decay_slowly() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10), t0);
        e.observe(Duration::from_millis(100), t0);
        assert_eq!(e.get(), Duration::from_millis(100));
        e.observe(Duration::from_millis(1), t0 + Duration::from_secs(1));
        let after = e.get();
        assert!(
            after > Duration::from_millis(80) && after < Duration::from_millis(100),
            "{after:?}"
        );
        e.observe(Duration::from_millis(1), t0 + Duration::from_secs(60));
        assert!(e.get() < Duration::from_millis(3), "{:?}", e.get());
    }
}
