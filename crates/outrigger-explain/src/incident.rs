//! The second half: from the folded counts to incidents told as stories.
//!
//! An incident is a run of seconds in which one upstream's requests failed for an
//! upstream- or proxy-class reason, with gaps no longer than `gap`; a latency alert with no
//! failures near it is an incident of its own (a slowdown). Its story is put together from
//! the counts and the state changes inside it.

use std::collections::{BTreeMap, HashMap};

use crate::actions;
use crate::collect::{Collected, Detail, EventKind, Hist, Id};
use crate::line::{clock, format_ts};
use crate::report::*;

/// Fewer failures than this, with no breaker or latency event, are noise, not an incident.
const MIN_FAILURES: u64 = 3;
/// How far before the first failure a latency alert still belongs to the incident.
const LOOKBACK_MS: i64 = 5 * 60_000;
/// How long after the last failure its recovery (the breaker closing) is looked for.
const RECOVERY_MS: i64 = 10 * 60_000;

/// Builds the report. `gap_ms`: the longest pause in failures within one incident.
pub fn report(mut c: Collected, gap_ms: i64) -> Report {
    c.settle();
    let end_ms = c.last_ms.unwrap_or(0);
    let mut incidents = Vec::new();

    let mut by_upstream: BTreeMap<Id, Vec<i64>> = BTreeMap::new();
    for (&(up, sec), s) in &c.up_seconds {
        if s.failed > 0 {
            by_upstream.entry(up).or_default().push(sec);
        }
    }
    for (up, mut secs) in by_upstream {
        secs.sort_unstable();
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for s in secs {
            match runs.last_mut() {
                Some((_, e)) if (s - *e) * 1000 <= gap_ms => *e = s,
                _ => runs.push((s, s)),
            }
        }
        for (i, &(s, e)) in runs.iter().enumerate() {
            let next_start = runs.get(i + 1).map(|r| r.0 * 1000);
            if let Some(inc) = failure_incident(&c, up, s, e, next_start, end_ms, gap_ms) {
                incidents.push(inc);
            }
        }
    }
    incidents.extend(slowdowns(&c, &incidents));
    incidents.sort_by(|a, b| b.critical.cmp(&a.critical).then_with(|| a.start.cmp(&b.start)));
    for (i, inc) in incidents.iter_mut().enumerate() {
        inc.id = i + 1;
    }

    Report {
        window: Window {
            start: c.first_ms.map(format_ts),
            end: c.last_ms.map(format_ts),
        },
        blast_radius: blast_radius(&c, None),
        client_errors: client_errors(&c),
        skipped_lines: c.skipped_lines(),
        input: input(&c),
        incidents,
    }
}

/// Sums of one upstream's seconds in `[from, to]` (seconds).
fn up_sum(c: &Collected, up: Id, from: i64, to: i64) -> crate::collect::UpSecond {
    let mut t = crate::collect::UpSecond::default();
    for (&(u, sec), s) in &c.up_seconds {
        if u == up && sec >= from && sec <= to {
            t.requests += s.requests;
            t.ok += s.ok;
            t.failed += s.failed;
            t.retries += s.retries;
            t.held_by_budget += s.held_by_budget;
        }
    }
    t
}

fn p50(c: &Collected, up: Id, from_ms: i64, to_ms: i64) -> Option<f64> {
    let mut h = Hist::default();
    let (a, b) = (from_ms.div_euclid(10_000), to_ms.div_euclid(10_000));
    for (&(u, slot), x) in &c.latency {
        if u == up && slot >= a && slot <= b {
            h.add(x);
        }
    }
    h.quantile(0.5)
}

