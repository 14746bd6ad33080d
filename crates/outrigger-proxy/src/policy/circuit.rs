//! The circuit breaker of one upstream at run time: the pure state machine from
//! `outrigger-resilience` behind an uncontended lock (held for a few counter updates, never
//! across an await), a concurrency limit on atomics, and the metrics and log line of every
//! transition.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge};
use tokio::time::Instant;

use outrigger_config::CircuitBreaker;
use outrigger_resilience::breaker::Ticket;
use outrigger_resilience::{Admission, Breaker, BreakerSettings, BreakerState, Call, Transition};

use crate::error::ErrorKind;

/// An upstream's breaker.
pub struct Circuit {
    upstream: Arc<str>,
    breaker: Mutex<Breaker>,
    last_open_why: Mutex<Option<String>>,
    /// The last state change: when (wall clock) and why, for `/debug/upstreams`.
    last_change: Mutex<Option<(std::time::SystemTime, String)>>,
    in_flight: AtomicU32,
    max_in_flight: u32,
    trip_on_5xx: bool,
    state_gauge: IntGauge,
    transitions: IntCounterVec,
}

/// Leave to make one call. Dropped without [`Circuit::record`], it frees its slot (a probe
/// whose client went away must not hold the half-open breaker forever).
pub struct Permit {
    circuit: Arc<Circuit>,
    ticket: Option<Ticket>,
    state: BreakerState,
}

impl Permit {
    /// The breaker's state when this call was let through (closed, or half-open for a probe).
    pub fn state(&self) -> BreakerState {
        self.state
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.circuit.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = self.ticket.take() {
            self.circuit.lock().release(t);
        }
    }
}

