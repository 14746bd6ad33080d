//! The retry loop: attempts at the route's upstream within the request's deadline, each
//! through the breaker, the balancer and a pooled connection, each recorded; between them
//! the retry decision (the policy, the budget, the replay buffer) and its backoff.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use http::StatusCode;
use http::header::HeaderValue;
use tokio::time::Instant;

use outrigger_resilience::BreakerState;
use outrigger_resilience::deadline::format_grpc_timeout;

use crate::error::{ErrorClass, ErrorKind, ProxyError};
use crate::upstream::pool::ConnSeen;
use std::sync::Arc;

use crate::policy::balance::{EndpointRt, Health};
use crate::policy::circuit::Permit;
use crate::policy::retry::{self, Decision, Reason};
use crate::record::{Attempt, AttemptOutcome, Completion, NextStep};
use crate::runtime::upstream::{AttemptResponse, UpstreamRt};
use crate::upstream::pool::ConnInfo;

use super::{ConnCtx, Forward, located};

/// How the attempts ended: the last answer, or the last failure.
pub(super) enum Tried {
    Answered(AttemptResponse),
    Failed(ProxyError),
}

/// What the breaker, the balancer and the record make of one attempt.
struct Verdict {
    /// It counts against the upstream (a client's broken upload does not).
    failed: bool,
    /// The failure in a few words, for the breaker's and the outlier log's "why" (empty on
    /// success: only a failure's is ever read).
    why: String,
    outcome: AttemptOutcome,
    /// The upstream asked for a pause: its endpoint backs off this long ([`upstream_backoff`]).
    backoff: Option<Duration>,
    /// The latency the attempt showed: answers and timeouts (other failures say nothing
    /// about the upstream's speed).
    latency: Option<Duration>,
}

/// One attempt, from its start to its record.
struct Try {
    started: Instant,
    /// Its own limit, when the route's `per_try_timeout` is the shorter.
    per_try: Option<Duration>,
    /// Its client span (the parent id the upstream saw in `traceparent`).
    span_id: u64,
    /// When it ended (the one clock read at its end), and how long it took.
    finished: Instant,
    took: Duration,
}

/// What the loop carries from one attempt to the next.
#[derive(Default)]
struct Retrying {
    /// The next attempt takes a fresh connection (after the keep-alive race).
    fresh_only: bool,
    /// The keep-alive race was retried already (once per request, outside the budget).
    race_retried: bool,
    /// The endpoint the previous attempt failed on: a retry goes elsewhere when it can.
    failed_on: Option<Arc<EndpointRt>>,
}

/// What comes after an attempt.
enum Next {
    /// The loop ends with this attempt's result.
    Stop,
    /// Another attempt, at once.
    Now,
    /// Another attempt, after this backoff.
    After(Duration),
}

