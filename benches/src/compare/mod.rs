//! `compare`: every configuration through every scenario, alternating round by round so that
//! machine drift hits all alike; medians and spread over the rounds; a Markdown table, the raw
//! samples as JSON and a PNG chart.

mod load;
mod proxies;
mod report;
mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use load::Sample;
use proxies::{Kind, VARIANTS, Variant};

/// What to run.
pub(crate) struct Plan {
    pub(crate) rounds: usize,
    pub(crate) secs: u64,
    pub(crate) only: Vec<String>,
    pub(crate) upstream: String,
    pub(crate) out: PathBuf,
    pub(crate) publish: bool,
    pub(crate) outrigger: Option<PathBuf>,
}

/// A kind of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scenario {
    H1Small50,
    H1Big50,
    H1Small1,
    H1Small1000,
    H2Small,
    Fixed2000,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 6] = [
        Scenario::H1Small50,
        Scenario::H1Big50,
        Scenario::H1Small1,
        Scenario::H1Small1000,
        Scenario::H2Small,
        Scenario::Fixed2000,
    ];

    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::H1Small50 => "HTTP/1.1 c50 small",
            Scenario::H1Big50 => "HTTP/1.1 c50 16 KiB",
            Scenario::H1Small1 => "HTTP/1.1 c1 small",
            Scenario::H1Small1000 => "HTTP/1.1 c1000 small",
            Scenario::H2Small => "HTTP/2 10×10 small",
            Scenario::Fixed2000 => "fixed 2,000 req/s",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Scenario::H1Small50 => "h1_c50_small",
            Scenario::H1Big50 => "h1_c50_16k",
            Scenario::H1Small1 => "h1_c1_small",
            Scenario::H1Small1000 => "h1_c1000_small",
            Scenario::H2Small => "h2_10x10_small",
            Scenario::Fixed2000 => "fixed_2000rps",
        }
    }

    /// Access-log variants run the headline scenario; the dead-collector variant runs it and
    /// the latency one (to compare with plain `outrigger`); the raw variants run everything.
    fn applies_to(self, v: &Variant, upstream: &str) -> bool {
        match (v.kind, v.access_log) {
            // nginx as upstream has no HTTP/2 listener of its own.
            (Kind::Direct, _) => !(self == Scenario::H2Small && upstream == "nginx"),
            _ if v.otlp_down => matches!(self, Scenario::H1Small50 | Scenario::Fixed2000),
            (_, false) => true,
            (_, true) => self == Scenario::H1Small50,
        }
    }
}

/// Everything measured, by configuration name.
#[derive(Default)]
pub(crate) struct Results {
    pub(crate) samples: BTreeMap<(String, Scenario), Vec<Sample>>,
    pub(crate) idle_rss_kib: BTreeMap<String, Vec<u64>>,
    pub(crate) open_1000_rss_kib: BTreeMap<String, Vec<u64>>,
    pub(crate) log_lines: BTreeMap<String, Vec<usize>>,
    pub(crate) skipped: Vec<String>,
}

