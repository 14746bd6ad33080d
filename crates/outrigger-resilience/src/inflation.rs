//! Latency inflation: how much slower an upstream is now than it usually is.
//!
//! Latencies are averaged per short bucket (a tenth of the recent window); each finished
//! bucket is folded into two exponentially weighted averages, a recent one (time constant
//! `recent`, 10 s by default) and a baseline (`baseline`, 10 minutes). The ratio recent /
//! baseline is 1 when nothing changed and 2 when the upstream is twice as slow as its
//! baseline. Buckets without traffic change nothing, so a quiet night does not decay either
//! average. Folding whole buckets (not single calls) keeps a burst of a thousand calls in one
//! millisecond from counting as a thousand time steps.
//!
//! A crossing of `alert_ratio` is reported once ([`Change::Inflated`]); it is reported over
//! ([`Change::Recovered`]) when the ratio falls below three quarters of it, so a ratio hovering
//! at the threshold does not flap.

use std::time::{Duration, Instant};

/// Finished buckets needed before a ratio is reported: a baseline from a few seconds of
/// traffic would make the first slow minute look normal, or a normal one look slow.
const WARM_UP_BUCKETS: u32 = 30;

/// The windows and the threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InflationSettings {
    /// Time constant of the baseline average.
    pub baseline: Duration,
    /// Time constant of the recent average.
    pub recent: Duration,
    /// Ratio at which a warning is due.
    pub alert_ratio: f64,
}

/// What a finished bucket changed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// The ratio crossed `alert_ratio` upwards.
    Inflated(Reading),
    /// The ratio fell back below three quarters of `alert_ratio`.
    Recovered(Reading),
}

/// The averages at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Recent over baseline.
    pub ratio: f64,
    /// The recent average.
    pub recent: Duration,
    /// The baseline average.
    pub baseline: Duration,
}

/// One upstream's latency baseline.
#[derive(Clone, Debug)]
pub struct LatencyBaseline {
    settings: InflationSettings,
    bucket_len: Duration,
    bucket_start: Instant,
    bucket_sum_s: f64,
    bucket_calls: u32,
    recent_s: f64,
    baseline_s: f64,
    buckets: u32,
    inflated: bool,
}

impl LatencyBaseline {
    /// An empty baseline.
    pub fn new(settings: InflationSettings, now: Instant) -> Self {
        LatencyBaseline {
            settings,
            bucket_len: (settings.recent / 10).max(Duration::from_millis(10)),
            bucket_start: now,
            bucket_sum_s: 0.0,
            bucket_calls: 0,
            recent_s: 0.0,
            baseline_s: 0.0,
            buckets: 0,
            inflated: false,
        }
    }

    /// Records one call's latency. When this finishes a bucket, returns the new reading (for
    /// the gauge) and a crossing, if there was one.
    pub fn observe(&mut self, latency: Duration, now: Instant) -> Option<(Reading, Option<Change>)> {
        let finished = self.roll(now);
        self.bucket_sum_s += latency.as_secs_f64();
        self.bucket_calls += 1;
        finished
    }

    /// Closes the current bucket if its time is up.
    fn roll(&mut self, now: Instant) -> Option<(Reading, Option<Change>)> {
        let age = now.saturating_duration_since(self.bucket_start);
        if age < self.bucket_len {
            return None;
        }
        // The next bucket starts at the boundary now falls in (idle buckets are skipped).
        let skipped = (age.as_nanos() / self.bucket_len.as_nanos().max(1)) as u32;
        self.bucket_start += self.bucket_len * skipped;
        if self.bucket_calls == 0 {
            return None;
        }
        let mean = self.bucket_sum_s / f64::from(self.bucket_calls);
        self.bucket_sum_s = 0.0;
        self.bucket_calls = 0;
        if self.buckets == 0 {
            self.recent_s = mean;
            self.baseline_s = mean;
        } else {
            let step = self.bucket_len.as_secs_f64();
            let fold = |avg: f64, tau: Duration| {
                let keep = (-step / tau.as_secs_f64().max(step)).exp();
                avg * keep + mean * (1.0 - keep)
            };
            self.recent_s = fold(self.recent_s, self.settings.recent);
            self.baseline_s = fold(self.baseline_s, self.settings.baseline);
        }
        self.buckets = self.buckets.saturating_add(1);
        let reading = self.reading()?;
        let change = if !self.inflated && reading.ratio >= self.settings.alert_ratio {
            self.inflated = true;
            Some(Change::Inflated(reading))
        } else if self.inflated && reading.ratio < self.settings.alert_ratio * 0.75 {
            self.inflated = false;
            Some(Change::Recovered(reading))
        } else {
            None
        };
        Some((reading, change))
    }