/// Makes attempts until one answers or the retry decision stops: the phase's result. One
/// future for the whole loop: an attempt's state (about 1.1 KiB) is neither moved nor copied
/// between phases.
pub(super) async fn run(fwd: &mut Forward, conn: &ConnCtx, done: &mut Completion) -> Tried {
    let route = fwd.route.clone();
    let upstream = &route.upstream;
    route.retry.deposit(done.started());
    let mut retrying = Retrying::default();
    loop {
        // One clock read per attempt start and one per attempt end: the breaker, the
        // balancer, the pool, the latency baseline and the attempt timer take their time
        // from these.
        let started = Instant::now();
        let remaining = fwd.target.deadline.saturating_duration_since(started);
        if remaining.is_zero() {
            return Tried::Failed(located(
                ErrorKind::UpstreamTimeout {
                    after: fwd.target.budget,
                },
                &route,
            ));
        }
        let mut this = Try {
            started,
            per_try: route.retry.per_try_timeout().filter(|p| *p < remaining),
            span_id: 0,
            finished: started,
            took: Duration::ZERO,
        };
        // --- breaker ---
        let permit = match upstream.circuit.admit(started) {
            Ok(p) => p,
            Err(kind) => return Tried::Failed(located(kind, &route)),
        };
        // --- balance ---
        let avoid = retrying.failed_on.take();
        let Some(endpoint) = upstream
            .endpoints
            .pick(started, |n| fastrand::usize(..n), avoid.as_ref())
        else {
            let known = upstream.endpoints.len();
            return Tried::Failed(located(ErrorKind::NoHealthyEndpoints { known }, &route));
        };
        // --- pool ---
        let Some(body) = fwd.next_body() else {
            // Cannot happen: the loop only continues when a replay exists.
            return Tried::Failed(located(
                ErrorKind::internal("a retry was started without a replayable body"),
                &route,
            ));
        };
        // Each attempt's own fields (its span in `traceparent`, the time left in
        // `grpc-timeout`) replace the previous attempt's beside the client's head, which is
        // written as it is (HTTP/1.1) or copied once (HTTP/2), never cloned per attempt.
        this.span_id = fwd.added.set_trace(&done.trace);
        if fwd.target.grpc_timeout.is_some() {
            fwd.added.grpc_timeout = HeaderValue::from_str(&format_grpc_timeout(remaining)).ok();
        }
        let in_flight = endpoint.start();
        // Not boxed: hyper keeps room for this request future in every client connection,
        // idle or not, so the send's state (about 1.1 KiB) costs each idle connection about
        // 0.5 KiB of RSS; boxing it cost a large allocation and a copy per attempt
        // (docs/performance.md).
        let mut timer = conn.attempt_timer(started + this.per_try.unwrap_or(remaining));
        let seen = ConnSeen::default();
        let work = std::pin::pin!(UpstreamRt::send_to(
            &endpoint.pool,
            &fwd.parts,
            &fwd.added,
            body,
            fwd.http2,
            retrying.fresh_only,
            started,
            &seen
        ));
        let mut sent = before(timer.as_mut(), work).await;
        conn.keep_attempt_timer(timer);
        let finished = Instant::now();
        let took = finished.saturating_duration_since(started);
        (this.finished, this.took) = (finished, took);
        drop(in_flight);
        if let Some(Ok(answer)) = &mut sent {
            answer.response.body_mut().headed_at(finished);
        }
        let (tried, conn_info) = match sent {
            // Timed out: the send is gone, but the connection it had (if any) was noted.
            None => {
                let after = this.per_try.unwrap_or(fwd.target.budget);
                (
                    Tried::Failed(located(ErrorKind::UpstreamTimeout { after }, &route)),
                    seen.get(),
                )
            }
            Some(Err(f)) => {
                let mut err = located(f.kind, &route);
                err.endpoint = Some(endpoint.pool.label().to_owned());
                (Tried::Failed(err), f.conn)
            }
            Some(Ok(answer)) => {
                let conn = answer.conn;
                (Tried::Answered(answer), Some(conn))
            }
        };

        settle(upstream, &endpoint, permit, &tried, conn_info, &this, done);
        // A retry after an upstream's failure (or its 5xx) tries another endpoint first.
        retrying.failed_on = match &tried {
            Tried::Failed(_) => Some(endpoint.clone()),
            Tried::Answered(a) if a.response.status().is_server_error() => Some(endpoint.clone()),
            Tried::Answered(_) => None,
        };

        // --- retry decision ---
        match decide(fwd, done, &tried, conn_info, &mut retrying) {
            Next::Stop => return tried,
            Next::Now => {}
            Next::After(wait) => {
                drop(tried);
                tokio::time::sleep(wait).await;
                done.waited += wait;
            }
        }
    }
}

