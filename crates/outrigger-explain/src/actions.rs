//! First actions: the error catalogue's advice (docs/errors.md, "Operator"), made specific
//! to one incident: its upstream, endpoints, stages and connections.

use crate::collect::Detail;
use crate::incident::ms_text;
use crate::report::RouteImpact;

/// What an incident's first actions are made from.
pub struct Facts<'a> {
    pub upstream: &'a str,
    pub code: &'a str,
    pub detail: &'a Detail,
    pub breaker_opened: bool,
    pub slowed: bool,
    pub ongoing: bool,
    pub routes: &'a [RouteImpact],
}

/// Every error code the proxy has, with the verb its stories use. A test keeps this list
/// equal to the codes of docs/errors.md.
pub const CODES: &[(&str, &str)] = &[
    ("bad_request", "getting malformed requests"),
    ("route_not_found", "getting requests no route matches"),
    (
        "method_not_allowed",
        "getting requests with methods its routes do not allow",
    ),
    ("forbidden", "refusing callers its routes do not allow"),
    ("request_timeout", "getting requests whose bodies stalled"),
    ("payload_too_large", "getting bodies over the limit"),
    ("header_too_large", "getting headers over the limit"),
    ("upstream_connect_failed", "refusing connections"),
    ("upstream_reset", "resetting connections"),
    ("upstream_protocol_error", "sending invalid responses"),
    ("upstream_timeout", "timing out"),
    ("upstream_error", "answering with 5xx errors"),
    ("circuit_open", "failing fast behind an open breaker"),
    ("no_healthy_endpoints", "running out of healthy endpoints"),
    ("overloaded", "being shed by the proxy (max_in_flight reached)"),
    ("shutting_down", "being refused by a draining proxy"),
    ("fault_injected", "failing on injected faults"),
    ("internal", "hitting an internal proxy error"),
];

/// "timing out", "refusing connections", ...
pub fn verb(code: &str) -> &'static str {
    CODES.iter().find(|(c, _)| *c == code).map_or("failing", |(_, v)| v)
}

