//! A route's retry policy at run time: which failures may be retried, for which methods,
//! how long to wait, and the budget that keeps retries from amplifying an outage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use prometheus::{IntCounter, IntCounterVec};
use tokio::time::Instant;

use outrigger_config::{Retry, RetryOn};
use outrigger_resilience::RetryBudget;
use outrigger_resilience::backoff::full_jitter;

use crate::error::ErrorKind;

/// Why a retry is made (the `reason` label of `outrigger_retries_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The connection could not be made.
    ConnectFailure,
    /// The connection was reset before a response.
    Reset,
    /// 503 (or gRPC UNAVAILABLE).
    Unavailable,
    /// 502 or 504.
    Gateway,
    /// The per-try timeout expired.
    Timeout,
    /// A status listed in `retriable_status`.
    Status,
    /// A reused keep-alive connection failed before any response: once, on a fresh
    /// connection, not counted against the budget.
    KeepAliveRace,
}

impl Reason {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectFailure => "connect_failure",
            Reason::Reset => "reset",
            Reason::Unavailable => "unavailable",
            Reason::Gateway => "gateway",
            Reason::Timeout => "timeout",
            Reason::Status => "status",
            Reason::KeepAliveRace => "keepalive_race",
        }
    }

    const ALL: [Reason; 7] = [
        Reason::ConnectFailure,
        Reason::Reset,
        Reason::Unavailable,
        Reason::Gateway,
        Reason::Timeout,
        Reason::Status,
        Reason::KeepAliveRace,
    ];
}

/// What the retry loop should do after an attempt.
pub(crate) enum Decision {
    /// Return what we have.
    Stop,
    /// The budget is spent: return what we have, and say so.
    BudgetExhausted,
    /// Try again after this wait.
    RetryAfter(Duration, Reason),
}

/// A route's retry state.
pub(crate) struct RetryRt {
    policy: Option<Retry>,
    /// Shared with the route's next runtime when a reload leaves the budget's settings alone.
    budget: Arc<Mutex<RetryBudget>>,
    counters: [IntCounter; 7],
    exhausted: IntCounter,
}

/// Methods that may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl RetryRt {
    /// The retry state of route `route` (`policy: None` = one attempt, but the keep-alive
    /// race is still handled). `previous`: the route's retry state before a reload; its
    /// budget (what recent traffic earned and spent) is kept when its settings are the same.
    pub(crate) fn new(
        route: &str,
        policy: Option<Retry>,
        retries: &IntCounterVec,
        exhausted: IntCounter,
        previous: Option<&RetryRt>,
    ) -> Self {
        let (ratio, floor) = policy
            .as_ref()
            .map_or((0.2, 10.0), |p| (p.budget.ratio, p.budget.min_per_second));
        let same_budget = |p: &&RetryRt| p.policy.as_ref().map(|x| &x.budget) == policy.as_ref().map(|x| &x.budget);
        let budget = previous.filter(same_budget).map_or_else(
            || Arc::new(Mutex::new(RetryBudget::new(ratio, floor, Instant::now().into_std()))),
            |p| p.budget.clone(),
        );
        RetryRt {
            policy,
            budget,
            counters: Reason::ALL.map(|r| retries.with_label_values(&[route, r.as_str()])),
            exhausted,
        }
    }

    /// The per-try timeout, if any.
    pub(crate) fn per_try_timeout(&self) -> Option<Duration> {
        self.policy.as_ref().and_then(|p| p.per_try_timeout)
    }

    /// The replay buffer size when this request may be retried at all.
    pub(crate) fn replay_limit(&self, method: &Method) -> Option<usize> {
        let p = self.policy.as_ref()?;
        (p.attempts > 1 && (!p.idempotent_only || idempotent(method))).then_some(p.replay_buffer_bytes)
    }

    /// Counts a request (arrived at `now`) against the budget, once per request.
    pub(crate) fn deposit(&self, now: Instant) {
        self.budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deposit(now.into_std());
    }

    /// Retries the budget still allows at `now` (for the record of a retry decision).
    pub(crate) fn budget_left(&self, now: Instant) -> f64 {
        self.budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remaining(now.into_std())
    }

    /// Which retry condition a failure meets, if the policy lists it.
    pub(crate) fn reason_for_failure(&self, kind: &ErrorKind) -> Option<Reason> {
        let reason = match kind {
            ErrorKind::UpstreamConnectFailed { .. } => Reason::ConnectFailure,
            ErrorKind::UpstreamReset => Reason::Reset,
            ErrorKind::UpstreamTimeout { .. } => Reason::Timeout,
            _ => return None,
        };
        self.listed(reason).then_some(reason)
    }

    /// Which retry condition a response meets: its status, or a gRPC UNAVAILABLE in a
    /// trailers-only response head.
    pub(crate) fn reason_for_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Reason> {
        let p = self.policy.as_ref()?;
        let grpc_unavailable = headers.get("grpc-status").is_some_and(|v| v == "14");
        let code = status.as_u16();
        if (code == 503 || grpc_unavailable) && self.listed(Reason::Unavailable) {
            Some(Reason::Unavailable)
        } else if matches!(code, 502..=504) && self.listed(Reason::Gateway) {
            Some(Reason::Gateway)
        } else if p.retriable_status.contains(&code) {
            Some(Reason::Status)
        } else {
            None
        }
    }

    fn listed(&self, reason: Reason) -> bool {
        let Some(p) = &self.policy else { return false };
        p.on.iter().any(|on| {
            matches!(
                (on, reason),
                (RetryOn::ConnectFailure, Reason::ConnectFailure)
                    | (RetryOn::Reset, Reason::Reset)
                    | (RetryOn::Unavailable, Reason::Unavailable)
                    | (RetryOn::Timeout, Reason::Timeout)
                    | (RetryOn::Gateway, Reason::Gateway | Reason::Unavailable)
            )
        })
    }

    /// Decides about retry number `retry` (1 for the first retry) for `reason`, with
    /// `remaining` time left before the deadline and the upstream's `Retry-After` if it sent one.
    /// `now` is the caller's clock and `jitter` a uniform draw in `[0, 1)` for the backoff:
    /// passed in, so a test can fix both.
    pub(crate) fn decide(
        &self,
        retry: u32,
        reason: Reason,
        remaining: Duration,
        retry_after: Option<Duration>,
        now: Instant,
        jitter: f64,
    ) -> Decision {
        let Some(p) = &self.policy else { return Decision::Stop };
        if retry >= p.attempts {
            return Decision::Stop;
        }
        let wait = match retry_after {
            // The upstream said when: honour it if the deadline allows, else give up now.
            Some(after) if after < remaining => after,
            Some(_) => return Decision::Stop,
            None => full_jitter(retry, p.backoff.base, p.backoff.max, jitter),
        };
        if wait >= remaining {
            return Decision::Stop;
        }
        if !self
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_withdraw(now.into_std())
        {
            self.exhausted.inc();
            return Decision::BudgetExhausted;
        }
        Decision::RetryAfter(wait, reason)
    }

    /// Counts a retry that is being made.
    pub(crate) fn count(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.counters[i].inc();
        }
    }
}

