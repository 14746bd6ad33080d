//! A sliding window of counts in ten buckets.

use std::time::{Duration, Instant};

/// Counts of calls in one slice of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
    pub(crate) retries: u64,
}

/// Ten buckets covering `window`; old buckets are cleared as time moves on.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    origin: Instant,
    bucket: Duration,
    /// (bucket index since origin, counts)
    slots: [(u64, Counts); 10],
}

impl Window {
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        let bucket = (window / 10).max(Duration::from_millis(1));
        Window {
            origin: now,
            bucket,
            slots: [(u64::MAX, Counts::default()); 10],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    /// The bucket for `now`, cleared if it held an older slice.
    pub(crate) fn current(&mut self, now: Instant) -> &mut Counts {
        let i = self.index(now);
        let slot = &mut self.slots[(i % 10) as usize];
        if slot.0 != i {
            *slot = (i, Counts::default());
        }
        &mut slot.1
    }

    /// The sum over the window ending at `now`.
    pub(crate) fn total(&self, now: Instant) -> Counts {
        let i = self.index(now);
        self.slots
            .iter()
            .filter(|(at, _)| *at != u64::MAX && *at + 10 > i && *at <= i)
            .fold(Counts::default(), |mut acc, (_, c)| {
                acc.calls += c.calls;
                acc.failures += c.failures;
                acc.slow += c.slow;
                acc.retries += c.retries;
                acc
            })
    }

    pub(crate) fn clear(&mut self) {
        self.slots = [(u64::MAX, Counts::default()); 10];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire_after_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), t0);
        w.current(t0).calls += 3;
        w.current(t0 + Duration::from_secs(5)).calls += 2;
        assert_eq!(w.total(t0 + Duration::from_secs(5)).calls, 5);
        assert_eq!(
            w.total(t0 + Duration::from_millis(10_500)).calls,
            2,
            "the first second has slid out"
        );
        assert_eq!(w.total(t0 + Duration::from_secs(16)).calls, 0);
        // A bucket reused after a full turn starts from zero.
        w.current(t0 + Duration::from_secs(20)).calls += 1;
        assert_eq!(w.total(t0 + Duration::from_secs(20)).calls, 1);
    }
}