impl Circuit {
    /// A closed breaker for `upstream`.
    pub fn new(upstream: &str, cfg: &CircuitBreaker, state_gauge: IntGauge, transitions: IntCounterVec) -> Self {
        let settings = BreakerSettings {
            consecutive_failures: cfg.consecutive_failures,
            failure_rate: cfg.failure_rate,
            window: cfg.window,
            min_requests: cfg.min_requests,
            open_for: cfg.open_for,
            max_open_for: cfg.max_open_for,
            half_open_probes: cfg.half_open_probes,
            slow_call: cfg.slow_call.as_ref().map(|s| (s.duration, s.rate)),
        };
        state_gauge.set(BreakerState::Closed.gauge());
        Circuit {
            upstream: upstream.into(),
            breaker: Mutex::new(Breaker::new(settings, Instant::now().into_std())),
            last_open_why: Mutex::new(None),
            last_change: Mutex::new(None),
            in_flight: AtomicU32::new(0),
            max_in_flight: cfg.max_in_flight,
            trip_on_5xx: cfg.trip_on_5xx,
            state_gauge,
            transitions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }

    /// What `/debug/upstreams` shows: the state, since when and why, and (open) when
    /// trial calls start; the calls in flight against `max_in_flight`.
    pub(crate) fn view(&self) -> serde_json::Value {
        let (state, half_open_at) = {
            let b = self.lock();
            (b.state(), b.half_open_at())
        };
        let change = self.last_change.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut v = serde_json::json!({
            "state": state.as_str(),
            "since": change.as_ref().map(|(at, _)| humantime::format_rfc3339_millis(*at).to_string()),
            "why": change.map(|(_, why)| why),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "max_in_flight": self.max_in_flight,
        });
        if let Some(at) = half_open_at {
            let wait = at.saturating_duration_since(std::time::Instant::now());
            let when = std::time::SystemTime::now() + wait;
            v["half_open_at"] = humantime::format_rfc3339_millis(when).to_string().into();
        }
        v
    }

    /// Asks to make a call: a permit, or the error to fail fast with.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Permit, ErrorKind> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(ErrorKind::CircuitSaturated {
                limit: self.max_in_flight,
            });
        }
        let (admission, transition, state) = {
            let mut breaker = self.lock();
            let (admission, transition) = breaker.admit(now.into_std());
            (admission, transition, breaker.state())
        };
        if let Some(t) = transition {
            self.transitioned(&t);
        }
        match admission {
            Admission::Allowed(ticket) => Ok(Permit {
                circuit: self.clone(),
                ticket: Some(ticket),
                state,
            }),
            Admission::Refused { retry_after } => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                let why = self.last_open_why.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Err(ErrorKind::CircuitOpen { retry_after, why })
            }
        }
    }

    /// Whether an answer with this status counts as a failure.
    pub fn status_fails(&self, status: u16) -> bool {
        self.trip_on_5xx && status >= 500
    }

    /// Records the result of a permitted call; returns the new state when it changed.
    pub fn record(
        &self,
        now: Instant,
        mut permit: Permit,
        failed: bool,
        took: Duration,
        what: &str,
    ) -> Option<BreakerState> {
        let ticket = permit.ticket.take()?;
        let transition = self.lock().record(
            now.into_std(),
            Call {
                ticket,
                failed,
                took,
                what,
            },
        );
        let t = transition?;
        self.transitioned(&t);
        Some(t.to)
    }

    fn transitioned(&self, t: &Transition) {
        self.state_gauge.set(t.to.gauge());
        self.transitions
            .with_label_values(&[&self.upstream, t.from.as_str(), t.to.as_str()])
            .inc();
        *self.last_change.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::SystemTime::now(), t.why.clone()));
        if t.to == BreakerState::Open {
            *self.last_open_why.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.why.clone());
        }
        let msg = format!("Circuit breaker for '{}' {}.", self.upstream, t.why);
        match t.to {
            BreakerState::Open => {
                tracing::warn!(kind = "breaker", upstream = %self.upstream, from = t.from.as_str(), to = t.to.as_str(), why = %t.why, "{msg}")
            }
            _ => {
                tracing::info!(kind = "breaker", upstream = %self.upstream, from = t.from.as_str(), to = t.to.as_str(), why = %t.why, "{msg}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(cfg: &CircuitBreaker) -> (Arc<Circuit>, IntGauge, IntCounterVec) {
        let gauge = IntGauge::new("state", "state").expect("gauge");
        let transitions =
            IntCounterVec::new(prometheus::Opts::new("t", "t"), &["upstream", "from", "to"]).expect("counter");
        let c = Arc::new(Circuit::new("app", cfg, gauge.clone(), transitions.clone()));
        (c, gauge, transitions)
    }

    /// The wiring around the state machine, on tokio's paused clock: failures open the
    /// breaker (gauge, transition counter), an open breaker refuses with the time until
    /// half-open and why it opened, and after `open_for` a probe is let through and its
    /// success closes the breaker again.
    #[tokio::test(start_paused = true)]
    async fn failures_open_it_the_open_period_refuses_and_a_probe_closes_it() {
        let cfg = CircuitBreaker {
            consecutive_failures: 2,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            ..CircuitBreaker::default()
        };
        let (c, gauge, transitions) = circuit(&cfg);
        let now = Instant::now();
        for n in 0..2 {
            let permit = c.admit(now).expect("closed: admitted");
            let changed = c.record(now, permit, true, Duration::from_millis(1), "status 503");
            assert_eq!(changed, (n == 1).then_some(BreakerState::Open));
        }
        assert_eq!(gauge.get(), BreakerState::Open.gauge());
        assert_eq!(transitions.with_label_values(&["app", "closed", "open"]).get(), 1);
        match c.admit(now) {
            Err(ErrorKind::CircuitOpen { retry_after, why }) => {
                assert_eq!(retry_after, Duration::from_secs(5));
                assert!(why.is_some_and(|w| w.contains("status 503")));
            }
            other => panic!("an open breaker refuses: {:?}", other.map(|p| p.state())),
        }

        tokio::time::advance(Duration::from_secs(5)).await;
        let later = Instant::now();
        let probe = c.admit(later).expect("half-open: a probe is let through");
        assert_eq!(probe.state(), BreakerState::HalfOpen);
        assert!(c.admit(later).is_err(), "one probe at a time (half_open_probes: 1)");
        assert_eq!(
            c.record(later, probe, false, Duration::from_millis(1), ""),
            Some(BreakerState::Closed)
        );
        assert_eq!(gauge.get(), BreakerState::Closed.gauge());
        assert!(c.admit(later).is_ok());
    }

    /// Beyond `max_in_flight` calls it fails fast without asking the state machine, and a
    /// permit dropped unrecorded gives its slot back.
    #[tokio::test(start_paused = true)]
    async fn beyond_max_in_flight_it_fails_fast_and_a_dropped_permit_frees_its_slot() {
        let cfg = CircuitBreaker {
            max_in_flight: 2,
            ..CircuitBreaker::default()
        };
        let (c, _, _) = circuit(&cfg);
        let now = Instant::now();
        let a = c.admit(now).expect("first");
        let _b = c.admit(now).expect("second");
        assert!(matches!(c.admit(now), Err(ErrorKind::CircuitSaturated { limit: 2 })));
        drop(a);
        assert!(c.admit(now).is_ok(), "the dropped permit's slot is free again");
    }
}