/// What the breaker, the balancer and the record make of an attempt that was made: the
/// breaker's count (and a note when it opened or closed), the latency baseline, the
/// endpoint's health (an ejection is logged, and the healthy gauge refreshed when it ends),
/// and the attempt on the request's record.
fn settle(
    upstream: &UpstreamRt,
    endpoint: &Arc<EndpointRt>,
    permit: Permit,
    tried: &Tried,
    conn_info: Option<ConnInfo>,
    this: &Try,
    done: &mut Completion,
) {
    let (finished, took) = (this.finished, this.took);
    let verdict = verdict(tried, upstream, this.per_try, took);
    let circuit_state = permit.state();
    match upstream
        .circuit
        .record(finished, permit, verdict.failed, took, &verdict.why)
    {
        Some(BreakerState::Open) => done.notes.push(format!("the breaker of '{}' opened", upstream.name)),
        Some(BreakerState::Closed) => done.notes.push(format!("the breaker of '{}' closed", upstream.name)),
        _ => {}
    }
    if let Some(took) = verdict.latency {
        upstream.observe_latency(took, finished);
    }
    if let Health::Ejected(period) =
        upstream
            .endpoints
            .record(finished, endpoint, verdict.failed, verdict.latency, verdict.backoff)
    {
        tokio::spawn(upstream.endpoints.refresh_after(period));
        tracing::warn!(
            kind = "outlier",
            upstream = %upstream.name,
            endpoint = %endpoint.pool.label(),
            eject_for_ms = period.as_millis() as u64,
            "Endpoint {} of '{}' ejected for {} after repeated failures (last: {}).",
            endpoint.pool.label(),
            upstream.name,
            outrigger_resilience::humanize(period),
            verdict.why,
        );
    }
    done.attempt(Attempt {
        endpoint: endpoint.pool.clone(),
        conn: conn_info,
        offset: this.started.saturating_duration_since(done.started()),
        took,
        outcome: verdict.outcome,
        span_id: this.span_id,
        circuit_state,
        next: None,
    });
}

/// What the breaker, the balancer and the record make of an attempt that was made.
fn verdict(tried: &Tried, upstream: &UpstreamRt, per_try: Option<Duration>, took: Duration) -> Verdict {
    match tried {
        Tried::Answered(a) => {
            let status = a.response.status();
            let failed = upstream.circuit.status_fails(status.as_u16());
            Verdict {
                failed,
                why: if failed {
                    format!("status {}", status.as_u16())
                } else {
                    String::new()
                },
                outcome: AttemptOutcome::Status(status.as_u16()),
                backoff: upstream_backoff(status, a.response.headers()),
                latency: Some(took),
            }
        }
        Tried::Failed(e) => {
            let detail = match &e.kind {
                ErrorKind::UpstreamConnectFailed { reason, tls: false } => Some(reason.clone()),
                ErrorKind::UpstreamProtocolError { what } => Some((*what).to_owned()),
                _ => None,
            };
            let timeout = matches!(e.kind, ErrorKind::UpstreamTimeout { .. });
            Verdict {
                // A client whose upload broke off says nothing about the upstream.
                failed: e.class() == ErrorClass::Upstream,
                why: e.code().to_owned(),
                outcome: match &e.kind {
                    ErrorKind::UpstreamTimeout { .. } if per_try.is_none() => AttemptOutcome::TimedOut,
                    ErrorKind::UpstreamConnectFailed { reason, tls: true } => AttemptOutcome::TlsFailed(reason.clone()),
                    _ => AttemptOutcome::Failed(e.code_id(), detail),
                },
                backoff: None,
                latency: timeout.then_some(took),
            }
        }
    }
}

/// How long an endpoint that answered `status` asked to be left alone: a 429 always (its
/// `Retry-After`, else a second), a 503 only when it says how long (`Retry-After`). Other
/// answers ask nothing.
fn upstream_backoff(status: StatusCode, headers: &http::HeaderMap) -> Option<Duration> {
    match status {
        StatusCode::TOO_MANY_REQUESTS => Some(retry::retry_after(headers).unwrap_or(Duration::from_secs(1))),
        StatusCode::SERVICE_UNAVAILABLE if headers.contains_key(http::header::RETRY_AFTER) => {
            Some(retry::retry_after(headers).unwrap_or(Duration::from_secs(1)))
        }
        _ => None,
    }
}

