//! The report for people: text for a terminal, a Markdown brief for an incident channel;
//! and as JSON (the digest schema, docs/explain.md) for pipelines.

use std::fmt::Write;

use crate::incident::{percent, thousands};
use crate::report::{Incident, Report, RouteImpact};

/// The JSON digest.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn day_and_clock(ts: &str) -> String {
    // 2026-11-29T14:02:07.120Z -> 2026-11-29 14:02:07
    ts.get(..19).map_or_else(|| ts.to_owned(), |s| s.replacen('T', " ", 1))
}

fn clock(ts: &str) -> &str {
    ts.get(11..19).unwrap_or(ts)
}

fn span(i: &Incident) -> String {
    match &i.end {
        Some(end) => format!("{} – {}", clock(&i.start), clock(end)),
        None => format!("{} – ongoing", clock(&i.start)),
    }
}

fn routes_line(routes: &[RouteImpact]) -> String {
    routes
        .iter()
        .map(|r| {
            let mut s = format!("{}{}", r.route, if r.critical { " (critical)" } else { "" });
            let mut parts = Vec::new();
            if r.failed > 0 {
                parts.push(format!("{} failed", thousands(r.failed)));
            }
            if r.fallback > 0 {
                parts.push(format!("{} fallback", thousands(r.fallback)));
            }
            if !parts.is_empty() {
                let _ = write!(
                    s,
                    ": {} of {} ({})",
                    parts.join(" + "),
                    thousands(r.requests),
                    percent(r.failed + r.fallback, r.requests)
                );
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn header(r: &Report) -> String {
    let window = match (&r.window.start, &r.window.end) {
        (Some(s), Some(e)) => format!("{} – {} UTC", day_and_clock(s), clock(e)),
        _ => "no outrigger lines".to_owned(),
    };
    format!(
        "{window}: {} lines from {} log{}",
        thousands(r.input.lines),
        r.input.sources.len(),
        if r.input.sources.len() == 1 { "" } else { "s" }
    )
}

fn input_notes(r: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if r.skipped_lines > 0 {
        let parts: Vec<String> = r
            .input
            .skipped
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        notes.push(format!(
            "Skipped {} lines ({}).",
            thousands(r.skipped_lines),
            parts.join(", ")
        ));
    }
    for s in r.input.sources.iter().filter(|s| s.truncated) {
        notes.push(format!(
            "{} ends mid-line (truncated): its last line was not used.",
            s.name
        ));
    }
    for k in &r.input.clock_skew {
        notes.push(format!(
            "Clock skew: {}'s clock runs at least {} ahead of {}'s ({} requests crossing both disagree); \
             times from the two logs are not comparable to the millisecond.",
            k.ahead,
            crate::incident::ms_text(k.by_ms),
            k.behind,
            thousands(k.requests)
        ));
    }
    if r.input.events_dropped > 0 {
        notes.push(format!(
            "{} state-change lines beyond the first 100,000 were not used.",
            thousands(r.input.events_dropped)
        ));
    }
    notes
}

/// For a terminal.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", header(r));
    if r.incidents.is_empty() {
        let _ = writeln!(out, "No incidents: no upstream or proxy failures worth a story.\n");
    } else {
        let critical = r.incidents.iter().filter(|i| i.critical).count();
        let _ = writeln!(
            out,
            "{} incident{}{}:\n",
            r.incidents.len(),
            if r.incidents.len() == 1 { "" } else { "s" },
            if critical > 0 {
                format!(" ({critical} on critical routes, first)")
            } else {
                String::new()
            }
        );
    }
    for i in &r.incidents {
        let _ = writeln!(
            out,
            "#{} {}: {}  {}{}",
            i.id,
            i.upstream,
            i.code,
            span(i),
            if i.critical { "  CRITICAL" } else { "" }
        );
        if i.requests > 0 {
            let _ = writeln!(
                out,
                "   {} of {} requests hurt ({}); routes: {}",
                thousands(i.requests),
                thousands(i.requests_total),
                percent(i.requests, i.requests_total),
                routes_line(&i.routes)
            );
        }
        let _ = writeln!(out, "   What happened:");
        for s in &i.story {
            let _ = writeln!(out, "     - {s}");
        }
        let _ = writeln!(out, "   First actions:");
        for (n, a) in i.first_actions.iter().enumerate() {
            let _ = writeln!(out, "     {}. {a}", n + 1);
        }
        if !i.samples.is_empty() {
            let _ = writeln!(out, "   Examples (outrigger explain --trace ID for one journey):");
            for s in i.samples.iter().take(3) {
                let _ = writeln!(
                    out,
                    "     {}  {}  {} {}  trace {}\n       {}",
                    clock(&s.ts),
                    s.request,
                    s.status.map_or("-".to_owned(), |x| x.to_string()),
                    s.code,
                    s.trace_id,
                    s.cause
                );
            }
        }
        out.push('\n');
    }
    if !r.blast_radius.is_empty() {
        let _ = writeln!(out, "Blast radius (whole window):");
        let mut rows = vec![[
            "ROUTE".to_owned(),
            "UPSTREAM".to_owned(),
            "REQUESTS".to_owned(),
            "FAILED".to_owned(),
            "FALLBACK".to_owned(),
            "HURT".to_owned(),
            "CALLERS' 4xx".to_owned(),
        ]];
        for x in &r.blast_radius {
            rows.push([
                format!("{}{}", x.route, if x.critical { " *" } else { "" }),
                x.upstream.clone().unwrap_or_default(),
                thousands(x.requests),
                thousands(x.failed),
                thousands(x.fallback),
                percent(x.failed + x.fallback, x.requests),
                thousands(x.client_errors),
            ]);
        }
        out.push_str(&table(&rows));
        if r.blast_radius.iter().any(|x| x.critical) {
            let _ = writeln!(out, "  * critical route");
        }
        out.push('\n');
    }
    if !r.client_errors.is_empty() {
        let total: u64 = r.client_errors.iter().map(|c| c.requests).sum();
        let parts: Vec<String> = r
            .client_errors
            .iter()
            .take(5)
            .map(|c| {
                format!(
                    "{} {} ({}) on route {}",
                    thousands(c.requests),
                    c.code,
                    c.status,
                    c.route
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "Callers' mistakes, not an outage: {} requests: {}{}.\n",
            thousands(total),
            parts.join(", "),
            if r.client_errors.len() > 5 { ", ..." } else { "" }
        );
    }
    for n in input_notes(r) {
        let _ = writeln!(out, "{n}");
    }
    out
}

/// A Markdown incident brief: to paste into an incident channel or give to an assistant.
/// Redacted: no query strings, client identities or header values (the logs hold none of
/// the last two; paths are kept, queries dropped).
pub fn brief(r: &Report) -> String {
    let mut out = String::new();
    let title = match r.incidents.first() {
        Some(i) => format!(
            "{} {} since {} UTC{}",
            i.upstream,
            i.code,
            day_and_clock(&i.start),
            if i.end.is_none() { " (ongoing)" } else { "" }
        ),
        None => "no incident".to_owned(),
    };
    let _ = writeln!(out, "# Incident brief: {title}\n");
    let _ = writeln!(out, "_From outrigger's logs, {}. Times are UTC._\n", header(r));
    if r.incidents.is_empty() {
        let _ = writeln!(out, "No upstream or proxy failures worth a story in these logs.");
    }
    for i in &r.incidents {
        let _ = writeln!(
            out,
            "## {}. {}: {} ({}){}\n",
            i.id,
            i.upstream,
            i.code,
            span(i),
            if i.critical { " — critical route" } else { "" }
        );
        let _ = writeln!(out, "### Timeline\n");
        for s in &i.story {
            let _ = writeln!(out, "- {s}");
        }
        let _ = writeln!(out, "\n### Numbers\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        let _ = writeln!(
            out,
            "| requests hurt | {} of {} ({}) |",
            thousands(i.requests),
            thousands(i.requests_total),
            percent(i.requests, i.requests_total)
        );
        for c in &i.codes {
            let _ = writeln!(out, "| `{}` | {} |", c.code, thousands(c.requests));
        }
        if let (Some(b), Some(d)) = (i.latency_ms.before_p50, i.latency_ms.during_p50)
            && d >= 2.0 * b
        {
            let _ = writeln!(
                out,
                "| upstream p50 before → during | {} → {} |",
                crate::incident::ms_text(b),
                crate::incident::ms_text(d)
            );
        }
        let _ = writeln!(
            out,
            "| retries made / held by budget | {} / {} |",
            thousands(i.retries.made),
            thousands(i.retries.held_by_budget)
        );
        if !i.routes.is_empty() {
            let _ = writeln!(out, "\n### Blast radius\n\n{}", routes_line(&i.routes));
        }
        let _ = writeln!(out, "\n### First actions\n");
        for (n, a) in i.first_actions.iter().enumerate() {
            let _ = writeln!(out, "{}. {a}", n + 1);
        }
        if !i.samples.is_empty() {
            let _ = writeln!(out, "\n### Representative records\n");
            for s in i.samples.iter().take(3) {
                let _ = writeln!(
                    out,
                    "- `{}` {} → {} `{}` (trace `{}`): {}",
                    clock(&s.ts),
                    s.request,
                    s.status.map_or("-".to_owned(), |x| x.to_string()),
                    s.code,
                    s.trace_id,
                    s.cause
                );
            }
        }
        let _ = writeln!(out, "\n### Open questions\n");
        let _ = writeln!(
            out,
            "- What changed in {} around {} (deploy, config, a dependency of its own)?",
            i.upstream,
            clock(&i.start)
        );
        if i.end.is_none() {
            let _ = writeln!(out, "- Is it still failing now? (these logs end while it was)");
        }
        if i.latency_ms
            .during_p50
            .zip(i.latency_ms.before_p50)
            .is_some_and(|(d, b)| d >= 2.0 * b)
        {
            let _ = writeln!(
                out,
                "- Why did {} slow down before it failed: load, a slow dependency, resource limits?",
                i.upstream
            );
        }
        if i.routes.iter().any(|r| r.critical && r.fallback == 0 && r.failed > 0) {
            let _ = writeln!(out, "- Should the critical routes hit have a fallback?");
        }
        out.push('\n');
    }
    let total: u64 = r.client_errors.iter().map(|c| c.requests).sum();
    if total > 0 {
        let _ = writeln!(
            out,
            "Callers' mistakes (client errors, not part of any incident): {} requests, mostly `{}`.\n",
            thousands(total),
            r.client_errors.first().map_or("", |c| c.code.as_str())
        );
    }
    let notes = input_notes(r);
    if !notes.is_empty() {
        let _ = writeln!(out, "### About the input\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        out.push_str("  ");
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < N {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    }
    out
}