    /// The averages, once warmed up.
    pub fn reading(&self) -> Option<Reading> {
        if self.buckets < WARM_UP_BUCKETS || self.baseline_s <= 0.0 {
            return None;
        }
        Some(Reading {
            ratio: self.recent_s / self.baseline_s,
            recent: Duration::try_from_secs_f64(self.recent_s).unwrap_or_default(),
            baseline: Duration::try_from_secs_f64(self.baseline_s).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings() -> InflationSettings {
        InflationSettings {
            baseline: Duration::from_secs(600),
            recent: Duration::from_secs(10),
            alert_ratio: 2.0,
        }
    }

    /// Feeds `calls` per second of `latency` for `secs` seconds; returns the changes seen.
    fn feed(b: &mut LatencyBaseline, t: &mut Instant, secs: u32, latency: Duration) -> Vec<Change> {
        let mut changes = Vec::new();
        for _ in 0..secs * 10 {
            *t += Duration::from_millis(100);
            for _ in 0..5 {
                if let Some((_, Some(c))) = b.observe(latency, *t) {
                    changes.push(c);
                }
            }
        }
        changes
    }

    #[test]
    fn steady_latency_reads_one_after_warm_up_only() {
        let mut t = Instant::now();
        let mut b = LatencyBaseline::new(settings(), t);
        feed(&mut b, &mut t, 2, 70 * MS);
        assert!(b.reading().is_none(), "not warmed up after 2 s");
        assert!(feed(&mut b, &mut t, 60, 70 * MS).is_empty());
        let r = b.reading().unwrap();
        assert!((r.ratio - 1.0).abs() < 0.01, "{r:?}");
        assert!((r.baseline.as_secs_f64() - 0.070).abs() < 0.001);
    }

    #[test]
    fn a_slowdown_is_reported_once_then_its_recovery() {
        let mut t = Instant::now();
        let mut b = LatencyBaseline::new(settings(), t);
        feed(&mut b, &mut t, 120, 70 * MS);
        let changes = feed(&mut b, &mut t, 30, 240 * MS);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let Change::Inflated(r) = changes[0] else {
            panic!("{changes:?}")
        };
        assert!(r.ratio >= 2.0 && r.recent > r.baseline, "{r:?}");
        let now = b.reading().unwrap();
        assert!(
            now.ratio > 2.8,
            "thirty seconds at 240 ms over a 70 ms baseline (which moved up 5 %): {now:?}"
        );
        let changes = feed(&mut b, &mut t, 60, 70 * MS);
        assert!(matches!(changes.as_slice(), [Change::Recovered(_)]), "{changes:?}");
    }

    #[test]
    fn idle_time_and_bursts_do_not_move_the_averages() {
        let mut t = Instant::now();
        let mut b = LatencyBaseline::new(settings(), t);
        feed(&mut b, &mut t, 60, 70 * MS);
        let before = b.reading().unwrap();
        t += Duration::from_secs(3600);
        for _ in 0..10_000 {
            b.observe(70 * MS, t);
        }
        feed(&mut b, &mut t, 1, 70 * MS);
        let after = b.reading().unwrap();
        assert!((after.ratio - before.ratio).abs() < 0.01, "{before:?} {after:?}");
    }

    #[test]
    fn a_ratio_hovering_at_the_threshold_does_not_flap() {
        let mut t = Instant::now();
        let mut b = LatencyBaseline::new(settings(), t);
        feed(&mut b, &mut t, 120, 100 * MS);
        let mut changes = feed(&mut b, &mut t, 30, 260 * MS);
        for _ in 0..5 {
            changes.extend(feed(&mut b, &mut t, 3, 180 * MS));
            changes.extend(feed(&mut b, &mut t, 3, 230 * MS));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
    }
}