fn failure_incident(
    c: &Collected,
    up: Id,
    s: i64,
    e: i64,
    next_start_ms: Option<i64>,
    end_ms: i64,
    gap_ms: i64,
) -> Option<Incident> {
    let (start_ms, last_ms) = (s * 1000, e * 1000 + 999);
    // Codes, in the order they first appeared.
    let mut codes: HashMap<Id, (u64, i64)> = HashMap::new();
    for (&(u, code, sec), &n) in &c.failures {
        if u == up && sec >= s && sec <= e {
            let x = codes.entry(code).or_insert((0, sec));
            x.0 += n;
            x.1 = x.1.min(sec);
        }
    }
    let mut codes: Vec<(Id, u64, i64)> = codes.into_iter().map(|(k, (n, f))| (k, n, f)).collect();
    codes.sort_by(|a, b| a.2.cmp(&b.2).then(b.1.cmp(&a.1)));
    let events: Vec<_> = c
        .events
        .iter()
        .filter(|ev| ev.upstream == Some(up))
        .filter(|ev| {
            ev.ms >= start_ms - LOOKBACK_MS && ev.ms <= (last_ms + RECOVERY_MS).min(next_start_ms.unwrap_or(i64::MAX))
        })
        .collect();
    let failed_total: u64 = codes.iter().map(|x| x.1).sum();
    let has_breaker = events
        .iter()
        .any(|ev| ev.kind == EventKind::Breaker && ev.ms >= start_ms - gap_ms);
    if failed_total < MIN_FAILURES && !has_breaker {
        return None;
    }
    // The cause is the first code that is not the breaker's own fast failure.
    let cause = codes
        .iter()
        .find(|x| c.names.name(x.0) != "circuit_open")
        .or(codes.first())
        .map(|x| x.0)?;
    let cause_name = c.names.name(cause).to_owned();
    let class = if matches!(
        cause_name.as_str(),
        "overloaded" | "shutting_down" | "internal" | "fault_injected"
    ) {
        "proxy"
    } else {
        "upstream"
    };
    let up_name = c.names.name(up).to_owned();
    let totals = up_sum(c, up, s, e);
    let after = c
        .up_seconds
        .iter()
        .filter(|&(&(u, sec), x)| u == up && sec > e && x.ok > 0 && next_start_ms.is_none_or(|n| sec * 1000 < n))
        .map(|(&(_, sec), _)| sec)
        .min();
    // Failures in the last second were the last thing seen: if nothing succeeded after
    // and the logs end within the gap, it is still going on.
    let ongoing = after.is_none() && end_ms - last_ms <= gap_ms;

    let routes = blast_radius(c, Some((up, s, e)));
    let critical = routes.iter().any(|r| r.critical && (r.failed + r.fallback) > 0);
    let latency = Latency {
        before_p50: p50(c, up, start_ms - 60_000, start_ms - 1),
        during_p50: p50(c, up, start_ms, last_ms),
    };
    let mut detail = Detail::default();
    for (&(u, code, minute), d) in &c.details {
        if u == up && code == cause && minute >= s.div_euclid(60) && minute <= e.div_euclid(60) {
            merge_detail(&mut detail, d);
        }
    }

    // The story, in order.
    let mut story = Vec::new();
    for ev in events
        .iter()
        .filter(|ev| ev.kind == EventKind::Latency && ev.ms < start_ms)
    {
        if let Some(sentence) = latency_sentence(&up_name, ev) {
            story.push(sentence);
        }
    }
    let mut onset = format!(
        "{up_name} started {} at {}",
        actions::verb(&cause_name),
        clock(start_ms)
    );
    if let (Some(b), Some(d)) = (latency.before_p50, latency.during_p50)
        && d >= 2.0 * b
    {
        onset.push_str(&format!(" (p50 {} -> {})", ms_text(b), ms_text(d)));
    }
    onset.push_str(&format!(
        "; {} of its {} requests failed ({})",
        thousands(failed_total),
        thousands(totals.requests),
        percent(failed_total, totals.requests)
    ));
    if !detail.stages.is_empty() {
        let (stage, _) = detail.stages.iter().max_by_key(|x| x.1).cloned().unwrap_or_default();
        onset.push_str(&format!(", failing in stage {stage}"));
    }
    onset.push('.');
    story.push(onset);
    for ev in events.iter().filter(|ev| ev.ms >= start_ms) {
        match ev.kind {
            EventKind::Breaker => story.push(breaker_sentence(ev.to.as_deref().unwrap_or("?"), &ev.why, ev.ms)),
            EventKind::Latency => {
                if let Some(sentence) = latency_sentence(&up_name, ev) {
                    story.push(sentence);
                }
            }
            EventKind::Outlier => story.push(format!("{}: {}", clock(ev.ms), ev.why)),
            EventKind::KeepaliveRace => story.push(format!("{}: {}", clock(ev.ms), ev.why)),
            EventKind::Reload => story.push(format!(
                "The config was reloaded at {} ({}): {}.",
                clock(ev.ms),
                ev.to.as_deref().unwrap_or("?"),
                ev.why.trim_end_matches('.')
            )),
            EventKind::Dns => story.push(format!("{}: {}", clock(ev.ms), ev.why)),
        }
    }
    for r in routes.iter().filter(|r| r.fallback > 0) {
        story.push(format!(
            "{} requests to route {} got the fallback instead of an error.",
            thousands(r.fallback),
            r.route
        ));
    }
    if totals.retries > 0 || totals.held_by_budget > 0 {
        let mut s = format!(
            "{} retries were made ({} of requests)",
            thousands(totals.retries),
            percent(totals.retries, totals.requests)
        );
        if totals.held_by_budget > 0 {
            s.push_str(&format!(
                "; {} more were held back by the retry budget, so retries could not multiply the load",
                thousands(totals.held_by_budget)
            ));
        }
        s.push('.');
        story.push(s);
    }
    let codes_text: Vec<String> = codes
        .iter()
        .map(|x| format!("{} {}", thousands(x.1), c.names.name(x.0)))
        .collect();
    if codes.len() > 1 {
        story.push(format!("Failures by code: {}.", codes_text.join(", ")));
    }
    match (ongoing, after) {
        (true, _) => story.push(format!(
            "Still failing when the logs end ({}): the last failure was at {}.",
            clock(end_ms),
            clock(last_ms)
        )),
        (false, Some(ok)) => story.push(format!(
            "It recovered: requests succeeded again from {} (last failure {}).",
            clock(ok * 1000),
            clock(last_ms)
        )),
        (false, None) => story.push(format!(
            "The failures stopped at {}, but no later request to {up_name} is in the logs to show it recovered.",
            clock(last_ms)
        )),
    }

    let samples = samples(c, up, s, e);
    let first_actions = actions::first_actions(&actions::Facts {
        upstream: &up_name,
        code: &cause_name,
        detail: &detail,
        breaker_opened: events
            .iter()
            .any(|ev| ev.kind == EventKind::Breaker && ev.to.as_deref() == Some("open")),
        slowed: latency
            .before_p50
            .zip(latency.during_p50)
            .is_some_and(|(b, d)| d >= 2.0 * b)
            || events.iter().any(|ev| ev.kind == EventKind::Latency),
        ongoing,
        routes: &routes,
    });

    Some(Incident {
        id: 0,
        upstream: up_name,
        code: cause_name,
        class: class.to_owned(),
        codes: codes
            .iter()
            .map(|x| CodeCount {
                code: c.names.name(x.0).to_owned(),
                requests: x.1,
            })
            .collect(),
        start: format_ts(start_ms),
        end: (!ongoing).then(|| format_ts(last_ms.min(end_ms.max(start_ms)))),
        recovered_at: after.map(|sec| format_ts(sec * 1000)),
        critical,
        requests: failed_total,
        requests_total: totals.requests,
        share: ratio(failed_total, totals.requests),
        routes: routes.into_iter().filter(|r| r.failed + r.fallback > 0).collect(),
        latency_ms: latency,
        breaker: events
            .iter()
            .filter(|ev| ev.kind == EventKind::Breaker && ev.ms >= start_ms - gap_ms)
            .map(|ev| BreakerChange {
                at: format_ts(ev.ms),
                to: ev.to.as_deref().unwrap_or("?").to_owned(),
                why: ev.why.to_string(),
            })
            .collect(),
        retries: Retries {
            made: totals.retries,
            held_by_budget: totals.held_by_budget,
        },
        story,
        first_actions,
        samples,
    })
}