/// `Retry-After` as a wait: delay-seconds only (an HTTP-date is ignored).
///
/// Capped at an hour: it is the upstream's word, and a huge or buggy value must neither bench
/// an endpoint for years nor overflow the clock it is added to.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    const LONGEST: Duration = Duration::from_secs(3600);
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(LONGEST))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::{Backoff, RetryBudget as BudgetCfg};

    fn rt(attempts: u32, on: Vec<RetryOn>, ratio: f64, floor: f64) -> RetryRt {
        let policy = Retry {
            attempts,
            per_try_timeout: None,
            on,
            retriable_status: vec![429],
            idempotent_only: true,
            replay_buffer_bytes: 1024,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(40),
            },
            budget: BudgetCfg {
                ratio,
                min_per_second: floor,
            },
        };
        let retries = IntCounterVec::new(prometheus::Opts::new("r", "r"), &["route", "reason"]).unwrap();
        RetryRt::new("r", Some(policy), &retries, IntCounter::new("e", "e").unwrap(), None)
    }

    #[test]
    fn conditions_map_failures_and_statuses_to_reasons() {
        let r = rt(3, vec![RetryOn::Gateway, RetryOn::ConnectFailure], 1.0, 10.0);
        assert_eq!(
            r.reason_for_failure(&ErrorKind::UpstreamConnectFailed {
                reason: String::new(),
                tls: false
            }),
            Some(Reason::ConnectFailure)
        );
        assert_eq!(
            r.reason_for_failure(&ErrorKind::UpstreamReset),
            None,
            "reset is not listed"
        );
        let h = HeaderMap::new();
        assert_eq!(
            r.reason_for_response(StatusCode::BAD_GATEWAY, &h),
            Some(Reason::Gateway)
        );
        assert_eq!(
            r.reason_for_response(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(Reason::Unavailable)
        );
        assert_eq!(
            r.reason_for_response(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(Reason::Status)
        );
        assert_eq!(r.reason_for_response(StatusCode::INTERNAL_SERVER_ERROR, &h), None);
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            r.reason_for_response(StatusCode::OK, &grpc),
            Some(Reason::Unavailable),
            "trailers-only UNAVAILABLE"
        );
    }

    #[test]
    fn methods_and_attempts_gate_retries() {
        let r = rt(2, vec![RetryOn::Reset], 1.0, 10.0);
        assert_eq!(r.replay_limit(&Method::GET), Some(1024));
        assert_eq!(r.replay_limit(&Method::POST), None);
        assert!(
            matches!(
                r.decide(2, Reason::Reset, Duration::from_secs(5), None, Instant::now(), 0.5),
                Decision::Stop
            ),
            "attempts used up"
        );
    }

    #[test]
    fn retry_after_is_honoured_within_the_deadline_only() {
        let r = rt(3, vec![RetryOn::Unavailable], 1.0, 10.0);
        let wait = |after, remaining| match r.decide(1, Reason::Unavailable, remaining, after, Instant::now(), 0.5) {
            Decision::RetryAfter(w, _) => Some(w),
            _ => None,
        };
        assert_eq!(
            wait(Some(Duration::from_secs(1)), Duration::from_secs(5)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            wait(Some(Duration::from_secs(9)), Duration::from_secs(5)),
            None,
            "past the deadline: give up now"
        );
        let jittered = wait(None, Duration::from_secs(5)).unwrap();
        assert!(
            jittered <= Duration::from_millis(10),
            "first backoff is at most base: {jittered:?}"
        );
    }

    #[test]
    fn an_empty_budget_refuses_and_counts() {
        let r = rt(3, vec![RetryOn::Reset], 0.0, 0.0);
        r.deposit(Instant::now());
        assert!(matches!(
            r.decide(1, Reason::Reset, Duration::from_secs(5), None, Instant::now(), 0.5),
            Decision::BudgetExhausted
        ));
        assert_eq!(r.exhausted.get(), 1);
    }
}
