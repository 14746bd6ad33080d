//! The report: medians with their spread over the rounds, as Markdown, JSON and a PNG chart.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::load::Sample;
use super::proxies::VARIANTS;
use super::tools::{Tools, version};
use super::{Plan, Results, Scenario};

/// What ran.
pub(crate) struct Versions(Vec<(String, String)>);

impl Versions {
    pub(crate) fn collect(tools: &Tools) -> Versions {
        // The path says which build ran (`--outrigger target/pgo/outrigger`: the PGO build).
        let outrigger = format!(
            "{}, binary {}",
            version(&tools.outrigger, "--version"),
            tools.outrigger.display()
        );
        let mut v = vec![("outrigger".to_owned(), outrigger)];
        if let Some(p) = &tools.envoy {
            v.push(("envoy".into(), version(p, "--version")));
        }
        if let Some(p) = &tools.haproxy {
            v.push(("haproxy".into(), version(p, "-v")));
        }
        if let Some(p) = &tools.nginx {
            v.push(("nginx".into(), version(p, "-v")));
        }
        if let Some(p) = &tools.wrk {
            v.push(("wrk".into(), version(p, "--version")));
        }
        if let Some(p) = &tools.h2load {
            v.push(("h2load".into(), version(p, "--version")));
        }
        Versions(v)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn spread(xs: &[f64]) -> (f64, f64) {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn of(results: &Results, name: &str, s: Scenario, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
    results
        .samples
        .get(&(name.to_owned(), s))
        .map(|v| v.iter().map(&f).collect())
        .unwrap_or_default()
}

/// `12,345 (11,900–12,700)` or `–` when not measured.
fn cell(xs: &[f64], decimals: usize) -> String {
    if xs.is_empty() {
        return "–".to_owned();
    }
    let m = median(xs.to_vec());
    if xs.len() == 1 {
        return num(m, decimals);
    }
    let (lo, hi) = spread(xs);
    format!("{} ({}–{})", num(m, decimals), num(lo, decimals), num(hi, decimals))
}

fn num(x: f64, decimals: usize) -> String {
    if decimals > 0 {
        return format!("{x:.decimals$}");
    }
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn names(results: &Results) -> Vec<&'static str> {
    VARIANTS
        .iter()
        .map(|v| v.name)
        .filter(|n| results.samples.keys().any(|(m, _)| m == n) || results.idle_rss_kib.contains_key(*n))
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

pub(crate) fn markdown(plan: &Plan, r: &Results, versions: &Versions, took: Duration) -> String {
    let mut md = String::new();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(md, "# Comparison run, {date}\n");
    let _ = writeln!(
        md,
        "Command: `cargo run -p outrigger-benches --release -- compare --rounds {} --secs {} --upstream {}`  ",
        plan.rounds, plan.secs, plan.upstream
    );
    let _ = writeln!(md, "Machine: {}  ", machine());
    let _ = writeln!(
        md,
        "Took {} min. Each proxy: one worker thread pinned to core 1; load generator and upstream on core 0; \
         loopback; keep-alive to the upstream. Medians over {} alternating rounds, (min–max) beside them.\n",
        took.as_secs() / 60,
        plan.rounds
    );
    for (name, v) in &versions.0 {
        let _ = writeln!(md, "- {name}: {v}");
    }
    let names = names(r);
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| *s != Scenario::Fixed2000)
        .collect();

    let _ = writeln!(md, "\n## Requests per CPU-second of the proxy process\n");
    let _ = writeln!(
        md,
        "The steadiest figure on a shared machine: work done per unit of CPU the proxy burnt.\n"
    );
    table(
        &mut md,
        &names,
        &scenarios,
        |n, s| cell(&of(r, n, s, |x| x.per_cpu_s), 0),
        true,
    );

    let _ = writeln!(md, "\n## Throughput, requests/s\n");
    let _ = writeln!(
        md,
        "Bounded by core 0 (load generator and upstream) as much as by the proxy.\n"
    );
    table(
        &mut md,
        &names,
        &scenarios,
        |n, s| cell(&of(r, n, s, |x| x.rps), 0),
        false,
    );

    let _ = writeln!(md, "\n## Latency at a fixed 2,000 requests/s (open loop)\n");
    let _ = writeln!(
        md,
        "| configuration | p50 ms | p99 ms | p99.9 ms | added p50 over direct, ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let direct_p50 = median(of(r, "direct", Scenario::Fixed2000, |x| x.p50_ms));
    for n in &names {
        let p50 = of(r, n, Scenario::Fixed2000, |x| x.p50_ms);
        if p50.is_empty() {
            continue;
        }
        let added: Vec<f64> = p50.iter().map(|p| p - direct_p50).collect();
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            cell(&p50, 3),
            cell(&of(r, n, Scenario::Fixed2000, |x| x.p99_ms), 3),
            cell(&of(r, n, Scenario::Fixed2000, |x| x.p999_ms), 3),
            if *n == "direct" {
                "–".to_owned()
            } else {
                cell(&added, 3)
            },
        );
    }

    let _ = writeln!(md, "\n## Latency under saturating load (wrk, c50, small), ms\n");
    let _ = writeln!(md, "| configuration | p50 | p99 | p99.9 |");
    let _ = writeln!(md, "|---|---|---|---|");
    for n in &names {
        let p50 = of(r, n, Scenario::H1Small50, |x| x.p50_ms);
        if p50.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} |",
            cell(&p50, 2),
            cell(&of(r, n, Scenario::H1Small50, |x| x.p99_ms), 2),
            cell(&of(r, n, Scenario::H1Small50, |x| x.p999_ms), 2)
        );
    }

    let _ = writeln!(md, "\n## Memory, MiB\n");
    let _ = writeln!(
        md,
        "| configuration | idle RSS | max RSS, c50 | max RSS, c1000 | 1,000 idle client connections (fresh process) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mib = |xs: Vec<f64>| cell(&xs.iter().map(|k| k / 1024.0).collect::<Vec<_>>(), 1);
    for n in names.iter().filter(|n| **n != "direct") {
        let idle = r
            .idle_rss_kib
            .get(*n)
            .map(|v| v.iter().map(|k| *k as f64).collect())
            .unwrap_or_default();
        let open = r
            .open_1000_rss_kib
            .get(*n)
            .map(|v| v.iter().map(|k| *k as f64).collect())
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            mib(idle),
            mib(of(r, n, Scenario::H1Small50, |x| x.rss_max_kib as f64)),
            mib(of(r, n, Scenario::H1Small1000, |x| x.rss_max_kib as f64)),
            mib(open)
        );
    }

    let _ = writeln!(md, "\n## outrigger over Envoy (requests per CPU-second, medians)\n");
    let _ = writeln!(
        md,
        "| scenario | outrigger / envoy | outrigger / haproxy | outrigger / nginx |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    let ratio = |a: &str, b: &str, s: Scenario| {
        let x = median(of(r, a, s, |x| x.per_cpu_s));
        let y = median(of(r, b, s, |x| x.per_cpu_s));
        if x.is_finite() && y.is_finite() && y > 0.0 {
            format!("{:.2}×", x / y)
        } else {
            "–".to_owned()
        }
    };
    for s in &scenarios {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            s.title(),
            ratio("outrigger", "envoy", *s),
            ratio("outrigger", "haproxy", *s),
            ratio("outrigger", "nginx", *s)
        );
    }
    let _ = writeln!(
        md,
        "| {} (access log on) | {} | {} | {} |",
        Scenario::H1Small50.title(),
        ratio("outrigger+log", "envoy+log", Scenario::H1Small50),
        ratio("outrigger+log", "haproxy+log", Scenario::H1Small50),
        ratio("outrigger+log", "nginx+log", Scenario::H1Small50)
    );

