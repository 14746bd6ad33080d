//! The circuit breaker of one upstream.
//!
//! ```text
//!            failure rule met                     open period over
//!   Closed ───────────────────────▶ Open ───────────────────────────▶ HalfOpen
//!     ▲                              ▲ ▲                                 │ │
//!     │                              │ └── a probe fails (period ×2) ────┘ │
//!     └──────────── `half_open_probes` probes succeed in a row ────────────┘
//! ```
//!
//! 1. Closed: every call is admitted and recorded. The breaker opens when
//!    `consecutive_failures` calls in a row failed, or when, over the sliding `window` with
//!    at least `min_requests` calls, the failed share reaches `failure_rate`, or (with
//!    `slow_call`) the share of calls slower than `slow_call.duration` reaches its `rate`.
//! 2. Open: calls are refused at once, with the time left until half-open.
//! 3. HalfOpen: up to `half_open_probes` calls are let through at a time. When that many
//!    probes have succeeded in a row the breaker closes and the open period resets to
//!    `open_for`; the first failed probe reopens it for twice the last period, at most
//!    `max_open_for`.
//!
//! Results of calls admitted in an earlier state are ignored once the state has moved on,
//! so a burst of slow failures from before the breaker opened cannot reopen it later.

use std::time::{Duration, Instant};

use crate::humanize as human;
use crate::window::Window;

/// The breaker's settings.
#[derive(Clone, Debug)]
pub struct BreakerSettings {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Or when this share of the window failed.
    pub failure_rate: f64,
    /// The sliding window of the rate rules.
    pub window: Duration,
    /// The rate rules need this many calls in the window.
    pub min_requests: u32,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period.
    pub max_open_for: Duration,
    /// Trial calls while half-open.
    pub half_open_probes: u32,
    /// Optional slow-call rule: (a call slower than this is slow, open at this share).
    pub slow_call: Option<(Duration, f64)>,
}

/// The three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused.
    Open,
    /// A few trial calls flow.
    HalfOpen,
}

impl BreakerState {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A change of state and why it happened, for one log line and one counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Before.
    pub from: BreakerState,
    /// After.
    pub to: BreakerState,
    /// Why, as a sentence fragment: "opened: 5 consecutive failures, last: upstream_timeout after 2s".
    pub why: String,
}

/// The answer to "may this call go ahead?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes. `probe` when it is a half-open trial call; pass the ticket back to `record`.
    Allowed(Ticket),
    /// No: the breaker is open (or half-open with every probe slot taken) for this long yet.
    Refused {
        /// Time until the breaker lets calls (or more probes) through.
        retry_after: Duration,
    },
}

/// Proof of admission, handed back with the call's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

/// The result of one admitted call.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The ticket from `admit`.
    pub ticket: Ticket,
    /// It failed (connect failure, reset, timeout, 5xx).
    pub failed: bool,
    /// How long it took.
    pub took: Duration,
    /// What happened, for the transition's why ("upstream_timeout", "status 503").
    pub what: &'a str,
}

