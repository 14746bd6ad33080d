//! Passive outlier detection for one endpoint: after `consecutive_failures` failures in a
//! row it is ejected (taken out of balancing) for `eject_for × n`, where `n` counts its
//! ejections, up to ten times `eject_for`. The count resets once the endpoint has stayed
//! healthy for as long as its last ejection. Whether an ejection is allowed at all (the
//! `max_ejected_percent` cap) is the upstream's decision: see [`max_ejectable`].

use std::time::{Duration, Instant};

/// Outlier detection settings.
#[derive(Clone, Copy, Debug)]
pub struct OutlierSettings {
    /// Failures in a row before ejection.
    pub consecutive_failures: u32,
    /// First ejection period.
    pub eject_for: Duration,
    /// At most this share (0–100) of an upstream's endpoints may be ejected at once.
    pub max_ejected_percent: f64,
}

/// How many of `endpoints` may be ejected at once. A single endpoint is never ejected: the
/// circuit breaker is the right tool when there is nowhere else to go.
pub fn max_ejectable(endpoints: usize, max_ejected_percent: f64) -> usize {
    if endpoints <= 1 {
        return 0;
    }
    ((endpoints as f64) * max_ejected_percent / 100.0).floor() as usize
}

/// One endpoint's record.
#[derive(Clone, Debug, Default)]
pub struct Outlier {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    last_period: Duration,
}

impl Outlier {
    /// When the last ejection ends (or ended).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Whether the endpoint is out of rotation at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// Records a result. Returns `true` when the endpoint has now earned an ejection (the
    /// caller checks the cap and then calls [`Outlier::eject`]).
    pub fn record(&mut self, now: Instant, failed: bool, settings: &OutlierSettings) -> bool {
        if failed {
            self.consecutive += 1;
            return self.consecutive >= settings.consecutive_failures && !self.is_ejected(now);
        }
        self.consecutive = 0;
        if self.ejected_until.is_some_and(|until| now >= until + self.last_period) {
            self.ejections = 0;
            self.ejected_until = None;
        }
        false
    }

    /// Ejects the endpoint; returns for how long.
    pub fn eject(&mut self, now: Instant, settings: &OutlierSettings) -> Duration {
        self.ejections = (self.ejections + 1).min(10);
        let period = settings.eject_for.saturating_mul(self.ejections);
        self.ejected_until = Some(now + period);
        self.last_period = period;
        self.consecutive = 0;
        period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: OutlierSettings = OutlierSettings {
        consecutive_failures: 3,
        eject_for: Duration::from_secs(30),
        max_ejected_percent: 50.0,
    };

    #[test]
    fn ejects_after_consecutive_failures_for_growing_periods() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        assert!(!o.record(t0, true, &S));
        assert!(!o.record(t0, true, &S));
        assert!(o.record(t0, true, &S));
        assert_eq!(o.eject(t0, &S), Duration::from_secs(30));
        assert!(o.is_ejected(t0 + Duration::from_secs(29)));
        let back = t0 + Duration::from_secs(30);
        assert!(!o.is_ejected(back));
        for _ in 0..2 {
            o.record(back, true, &S);
        }
        assert!(o.record(back, true, &S));
        assert_eq!(
            o.eject(back, &S),
            Duration::from_secs(60),
            "the second ejection is twice as long"
        );
    }

    #[test]
    fn a_healthy_stretch_resets_the_ejection_count() {
        let t0 = Instant::now();
        let mut o = Outlier::default();
        for _ in 0..3 {
            o.record(t0, true, &S);
        }
        o.eject(t0, &S);
        let later = t0 + Duration::from_secs(61);
        o.record(later, false, &S);
        for _ in 0..3 {
            o.record(later, true, &S);
        }
        assert_eq!(o.eject(later, &S), Duration::from_secs(30));
    }

    #[test]
    fn the_cap_never_ejects_a_lone_endpoint() {
        assert_eq!(max_ejectable(1, 100.0), 0);
        assert_eq!(max_ejectable(2, 50.0), 1);
        assert_eq!(max_ejectable(3, 50.0), 1);
        assert_eq!(max_ejectable(10, 10.0), 1);
        assert_eq!(max_ejectable(4, 100.0), 4);
    }
}
