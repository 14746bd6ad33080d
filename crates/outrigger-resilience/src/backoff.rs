//! Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
//! Jitter"): the wait before retry `n` is uniform in `[0, min(max, base × 2^(n-1))]`.
//! Full jitter spreads synchronized clients apart better than any fixed schedule.

use std::time::Duration;

/// The wait before retry number `retry` (1 for the first retry), given a uniform random
/// number `unit` in `[0, 1)`.
pub fn full_jitter(retry: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_max_and_jitter_scales_it() {
        let base = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        let top = |n| full_jitter(n, base, max, 1.0);
        assert_eq!(
            [top(1), top(2), top(3), top(4), top(5)].map(|d| d.as_millis()),
            [25, 50, 100, 200, 250]
        );
        assert_eq!(full_jitter(3, base, max, 0.5), Duration::from_millis(50));
        assert_eq!(full_jitter(3, base, max, 0.0), Duration::ZERO);
        assert_eq!(
            full_jitter(100, base, max, 1.0),
            max,
            "no overflow for large retry counts"
        );
    }
}