/// The retry decision after an attempt that was made, noted on the record: the keep-alive
/// race once on a fresh connection (outside the budget), else the route's retry policy
/// within the deadline and the retry budget, for a request whose body can be sent again.
fn decide(
    fwd: &Forward,
    done: &mut Completion,
    tried: &Tried,
    conn_info: Option<ConnInfo>,
    retrying: &mut Retrying,
) -> Next {
    let route = &fwd.route;
    let can_replay = fwd.can_replay();
    let reused = conn_info.filter(|c| c.reused);
    if let (Tried::Failed(e), Some(c)) = (tried, reused)
        && matches!(e.kind, ErrorKind::UpstreamReset)
        && !retrying.race_retried
        && can_replay
        && retry::idempotent(&fwd.parts.method)
    {
        // The keep-alive race: the upstream closed an idle connection as we reused it.
        // Once, on a fresh connection, outside the budget.
        route.upstream.keepalive_race(c.idle_for);
        retrying.race_retried = true;
        retrying.fresh_only = true;
        // The endpoint is not at fault: its idle connection was.
        retrying.failed_on = None;
        route.retry.count(Reason::KeepAliveRace);
        done.decided(NextStep::retry(Reason::KeepAliveRace, Duration::ZERO, None));
        return Next::Now;
    }
    retrying.fresh_only = false;
    let reason = match tried {
        Tried::Answered(a) => route
            .retry
            .reason_for_response(a.response.status(), a.response.headers()),
        Tried::Failed(e) => route.retry.reason_for_failure(&e.kind),
    };
    let Some(reason) = reason.filter(|_| can_replay && fwd.replay_limit.is_some()) else {
        return Next::Stop;
    };
    let now = Instant::now();
    let remaining = fwd.target.deadline.saturating_duration_since(now);
    let upstream_wait = match tried {
        Tried::Answered(a) => retry::retry_after(a.response.headers()),
        Tried::Failed(_) => None,
    };
    // The attempt just recorded is the `n`th.
    let n = done.attempts_made() as u32;
    match route
        .retry
        .decide(n, reason, remaining, upstream_wait, now, fastrand::f64())
    {
        Decision::Stop => {
            done.decided(NextStep::stop(reason));
            Next::Stop
        }
        Decision::BudgetExhausted => {
            done.notes.push(format!(
                "no retry: the route's retry budget is spent ({reason} not retried)",
                reason = reason.as_str()
            ));
            done.decided(NextStep::budget_exhausted(reason));
            Next::Stop
        }
        Decision::RetryAfter(wait, reason) => {
            route.retry.count(reason);
            done.decided(NextStep::retry(reason, wait, Some(route.retry.budget_left(now))));
            Next::After(wait)
        }
    }
}

/// `work`'s output, or `None` if `timer` fires first (`work` is polled first, so an answer
/// that is ready when the time runs out still counts). `work` is pinned by the caller: moving
/// an attempt's state (about 1.1 KiB) into this future cost two copies per attempt.
async fn before<F: Future>(mut timer: Pin<&mut tokio::time::Sleep>, mut work: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_asks_for_a_pause_with_429_or_with_503_and_retry_after() {
        let with = |after: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_str(after).unwrap());
            h
        };
        let none = http::HeaderMap::new();
        let cases = [
            (StatusCode::TOO_MANY_REQUESTS, &none, Some(Duration::from_secs(1))),
            (StatusCode::TOO_MANY_REQUESTS, &with("7"), Some(Duration::from_secs(7))),
            (StatusCode::SERVICE_UNAVAILABLE, &none, None),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &with("3"),
                Some(Duration::from_secs(3)),
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &with("soon"),
                Some(Duration::from_secs(1)),
            ),
            (StatusCode::BAD_GATEWAY, &with("3"), None),
            (StatusCode::OK, &with("3"), None),
        ];
        for (status, headers, want) in cases {
            assert_eq!(upstream_backoff(status, headers), want, "{status} {headers:?}");
        }
    }
}
