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