/// Latency alerts with no failure incident of the same upstream near them: the upstream
/// slowed down without (yet) failing.
fn slowdowns(c: &Collected, failures: &[Incident]) -> Vec<Incident> {
    let mut out: Vec<Incident> = Vec::new();
    let mut open: HashMap<Id, (i64, Vec<String>)> = HashMap::new();
    let covered = |up: &str, ms: i64| {
        failures.iter().any(|i| {
            let s = crate::line::parse_ts(&i.start).unwrap_or(0);
            let e = i.end.as_deref().and_then(crate::line::parse_ts).unwrap_or(i64::MAX);
            i.upstream == up && ms >= s.saturating_sub(LOOKBACK_MS) && ms <= e.saturating_add(RECOVERY_MS)
        })
    };
    let mut finish = |c: &Collected, up: Id, start: i64, end: Option<i64>, story: Vec<String>| {
        let name = c.names.name(up).to_owned();
        let (s, e) = (
            start.div_euclid(1000),
            end.unwrap_or(c.last_ms.unwrap_or(start)).div_euclid(1000),
        );
        let totals = up_sum(c, up, s, e);
        let routes = blast_radius(c, Some((up, s, e)));
        let latency = Latency {
            before_p50: p50(c, up, start - 60_000, start - 1),
            during_p50: p50(c, up, start, e * 1000 + 999),
        };
        out.push(Incident {
            id: 0,
            upstream: name.clone(),
            code: "latency_inflation".to_owned(),
            class: "upstream".to_owned(),
            codes: Vec::new(),
            start: format_ts(start),
            end: end.map(format_ts),
            recovered_at: end.map(format_ts),
            critical: routes.iter().any(|r| r.critical && r.requests > 0),
            requests: 0,
            requests_total: totals.requests,
            share: 0.0,
            routes: routes.into_iter().filter(|r| r.requests > 0).collect(),
            latency_ms: latency,
            breaker: Vec::new(),
            retries: Retries::default(),
            story,
            first_actions: actions::slowdown_actions(&name),
            samples: Vec::new(),
        });
    };
    for ev in c.events.iter().filter(|ev| ev.kind == EventKind::Latency) {
        let Some(up) = ev.upstream else { continue };
        let name = c.names.name(up);
        if covered(name, ev.ms) {
            continue;
        }
        let rising = ev.ratio.is_some_and(|r| r > 1.0) && !ev.why.contains("back to");
        let sentence = latency_sentence(name, ev).unwrap_or_else(|| ev.why.to_string());
        match (open.remove(&up), rising) {
            (None, true) => {
                open.insert(up, (ev.ms, vec![sentence]));
            }
            (Some((start, mut story)), false) => {
                story.push(sentence);
                finish(c, up, start, Some(ev.ms), story);
            }
            (Some((start, mut story)), true) => {
                story.push(sentence);
                open.insert(up, (start, story));
            }
            (None, false) => {}
        }
    }
    for (up, (start, mut story)) in open {
        story.push(format!(
            "Still slow when the logs end ({}).",
            clock(c.last_ms.unwrap_or(start))
        ));
        finish(c, up, start, None, story);
    }
    out
}

