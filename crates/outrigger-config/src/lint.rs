//! `outrigger check` lints: settings that are each valid but contradict each other or
//! invite a known failure. Each warning gives the numbers and the fix.

use std::time::Duration;

use crate::decode::{Cx, Fields};
use crate::schema::{CircuitBreaker, Pool, Retry, RetryOn};

pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Lints of one route.
pub(crate) fn route(
    cx: &mut Cx,
    f: &Fields<'_>,
    timeout: Duration,
    retry: Option<&Retry>,
    has_fallback: bool,
    critical: bool,
) {
    if let (Some(r), Some(node)) = (retry, f.node("retry")) {
        let path = f.child_path("retry");
        if r.attempts > 1 {
            match r.per_try_timeout {
                Some(per_try) => {
                    // Saturating: `attempts` is only bounded by u32.
                    let worst = per_try
                        .saturating_mul(r.attempts)
                        .saturating_add(r.backoff.max.saturating_mul(r.attempts - 1));
                    if worst > timeout {
                        let fit = ((timeout.as_nanos() + r.backoff.max.as_nanos()) / per_try.saturating_add(r.backoff.max).as_nanos().max(1)) as u32;
                        cx.warn(
                            node.pos,
                            &path,
                            format!(
                                "{} attempts × per_try_timeout {} + {} × backoff up to {} = {} exceeds the route timeout of {}: only {} attempt(s) fit when every try times out",
                                r.attempts,
                                human(per_try),
                                r.attempts - 1,
                                human(r.backoff.max),
                                human(worst),
                                human(timeout),
                                fit.max(1)
                            ),
                            format!("raise the route `timeout` to {} or lower `attempts` / `per_try_timeout`", human(worst)),
                        );
                    }
                }
                None if r.on.contains(&RetryOn::Timeout) => cx.warn(
                    node.pos,
                    &path,
                    format!("retry on `timeout` without `per_try_timeout`: the first attempt may use the whole route timeout of {}, leaving no time to retry", human(timeout)),
                    format!("set `per_try_timeout` below {}, e.g. {}", human(timeout), human(timeout / r.attempts.max(1))),
                ),
                None => {}
            }
            if !r.idempotent_only {
                cx.warn(
                    node.pos,
                    &path,
                    "`idempotent_only: false` retries POST and PATCH too: an upstream that processed the first try will process the retry again (double orders, double charges)",
                    "keep `idempotent_only: true` unless the upstream deduplicates (idempotency keys)",
                );
            }
            if r.budget.ratio == 0.0 && r.budget.min_per_second == 0.0 {
                cx.warn(
                    node.pos,
                    &path,
                    "the retry budget is zero (ratio 0, min_per_second 0): no retry will ever be made",
                    "raise `budget.ratio` (e.g. 0.2) or remove `retry:`",
                );
            }
        }
    }
    if let Some(node) = f.node("fallback").filter(|_| has_fallback && !critical) {
        cx.warn(
            node.pos,
            &f.child_path("fallback"),
            "a fallback on a route that is not `critical`: fallbacks hide failures from callers, which is worth it only where the path matters",
            "set `critical: true` on this route, or remove the fallback",
        );
    }
}

/// Lints of one upstream.
pub(crate) fn upstream(cx: &mut Cx, f: &Fields<'_>, pool: &Pool, breaker: &CircuitBreaker) {
    const COMMON_KEEPALIVE: Duration = Duration::from_secs(5);
    if pool.idle_timeout > COMMON_KEEPALIVE {
        let pos = f.node("pool").map_or(f.pos, |n| n.pos);
        cx.warn(
            pos,
            &f.child_path("pool.idle_timeout"),
            format!(
                "pool.idle_timeout {} is longer than common upstream keep-alive timeouts (Node.js 5s, many others 5-60s): requests will race the upstream closing idle connections (upstream_reset on reused connections)",
                human(pool.idle_timeout)
            ),
            "keep it below the app's own keep-alive timeout (the default, 4s, is below Node.js's 5s)",
        );
    }
    let rps = f64::from(breaker.min_requests) / breaker.window.as_secs_f64().max(0.001);
    if rps > 100.0 {
        let pos = f.node("circuit_breaker").map_or(f.pos, |n| n.pos);
        cx.warn(
            pos,
            &f.child_path("circuit_breaker.min_requests"),
            format!(
                "the failure-rate rule needs {} calls within {} ({rps:.0} per second) before it can trip; below that traffic only `consecutive_failures` protects this upstream",
                breaker.min_requests,
                human(breaker.window)
            ),
            "lower `min_requests` or lengthen `window` to match the traffic this upstream really gets",
        );
    }
}