pub(crate) fn run(plan: &Plan) -> Result<(), String> {
    let started = Instant::now();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // Absolute: nginx and Envoy resolve relative paths against their own prefix.
    let out = std::path::absolute(&plan.out).map_err(|e| e.to_string())?;
    let dir = out.join(stamp.replace(':', "-"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let work = out.join("tools");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut tools = tools::find_or_install(&work);
    if let Some(bin) = &plan.outrigger {
        tools.outrigger = bin.clone();
    }

    let mut results = Results::default();
    let variants: Vec<&Variant> = VARIANTS
        .iter()
        .filter(|v| {
            let family = v.name.split('+').next().unwrap_or(v.name);
            v.kind == Kind::Direct || plan.only.is_empty() || plan.only.iter().any(|o| o == v.name || o == family)
        })
        .filter(|v| {
            let installed = match v.kind {
                Kind::Direct | Kind::Outrigger => true,
                Kind::Envoy => tools.envoy.is_some(),
                Kind::Haproxy => tools.haproxy.is_some(),
                Kind::Nginx => tools.nginx.is_some(),
            };
            if !installed {
                results.skipped.push(format!("{}: not installed", v.name));
            }
            installed
        })
        .collect();
    eprintln!(
        "{} rounds × {} configurations, {} s per run; results in {}",
        plan.rounds,
        variants.len(),
        plan.secs,
        dir.display()
    );

    let upstream = proxies::start_upstream(&plan.upstream, &tools, &dir)?;
    for round in 0..plan.rounds {
        // Rotate the order each round: drift and warm caches favour no one.
        let mut order = variants.clone();
        let shift = round % order.len().max(1);
        order.rotate_left(shift);
        for v in order {
            eprintln!("round {}/{}: {}", round + 1, plan.rounds, v.name);
            if let Err(e) = measure(v, &upstream, &tools, &dir, plan, &mut results) {
                eprintln!("  {}: {e}", v.name);
                results.skipped.push(format!("{} (round {}): {e}", v.name, round + 1));
            }
        }
    }
    drop(upstream);

    let versions = report::Versions::collect(&tools);
    let md = report::markdown(plan, &results, &versions, started.elapsed());
    std::fs::write(dir.join("results.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("results.json"), report::json(&results).to_string()).map_err(|e| e.to_string())?;
    let chart = report::chart(&tools, &dir);
    println!("{md}");
    eprintln!("wrote {}", dir.join("results.md").display());
    if plan.publish {
        let docs = PathBuf::from("docs/performance");
        std::fs::create_dir_all(&docs).map_err(|e| e.to_string())?;
        std::fs::write(docs.join("results.md"), &md).map_err(|e| e.to_string())?;
        std::fs::copy(dir.join("results.json"), docs.join("results.json")).map_err(|e| e.to_string())?;
        if let Some(png) = chart {
            std::fs::copy(png, docs.join("chart.png")).map_err(|e| e.to_string())?;
        }
        eprintln!("published to docs/performance/");
    }
    Ok(())
}

fn measure(
    v: &Variant,
    upstream: &proxies::Running,
    tools: &tools::Tools,
    dir: &std::path::Path,
    plan: &Plan,
    results: &mut Results,
) -> Result<(), String> {
    let running = proxies::start(v, upstream.h1, tools, dir)?;
    let pid = running.pid();
    if let Some(pid) = pid {
        std::thread::sleep(Duration::from_millis(500));
        results
            .idle_rss_kib
            .entry(v.name.to_owned())
            .or_default()
            .push(load::rss_kib(pid));
    }
    let url = |path: &str| format!("http://{}{path}", running.h1);
    // Warm-up: connections, caches, the allocator's pools.
    load::wrk(tools, &url("/"), 50, 1, pid)?;
    let log = dir.join(format!("{}-access.log", v.name));
    let lines_before = load::count_lines(&log);
    for s in Scenario::ALL.into_iter().filter(|s| s.applies_to(v, &plan.upstream)) {
        let sample = match s {
            Scenario::H1Small50 => load::wrk(tools, &url("/"), 50, plan.secs, pid),
            Scenario::H1Big50 => load::wrk(tools, &url("/bytes/16384"), 50, plan.secs, pid),
            Scenario::H1Small1 => load::wrk(tools, &url("/"), 1, plan.secs, pid),
            Scenario::H1Small1000 => load::wrk(tools, &url("/"), 1000, plan.secs, pid),
            Scenario::H2Small => load::h2load(tools, &format!("http://{}/", running.h2), 10, 10, plan.secs, pid),
            Scenario::Fixed2000 => load::probe(tools, &url("/"), 2000, plan.secs, pid),
        }?;
        if v.access_log && s == Scenario::H1Small50 {
            results
                .log_lines
                .entry(v.name.to_owned())
                .or_default()
                .push(load::count_lines(&log).saturating_sub(lines_before));
        }
        results.samples.entry((v.name.to_owned(), s)).or_default().push(sample);
    }
    drop(running);
    // On a fresh process: what 1,000 keep-alive clients cost, apart from what the allocator
    // keeps after a burst of load (that shows as the c1000 peak).
    if !v.access_log && !v.otlp_down {
        let fresh = proxies::start(v, upstream.h1, tools, dir)?;
        if let Some(pid) = fresh.pid() {
            std::thread::sleep(Duration::from_millis(500));
            results
                .open_1000_rss_kib
                .entry(v.name.to_owned())
                .or_default()
                .push(load::rss_with_open_connections(fresh.h1, 1000, pid));
        }
    }
    Ok(())
}