fn latency_sentence(up: &str, ev: &crate::collect::Event) -> Option<String> {
    let (ratio, recent, baseline) = (ev.ratio?, ev.recent_ms?, ev.baseline_ms?);
    Some(if ev.why.contains("back to") || ratio < 1.5 {
        format!(
            "The latency of {up} came back to normal at {} ({} against a baseline of {}).",
            clock(ev.ms),
            ms_text(recent),
            ms_text(baseline)
        )
    } else {
        format!(
            "{up} slowed down: at {} its latency was {:.1}x its baseline ({} against {}), noticed before it failed.",
            clock(ev.ms),
            ratio,
            ms_text(recent),
            ms_text(baseline)
        )
    })
}

fn breaker_sentence(to: &str, why: &str, ms: i64) -> String {
    let t = clock(ms);
    match to {
        "open" => format!("The breaker opened at {t} ({why}): callers got fast failures instead of waiting."),
        "half_open" => format!("At {t} the breaker let probes through ({why})."),
        "closed" => format!("The breaker closed at {t} ({why})."),
        other => format!("The breaker went {other} at {t} ({why})."),
    }
}

fn merge_detail(into: &mut Detail, d: &Detail) {
    for (k, n) in &d.stages {
        match into.stages.iter_mut().find(|x| x.0 == *k) {
            Some(x) => x.1 += n,
            None => into.stages.push((k.clone(), *n)),
        }
    }
    for (k, n) in &d.endpoints {
        match into.endpoints.iter_mut().find(|x| x.0 == *k) {
            Some(x) => x.1 += n,
            None => into.endpoints.push((k.clone(), *n)),
        }
    }
    into.reused += d.reused;
    into.fresh += d.fresh;
    into.max_idle_ms = into.max_idle_ms.max(d.max_idle_ms);
    into.max_duration_ms = into.max_duration_ms.max(d.max_duration_ms);
}