/// Two or three things to do first, most specific first.
pub fn first_actions(f: &Facts<'_>) -> Vec<String> {
    let up = f.upstream;
    let d = f.detail;
    let endpoints = top(&d.endpoints, 3);
    let stage = d.stages.iter().max_by_key(|x| x.1).map(|x| &*x.0).unwrap_or("");
    let mut out = Vec::new();
    let reused_share = if d.reused + d.fresh > 0 {
        d.reused as f64 / (d.reused + d.fresh) as f64
    } else {
        0.0
    };
    match f.code {
        "upstream_reset" | "upstream_connect_failed" | "upstream_protocol_error"
            if reused_share >= 0.5 && d.max_idle_ms > 0.0 =>
        {
            out.push(format!(
                "This is the keep-alive race: {:.0} % of the failed attempts were on reused connections \
                 (idle up to {}). Set upstreams.{up}.pool.idle_timeout below {up}'s own keep-alive timeout \
                 (its server's idle/keep-alive setting), then watch the `keepalive_race` log lines stop.",
                reused_share * 100.0,
                ms_text(d.max_idle_ms)
            ));
        }
        _ => {}
    }
    match f.code {
        "upstream_timeout" => {
            out.push(format!(
                "Check whether {up} is slow for everyone (its own latency dashboards, CPU, saturation, \
                 slow queries){}: requests gave up after {}{}.",
                if f.slowed {
                    " — it slowed down before it failed"
                } else {
                    ""
                },
                ms_text(d.max_duration_ms),
                if stage.is_empty() {
                    String::new()
                } else {
                    format!(" (stage {stage})")
                }
            ));
            out.push(format!(
                "If {up} is healthy but slower by design, raise the route's `timeout` (or \
                 `body_idle_timeout` for streams); `http_client_request_duration_seconds{{upstream=\"{up}\"}}` \
                 shows its latency as outrigger sees it."
            ));
        }
        "upstream_connect_failed" => {
            out.push(format!(
                "Is {up} up and listening{}? `kubectl get pods` (restarts, readiness) and its logs; \
                 `connection was refused` means nothing listens on the port in upstreams.{up}.endpoints.",
                if endpoints.is_empty() {
                    String::new()
                } else {
                    format!(" on {endpoints}")
                }
            ));
            out.push(format!(
                "`did not resolve` in the causes means DNS; `not established within` means the network or an \
                 overloaded {up}; a stage `tls` failure is the certificate (see the cause)."
            ));
        }
        "upstream_reset" => {
            out.push(format!(
                "Look for {up} crashing or restarting (`kubectl get pod` restarts, OOM kills) around the start{}.",
                if endpoints.is_empty() {
                    String::new()
                } else {
                    format!("; endpoints: {endpoints}")
                }
            ));
        }
        "upstream_protocol_error" => out.push(format!(
            "Check the port and `protocol` of upstreams.{up} (http1, http2, auto): a TLS port spoken to in \
             plain text, or an HTTP/2-only server behind http1; the causes name the fault."
        )),
        "upstream_error" => out.push(format!(
            "{up} itself answered 5xx: read its logs for the sample request ids below (outrigger forwards \
             x-request-id)."
        )),
        "circuit_open" => out.push(format!(
            "The breaker is a symptom: look at {up} itself. `outrigger_circuit_breaker_state{{upstream=\"{up}\"}}` \
             and the breaker lines above say when and why it opened."
        )),
        "no_healthy_endpoints" => out.push(format!(
            "Every endpoint of {up} was ejected or its name resolved to nothing: the `outlier` and `dns` lines \
             name them; check `outrigger_endpoints_healthy{{upstream=\"{up}\"}}`."
        )),
        "overloaded" => out.push(
            "The pod receives more concurrent requests than the listener's `limits.max_in_flight`: scale out, \
             or raise it if the app can take more."
                .to_owned(),
        ),
        "shutting_down" => out.push(
            "Expected during rollouts; many of them mean endpoints are not updated within `drain.delay`: raise \
             it (and terminationGracePeriodSeconds)."
                .to_owned(),
        ),
        "fault_injected" => {
            out.push("A fault drill is on: set the route's `fault` percentages to 0 to stop it.".to_owned())
        }
        "internal" => out.push(
            "A bug in outrigger: collect its `error` lines for the sample request ids and file an issue.".to_owned(),
        ),
        _ => out.push(format!("Look at {up}'s own logs and metrics around the start.")),
    }
    if f.breaker_opened && f.code != "circuit_open" {
        out.push(format!(
            "The breaker protected {up} and the callers; it probes by itself. Do not restart the sidecar: \
             fix {up}, and the breaker closes after its half-open probes succeed."
        ));
    }
    if let Some(r) = f.routes.iter().find(|r| r.critical && r.failed > 0 && r.fallback == 0) {
        out.push(format!(
            "Route {} is critical and had no fallback: consider a `fallback` for it so callers get a \
             degraded answer instead of an error.",
            r.route
        ));
    }
    if !f.ongoing {
        out.push(format!(
            "It is over: find what changed in {up} at the start (deploys, config, dependencies) before it recurs."
        ));
    }
    out.truncate(4);
    out
}

/// A slowdown without failures.
pub fn slowdown_actions(up: &str) -> Vec<String> {
    vec![
        format!(
            "Check {up}'s own latency and saturation (CPU, pools, slow queries); \
             `outrigger_upstream_latency_inflation_ratio{{upstream=\"{up}\"}}` shows how far it is from its baseline."
        ),
        format!(
            "No request failed yet: if it keeps rising, requests will hit the route `timeout` and the breaker; \
             a `fallback` on critical routes keeps callers answered."
        ),
    ]
}

fn top(list: &[(Box<str>, u64)], n: usize) -> String {
    let mut v: Vec<&(Box<str>, u64)> = list.iter().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    v.iter().take(n).map(|x| &*x.0).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_of_the_error_catalogue_has_a_verb() {
        let doc = include_str!("../../../docs/errors.md");
        let documented: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("## "))
            .filter(|h| h.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        let ours: Vec<&str> = CODES.iter().map(|x| x.0).collect();
        assert_eq!(
            documented, ours,
            "actions::CODES must list docs/errors.md's codes in order"
        );
    }

    #[test]
    fn a_reset_on_reused_connections_is_named_the_keepalive_race() {
        let detail = Detail {
            reused: 9,
            fresh: 1,
            max_idle_ms: 4_900.0,
            ..Detail::default()
        };
        let actions = first_actions(&Facts {
            upstream: "payments",
            code: "upstream_reset",
            detail: &detail,
            breaker_opened: false,
            slowed: false,
            ongoing: true,
            routes: &[],
        });
        assert!(actions[0].contains("keep-alive race") && actions[0].contains("upstreams.payments.pool.idle_timeout"));
        assert!(actions[0].contains("4.9 s"), "{}", actions[0]);
    }
}