    let errors: Vec<String> = r
        .samples
        .iter()
        .filter_map(|((n, s), v)| {
            let e: u64 = v.iter().map(|x| x.errors).sum();
            (e > 0).then(|| format!("{n} / {}: {e} failed requests", s.title()))
        })
        .collect();
    if !errors.is_empty() || !r.skipped.is_empty() {
        let _ = writeln!(md, "\n## Errors and skips\n");
        for e in errors.iter().chain(&r.skipped) {
            let _ = writeln!(md, "- {e}");
        }
    }
    if !r.log_lines.is_empty() {
        let _ = writeln!(md, "\nAccess-log lines written per c50 run (proves the log was on): ");
        for (n, v) in &r.log_lines {
            let _ = write!(
                md,
                "{n} {}; ",
                v.iter().map(|x| num(*x as f64, 0)).collect::<Vec<_>>().join(", ")
            );
        }
        md.push('\n');
    }
    md
}

fn table(
    md: &mut String,
    names: &[&str],
    scenarios: &[Scenario],
    cell: impl Fn(&str, Scenario) -> String,
    skip_direct: bool,
) {
    let _ = write!(md, "| configuration |");
    for s in scenarios {
        let _ = write!(md, " {} |", s.title());
    }
    let _ = write!(md, "\n|---|");
    for _ in scenarios {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for n in names.iter().filter(|n| !(skip_direct && **n == "direct")) {
        let _ = write!(md, "| {n} |");
        for s in scenarios {
            let _ = write!(md, " {} |", cell(n, *s));
        }
        md.push('\n');
    }
}

/// Every sample, for later analysis and the chart.
pub(crate) fn json(r: &Results) -> Value {
    let samples: Vec<Value> = r
        .samples
        .iter()
        .flat_map(|((n, s), v)| {
            v.iter().map(move |x| {
                json!({
                    "config": n, "scenario": s.key(), "title": s.title(), "rps": x.rps, "per_cpu_s": x.per_cpu_s,
                    "p50_ms": x.p50_ms, "p99_ms": x.p99_ms, "p999_ms": x.p999_ms, "errors": x.errors,
                    "rss_max_kib": x.rss_max_kib,
                })
            })
        })
        .collect();
    json!({
        "samples": samples,
        "idle_rss_kib": r.idle_rss_kib,
        "open_1000_rss_kib": r.open_1000_rss_kib,
        "skipped": r.skipped,
    })
}

/// Renders `chart.png` from `results.json` with `benches/chart.py` (matplotlib).
pub(crate) fn chart(tools: &Tools, dir: &Path) -> Option<PathBuf> {
    let Some(py) = &tools.python else {
        eprintln!("no matplotlib: chart skipped");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("chart.py");
    let png = dir.join("chart.png");
    let ok = Command::new(py)
        .arg(script)
        .arg(dir.join("results.json"))
        .arg(&png)
        .status()
        .is_ok_and(|s| s.success());
    if ok { Some(png) } else { None }
}