/// Per route: requests and harm, over everything or over one upstream's seconds.
fn blast_radius(c: &Collected, only: Option<(Id, i64, i64)>) -> Vec<RouteImpact> {
    let mut by_route: BTreeMap<Id, RouteImpact> = BTreeMap::new();
    for (&(r, sec), x) in &c.route_seconds {
        let meta = c.routes.get(&r).copied().unwrap_or_default();
        if let Some((up, s, e)) = only
            && (meta.upstream != Some(up) || sec < s || sec > e)
        {
            continue;
        }
        let entry = by_route.entry(r).or_insert_with(|| RouteImpact {
            route: c.names.name(r).to_owned(),
            upstream: meta.upstream.map(|u| c.names.name(u).to_owned()),
            critical: meta.critical,
            requests: 0,
            failed: 0,
            fallback: 0,
            client_errors: 0,
            share: 0.0,
        });
        entry.requests += x.requests;
        entry.failed += x.failed;
        entry.fallback += x.fallback;
        entry.client_errors += x.client;
    }
    let mut out: Vec<RouteImpact> = by_route.into_values().collect();
    for r in &mut out {
        r.share = ratio(r.failed + r.fallback, r.requests);
    }
    out.sort_by(|a, b| {
        b.critical
            .cmp(&a.critical)
            .then((b.failed + b.fallback).cmp(&(a.failed + a.fallback)))
            .then(a.route.cmp(&b.route))
    });
    out
}

fn client_errors(c: &Collected) -> Vec<ClientErrors> {
    let mut out: Vec<ClientErrors> = c
        .client_errors
        .iter()
        .map(|(&(r, code), &(n, status))| ClientErrors {
            route: c.names.name(r).to_owned(),
            code: c.names.name(code).to_owned(),
            status,
            requests: n,
        })
        .collect();
    out.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
    out
}

