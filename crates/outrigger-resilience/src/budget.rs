//! Retry budget: why budgets and not only a maximum number of attempts?
//!
//! `attempts: 3` alone triples the load on a dependency that is down: every caller retries,
//! and the retries arrive exactly when the dependency is least able to take them. A budget
//! (as in Finagle and linkerd) caps retries to a share of recent traffic: within a sliding
//! 10 s window, retries may not exceed `min_per_second × 10 + ratio × requests`. A healthy
//! service barely notices the budget; a failing one gets at most `ratio` more load, plus a
//! small floor so that quiet routes can still retry.

use std::time::{Duration, Instant};

use crate::window::Window;

/// The window the budget is counted over.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A route's retry budget.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    window: Window,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request plus `min_per_second`.
    pub fn new(ratio: f64, min_per_second: f64, now: Instant) -> Self {
        RetryBudget {
            ratio,
            min_per_second,
            window: Window::new(BUDGET_WINDOW, now),
        }
    }

    /// Counts a request (first attempts only).
    pub fn deposit(&mut self, now: Instant) {
        self.window.current(now).calls += 1;
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let t = self.window.total(now);
        let allowed = self.min_per_second * BUDGET_WINDOW.as_secs_f64() + self.ratio * t.calls as f64;
        if (t.retries as f64) < allowed {
            self.window.current(now).retries += 1;
            true
        } else {
            false
        }
    }

    /// Retries still allowed now (for logs and debug endpoints).
    pub fn remaining(&self, now: Instant) -> f64 {
        let t = self.window.total(now);
        (self.min_per_second * BUDGET_WINDOW.as_secs_f64() + self.ratio * t.calls as f64 - t.retries as f64).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_ratio_plus_floor_and_recover_as_the_window_slides() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 1.0, t0);
        for _ in 0..100 {
            b.deposit(t0);
        }
        // 1/s × 10 s + 20% of 100 = 30 retries.
        let granted = (0..100).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 30);
        assert_eq!(b.remaining(t0), 0.0);
        // 11 s later every counted request and retry has left the window: only the floor.
        let later = t0 + Duration::from_secs(11);
        assert_eq!((0..100).filter(|_| b.try_withdraw(later)).count(), 10);
    }

    #[test]
    fn a_zero_budget_allows_nothing() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.0, 0.0, t0);
        b.deposit(t0);
        assert!(!b.try_withdraw(t0));
    }
}