/// A circuit breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    /// Bumped on every transition; tickets from older epochs are ignored.
    epoch: u64,
    consecutive: u32,
    window: Window,
    open_until: Instant,
    open_period: Duration,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings, now: Instant) -> Self {
        let window = Window::new(settings.window, now);
        let open_period = settings.open_for;
        Breaker {
            settings,
            state: BreakerState::Closed,
            epoch: 0,
            consecutive: 0,
            window,
            open_until: now,
            open_period,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    /// The current state (Open stays Open until the next `admit` after the period ends).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// While open: when trial calls are let through again (half-open).
    pub fn half_open_at(&self) -> Option<Instant> {
        (self.state == BreakerState::Open).then_some(self.open_until)
    }

    /// Asks to make a call.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if self.state == BreakerState::Open {
            if now < self.open_until {
                return (
                    Admission::Refused {
                        retry_after: self.open_until - now,
                    },
                    None,
                );
            }
            let n = self.settings.half_open_probes;
            transition = Some(self.go(
                BreakerState::HalfOpen,
                format!(
                    "half-open: {} passed; letting {n} probe{} through",
                    human(self.open_period),
                    if n == 1 { "" } else { "s" }
                ),
            ));
        }
        let admission = match self.state {
            BreakerState::Closed => Admission::Allowed(Ticket {
                epoch: self.epoch,
                probe: false,
            }),
            BreakerState::HalfOpen if self.probes_in_flight < self.settings.half_open_probes => {
                self.probes_in_flight += 1;
                Admission::Allowed(Ticket {
                    epoch: self.epoch,
                    probe: true,
                })
            }
            // Every probe slot is taken: wait about as long as a probe takes.
            BreakerState::HalfOpen | BreakerState::Open => Admission::Refused {
                retry_after: Duration::from_secs(1),
            },
        };
        (admission, transition)
    }

    /// A probe ended without a result (the client went away): free its slot.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.probe && ticket.epoch == self.epoch && self.probes_in_flight > 0 {
            self.probes_in_flight -= 1;
        }
    }

    /// Records the result of an admitted call.
    pub fn record(&mut self, now: Instant, call: Call<'_>) -> Option<Transition> {
        if call.ticket.epoch != self.epoch {
            return None;
        }
        match self.state {
            BreakerState::Closed => self.record_closed(now, call),
            BreakerState::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if call.failed {
                    let next = self.open_period.saturating_mul(2).min(self.settings.max_open_for);
                    let why = format!(
                        "reopened for {}: probe failed with {} after {}",
                        human(next),
                        call.what,
                        human(call.took)
                    );
                    self.open_period = next;
                    Some(self.open(now, why))
                } else {
                    self.probe_successes += 1;
                    if self.probe_successes >= self.settings.half_open_probes {
                        self.open_period = self.settings.open_for;
                        let n = self.probe_successes;
                        Some(self.go(
                            BreakerState::Closed,
                            format!("closed: {n} probe{} succeeded in a row", if n == 1 { "" } else { "s" }),
                        ))
                    } else {
                        None
                    }
                }
            }
            BreakerState::Open => None,
        }
    }

    fn record_closed(&mut self, now: Instant, call: Call<'_>) -> Option<Transition> {
        let slow = self.settings.slow_call.is_some_and(|(d, _)| call.took > d);
        let bucket = self.window.current(now);
        bucket.calls += 1;
        bucket.failures += u64::from(call.failed);
        bucket.slow += u64::from(slow);
        self.consecutive = if call.failed { self.consecutive + 1 } else { 0 };

        // The success path: nothing can trip on a fast success.
        if !call.failed && !slow {
            return None;
        }
        let s = &self.settings;
        let window = human(s.window);
        let why = if self.consecutive >= s.consecutive_failures {
            Some(format!(
                "opened: {} consecutive failures, last: {} after {}",
                self.consecutive,
                call.what,
                human(call.took)
            ))
        } else {
            let t = self.window.total(now);
            let enough = t.calls >= u64::from(s.min_requests);
            let share = |n: u64| n as f64 / t.calls.max(1) as f64;
            if enough && call.failed && share(t.failures) >= s.failure_rate {
                Some(format!(
                    "opened: {} of {} calls failed ({:.0}%) in the last {window}, last: {} after {}",
                    t.failures,
                    t.calls,
                    share(t.failures) * 100.0,
                    call.what,
                    human(call.took)
                ))
            } else {
                s.slow_call
                    .filter(|&(_, rate)| enough && slow && share(t.slow) >= rate)
                    .map(|(limit, _)| {
                        let pct = share(t.slow) * 100.0;
                        format!(
                            "opened: {} of {} calls ({pct:.0}%) took longer than {} in the last {window}",
                            t.slow,
                            t.calls,
                            human(limit)
                        )
                    })
            }
        };
        why.map(|why| {
            let why = format!("{why}; failing fast for {}", human(self.open_period));
            self.open(now, why)
        })
    }

    fn open(&mut self, now: Instant, why: String) -> Transition {
        self.open_until = now + self.open_period;
        self.go(BreakerState::Open, why)
    }

    fn go(&mut self, to: BreakerState, why: String) -> Transition {
        let from = self.state;
        self.state = to;
        self.epoch += 1;
        self.consecutive = 0;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        if to == BreakerState::Closed {
            self.window.clear();
        }
        Transition { from, to, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(12),
            half_open_probes: 2,
            slow_call: None,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Opens the breaker of `settings()` with three failures in a row.
    fn trip(b: &mut Breaker, now: Instant) {
        for _ in 0..3 {
            call(b, now, true, ms(1));
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// Admits and records one call; returns the transition it caused, if any.
    fn call(b: &mut Breaker, now: Instant, failed: bool, took: Duration) -> Option<Transition> {
        match b.admit(now) {
            (Admission::Allowed(ticket), t) => {
                assert!(t.is_none() || b.state() == BreakerState::HalfOpen);
                b.record(
                    now,
                    Call {
                        ticket,
                        failed,
                        took,
                        what: if failed { "upstream_timeout" } else { "ok" },
                    },
                )
            }
            (Admission::Refused { .. }, _) => panic!("refused in state {:?}", b.state()),
        }
    }

    #[test]
    fn consecutive_failures_open_and_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        assert!(call(&mut b, t0, true, ms(5)).is_none());
        assert!(call(&mut b, t0, true, ms(5)).is_none());
        assert!(call(&mut b, t0, false, ms(5)).is_none(), "a success resets the streak");
        assert!(call(&mut b, t0, true, ms(5)).is_none());
        assert!(call(&mut b, t0, true, ms(5)).is_none());
        let t = call(&mut b, t0, true, Duration::from_secs(2)).expect("opens");
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(
            t.why,
            "opened: 3 consecutive failures, last: upstream_timeout after 2s; failing fast for 5s"
        );
    }

    #[test]
    fn open_refuses_with_the_time_left_then_half_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        trip(&mut b, t0);
        assert_eq!(b.admit(t0 + ms(1500)).0, Admission::Refused { retry_after: ms(3500) });
        let (adm, t) = b.admit(t0 + ms(5000));
        assert!(matches!(adm, Admission::Allowed(Ticket { probe: true, .. })));
        assert_eq!(t.unwrap().why, "half-open: 5s passed; letting 2 probes through");
    }

    #[test]
    fn half_open_limits_probes_closes_after_enough_successes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        trip(&mut b, t0);
        let t1 = t0 + ms(5000);
        let (Admission::Allowed(p1), _) = b.admit(t1) else {
            panic!()
        };
        let (Admission::Allowed(p2), _) = b.admit(t1) else {
            panic!()
        };
        assert!(
            matches!(b.admit(t1).0, Admission::Refused { .. }),
            "only two probes at a time"
        );
        assert!(
            b.record(
                t1,
                Call {
                    ticket: p1,
                    failed: false,
                    took: ms(1),
                    what: "ok"
                }
            )
            .is_none()
        );
        let t = b
            .record(
                t1,
                Call {
                    ticket: p2,
                    failed: false,
                    took: ms(1),
                    what: "ok",
                },
            )
            .expect("closes");
        assert_eq!(
            (t.to, t.why.as_str()),
            (BreakerState::Closed, "closed: 2 probes succeeded in a row")
        );
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_period_capped_and_reset_on_close() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        trip(&mut b, t0);
        let t1 = t0 + ms(5000);
        let t = call(&mut b, t1, true, ms(7)).unwrap();
        assert_eq!(t.why, "reopened for 10s: probe failed with upstream_timeout after 7ms");
        assert_eq!(b.admit(t1 + ms(9999)).0, Admission::Refused { retry_after: ms(1) });
        let t2 = t1 + ms(10_000);
        let t = call(&mut b, t2, true, ms(7)).unwrap();
        assert!(
            t.why.starts_with("reopened for 12s"),
            "capped at max_open_for: {}",
            t.why
        );
        let t3 = t2 + ms(12_000);
        call(&mut b, t3, false, ms(1));
        call(&mut b, t3, false, ms(1));
        assert_eq!(b.state(), BreakerState::Closed);
        trip(&mut b, t3);
        assert_eq!(
            b.admit(t3 + ms(4999)).0,
            Admission::Refused { retry_after: ms(1) },
            "period back to open_for"
        );
    }

    #[test]
    fn failure_rate_opens_only_with_enough_calls() {
        let t0 = Instant::now();
        let mut s = settings();
        s.consecutive_failures = 100;
        let mut b = Breaker::new(s, t0);
        // Alternating failures: never 3 in a row, but 50% of the window.
        for i in 0..9 {
            assert!(
                call(&mut b, t0, i % 2 == 0, ms(1)).is_none(),
                "call {i}: below min_requests"
            );
        }
        let t = call(&mut b, t0, true, ms(1)).expect("10th call reaches min_requests at >= 50%");
        assert!(
            t.why.starts_with("opened: 6 of 10 calls failed (60%) in the last 10s"),
            "{}",
            t.why
        );
    }

    #[test]
    fn slow_calls_open_even_when_they_succeed() {
        let t0 = Instant::now();
        let mut s = settings();
        s.slow_call = Some((ms(100), 0.8));
        let mut b = Breaker::new(s, t0);
        for _ in 0..2 {
            call(&mut b, t0, false, ms(5));
        }
        for _ in 0..7 {
            assert!(call(&mut b, t0, false, ms(500)).is_none());
        }
        // 10 calls, 8 slow = 80%.
        let t = call(&mut b, t0, false, ms(500)).expect("opens on slow calls");
        assert!(
            t.why
                .starts_with("opened: 8 of 10 calls (80%) took longer than 100ms in the last 10s"),
            "{}",
            t.why
        );
    }

    #[test]
    fn results_from_an_earlier_state_are_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        let (Admission::Allowed(stale), _) = b.admit(t0) else {
            panic!()
        };
        trip(&mut b, t0);
        let t1 = t0 + ms(5000);
        let (Admission::Allowed(_probe), _) = b.admit(t1) else {
            panic!()
        };
        assert!(
            b.record(
                t1,
                Call {
                    ticket: stale,
                    failed: true,
                    took: ms(1),
                    what: "late"
                }
            )
            .is_none()
        );
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "a late failure from before does not reopen"
        );
    }

    #[test]
    fn released_probes_free_their_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings(), t0);
        trip(&mut b, t0);
        let t1 = t0 + ms(5000);
        let (Admission::Allowed(p1), _) = b.admit(t1) else {
            panic!()
        };
        let (Admission::Allowed(_p2), _) = b.admit(t1) else {
            panic!()
        };
        b.release(p1);
        assert!(matches!(b.admit(t1).0, Admission::Allowed(_)));
    }
}
