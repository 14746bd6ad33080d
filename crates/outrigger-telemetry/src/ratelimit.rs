//! Log rate limiting: a token bucket per (kind, key), so that an outage's thousand identical
//! failures per second produce a bounded number of lines, plus one summary line per interval
//! saying how many were dropped ("suppressed 4180 similar lines: upstream_timeout on route
//! checkout"), counted in `outrigger_log_lines_suppressed_total{kind}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use serde_json::{Map, Value};
use tracing::Level;

struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

/// The limiter shared by every request.
pub struct LogLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<(&'static str, Arc<str>), Bucket>>,
    suppressed_total: IntCounterVec,
}

impl LogLimiter {
    /// Allows `burst` lines at once and `per_second` after that, per (kind, key).
    pub fn new(per_second: f64, burst: u32, suppressed_total: IntCounterVec) -> Self {
        LogLimiter {
            per_second,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
            suppressed_total,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(&'static str, Arc<str>), Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a line of `kind` about `key` may be written at `now` (the caller's clock, so
    /// tests can use paused time); a refused line is counted for the next summary.
    pub fn allow(&self, kind: &'static str, key: &Arc<str>, now: Instant) -> bool {
        let mut buckets = self.lock();
        let b = buckets.entry((kind, key.clone())).or_insert_with(|| Bucket {
            tokens: self.burst,
            refilled: now,
            suppressed: 0,
        });
        let refill = now.duration_since(b.refilled).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.suppressed += 1;
            drop(buckets);
            self.suppressed_total.with_label_values(&[kind]).inc();
            false
        }
    }

    /// Writes one `kind: suppressed` line per (kind, key) that dropped lines since the last
    /// call, and resets the counts. Call it once per interval.
    pub fn flush(&self, interval: Duration) {
        let summaries: Vec<(&'static str, Arc<str>, u64)> = {
            let mut buckets = self.lock();
            // Forget quiet keys so the map stays as small as the set of active failures.
            buckets.retain(|_, b| b.suppressed > 0 || b.tokens < self.burst);
            buckets
                .iter_mut()
                .filter(|(_, b)| b.suppressed > 0)
                .map(|((kind, key), b)| (*kind, key.clone(), std::mem::take(&mut b.suppressed)))
                .collect()
        };
        for (kind, key, n) in summaries {
            let mut f = Map::new();
            f.insert("suppressed".into(), Value::from(n));
            f.insert("of_kind".into(), Value::from(kind));
            f.insert("key".into(), Value::from(&*key));
            let secs = interval.as_secs_f64();
            let msg = format!("Suppressed {n} similar {kind} lines in the last {secs:.0}s: {key}.");
            crate::logging::write_line(Level::WARN, "suppressed", &msg, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_key() {
        let c = IntCounterVec::new(prometheus::Opts::new("s", "s"), &["kind"]).unwrap();
        let l = LogLimiter::new(0.0, 3, c.clone());
        let a: Arc<str> = "upstream_timeout on route checkout".into();
        let b: Arc<str> = "upstream_reset on route cart".into();
        let now = Instant::now();
        assert_eq!((0..10).filter(|_| l.allow("access", &a, now)).count(), 3);
        assert_eq!(
            (0..10).filter(|_| l.allow("access", &b, now)).count(),
            3,
            "keys are limited apart"
        );
        assert_eq!(c.with_label_values(&["access"]).get(), 14);
    }

    /// The clock is the caller's: tokens come back at the configured rate of its time.
    #[test]
    fn tokens_refill_at_the_rate_of_the_callers_clock() {
        let c = IntCounterVec::new(prometheus::Opts::new("s", "s"), &["kind"]).unwrap();
        let l = LogLimiter::new(2.0, 1, c);
        let key: Arc<str> = "k".into();
        let t0 = Instant::now();
        assert!(l.allow("access", &key, t0));
        assert!(!l.allow("access", &key, t0));
        assert!(!l.allow("access", &key, t0 + Duration::from_millis(400)));
        assert!(l.allow("access", &key, t0 + Duration::from_millis(1000)));
    }
}