fn samples(c: &Collected, up: Id, s: i64, e: i64) -> Vec<SampleOut> {
    let mut all: Vec<&crate::collect::Sample> = c
        .samples
        .iter()
        .filter(|&(&(u, _, minute), _)| u == up && minute >= s.div_euclid(60) && minute <= e.div_euclid(60))
        .flat_map(|(_, v)| v.iter())
        .collect();
    all.sort_by_key(|x| x.ms);
    // The first, the last, and a few of each code in between.
    let mut picked: Vec<&crate::collect::Sample> = Vec::new();
    for x in &all {
        if picked.len() < 5 && !picked.iter().any(|p| p.code == x.code && p.cause == x.cause) {
            picked.push(x);
        }
    }
    picked
        .into_iter()
        .map(|x| SampleOut {
            ts: format_ts(x.ms),
            request_id: x.request_id.to_string(),
            trace_id: x.trace_id.to_string(),
            route: x.route.to_string(),
            request: format!("{} {}", x.method, x.path),
            status: x.status,
            code: x.code.to_string(),
            cause: x.cause.to_string(),
        })
        .collect()
}

fn input(c: &Collected) -> Input {
    let mut skipped = serde_json::Map::new();
    for why in crate::line::Skip::ALL {
        skipped.insert(why.as_str().to_owned(), c.skipped[why as usize].into());
    }
    Input {
        lines: c.lines,
        skipped,
        sources: c
            .sources
            .iter()
            .map(|s| SourceOut {
                name: s.name.clone(),
                lines: s.lines,
                skipped: s.skipped,
                first: s.first_ms.map(format_ts),
                last: s.last_ms.map(format_ts),
                truncated: s.truncated,
            })
            .collect(),
        clock_skew: skew(c),
        events_dropped: c.events_dropped,
    }
}

/// A hop logged by another proxy must lie inside its caller's attempt; where it does not
/// by more than the tolerance, the two logs' clocks disagree.
fn skew(c: &Collected) -> Vec<Skew> {
    const TOLERANCE_MS: f64 = 20.0;
    let mut by_pair: BTreeMap<(Id, Id), Vec<f64>> = BTreeMap::new();
    for (parent, child) in &c.children {
        let Some(caller) = c.hops.get(parent) else { continue };
        if caller.source == child.source {
            continue;
        }
        // Positive: the child's clock runs ahead of the caller's.
        let ahead = child.end_ms - caller.end_ms;
        let behind = caller.start_ms - child.start_ms;
        let off = if ahead > TOLERANCE_MS {
            ahead
        } else if behind > TOLERANCE_MS {
            -behind
        } else {
            continue;
        };
        by_pair.entry((caller.source, child.source)).or_default().push(off);
    }
    let name = |id: Id| c.sources.get(id as usize).map_or("?".to_owned(), |s| s.name.clone());
    by_pair
        .into_iter()
        .map(|((caller, child), mut offs)| {
            offs.sort_by(f64::total_cmp);
            let median = offs[offs.len() / 2];
            let (ahead, behind) = if median > 0.0 { (child, caller) } else { (caller, child) };
            Skew {
                ahead: name(ahead),
                behind: name(behind),
                by_ms: (median.abs() * 10.0).round() / 10.0,
                requests: offs.len() as u64,
            }
        })
        .collect()
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        ((a as f64 / b as f64) * 10_000.0).round() / 10_000.0
    }
}

/// `12 %`, `0.4 %`.
pub fn percent(a: u64, b: u64) -> String {
    if b == 0 {
        return "0 %".to_owned();
    }
    let p = a as f64 * 100.0 / b as f64;
    if p >= 10.0 || p == 0.0 {
        format!("{p:.0} %")
    } else {
        format!("{p:.1} %")
    }
}

/// `1,204`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `70 ms`, `2.1 s`, `0.4 ms`.
pub fn ms_text(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1204), "1,204");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(12), "12");
        assert_eq!(percent(18, 100), "18 %");
        assert_eq!(percent(1, 300), "0.3 %");
        assert_eq!(ms_text(2000.0), "2.0 s");
        assert_eq!(ms_text(70.2), "70 ms");
    }
}
