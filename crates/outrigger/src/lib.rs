//! The `outrigger` command line: `run`, `check`, and the wiring of config, telemetry and
//! the data path into one process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod iptables;

use outrigger_config::{Config, ConfigError};

/// The version and commit of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this build was made from ("unknown" outside a checkout).
pub const COMMIT: &str = env!("OUTRIGGER_COMMIT");

const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("OUTRIGGER_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "outrigger",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "A sidecar reliability proxy: timeouts, retries, circuit breakers, one error shape, and telemetry that says why.",
    after_help = "Examples:\n  \
        outrigger run                               sidecar for an app on 127.0.0.1:8080 (listen :15001, admin :15090)\n  \
        outrigger run -c /etc/outrigger/outrigger.yaml --workers 2\n  \
        outrigger check -c config/outrigger.yaml    validate a config and show its routes\n  \
        outrigger check -c my.yaml --deny-warnings  also fail on contradictory settings (for CI)\n  \
        kubectl logs POD -c outrigger | outrigger explain -   what failed, why, what to do first\n  \
        outrigger demo                              watch it heal a failing upstream (1 minute)\n  \
        outrigger init-iptables --dry-run           the rules of transparent mode, for review\n\n\
        Exit codes: 0 ok, 1 runtime or config failure, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (without -c: the built-in sidecar config).
    #[command(
        after_help = "Examples:\n  outrigger run\n  outrigger run -c config/outrigger.yaml\n  OUTRIGGER_LOG=debug outrigger run -c my.yaml --workers 1 --log-format pretty\n\n\
        Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the config file (it is also reloaded when it changes)."
    )]
    Run {
        /// Config file (YAML). Without it: listen on 0.0.0.0:15001, forward to 127.0.0.1:8080, admin on :15090.
        #[arg(short, long, value_name = "FILE", env = "OUTRIGGER_CONFIG")]
        config: Option<PathBuf>,
        /// Worker threads of the runtime (default: one per available core).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// Log line format: `json` (one object per line, the default) or `pretty` (for a terminal).
        #[arg(long, value_name = "FORMAT", default_value = "json", value_parser = ["json", "pretty"])]
        log_format: String,
    },
    /// Validate a config file: exit 0 and print its listeners and routes, or exit 1 with every error.
    #[command(
        after_help = "Examples:\n  outrigger check -c config/outrigger.yaml\n  outrigger check -c my.yaml || echo \"fix the errors above\""
    )]
    Check {
        /// Config file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Treat lint warnings (contradictory settings) as errors: exit 1.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// The whole product in one command: the real proxy, built-in upstreams and traffic, and a failure it heals.
    #[command(
        after_help = "Loopback only, no setup. The story: healthy, payments slows down, hangs (timeouts, retries, the breaker opens, \
        the checkout fallback answers), recovers (half-open probes, the breaker closes); then `outrigger explain` over the proxy's own log.\n\n\
        Examples:\n  outrigger demo\n  outrigger demo --duration 20s --no-tty     plain lines, for CI or a log"
    )]
    Demo {
        /// How long the story takes (at least 20s).
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_demo_duration)]
        duration: std::time::Duration,
        /// Print a plain line a second instead of redrawing a live view.
        #[arg(long)]
        no_tty: bool,
    },
    /// Explain the failures in outrigger's JSON logs: incidents, blast radius, first actions.
    #[command(
        after_help = "Examples:\n  kubectl logs deploy/checkout -c outrigger | outrigger explain -\n  \
        outrigger explain checkout.log payments.log.gz            several proxies' logs, any order\n  \
        outrigger explain --trace 4bf92f3577b34da6a3ce929d0e0e4736 *.log   one request's journey\n  \
        outrigger explain --format json app.log | jq '.incidents[0].story'\n  \
        outrigger explain --format brief app.log > brief.md        for the incident channel\n\n\
        Lines that are not outrigger's are counted (skipped_lines), never fatal. Exit 1 only if a file cannot be opened."
    )]
    Explain {
        /// Log files (`-`: standard input, the default; `*.gz`: gzip).
        #[arg(value_name = "FILE|-")]
        files: Vec<String>,
        /// Follow one request: a trace id or a request id.
        #[arg(long, value_name = "ID")]
        trace: Option<String>,
        /// `text` (for a terminal), `json` (the digest for pipelines), `brief` (Markdown for an incident channel).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json", "brief"])]
        format: String,
        /// The longest pause in failures within one incident.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        gap: std::time::Duration,
    },
    /// Install the redirect rules of transparent mode in this network namespace (an init container with NET_ADMIN).
    #[command(
        name = "init-iptables",
        after_help = "Inbound TCP to the app's ports goes to the inbound listener; the app's outbound TCP goes to the outbound \
        listener, except outrigger's own (by uid), traffic within the pod, the admin port and what is excluded. Running it \
        again changes nothing; --remove takes every rule away. Ports come from the config: the listeners', the admin's, and \
        (inbound) the loopback endpoints the inbound routes send to.\n\n\
        Examples:\n  outrigger init-iptables -c /etc/outrigger/outrigger.yaml\n  \
        outrigger init-iptables --dry-run --inbound-ports 8080,9090 --exclude-outbound-cidrs 169.254.169.254/32\n  \
        outrigger init-iptables --remove"
    )]
    InitIptables(iptables::Options),
}

fn parse_demo_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    // Under 20 s the breaker's second open period outlasts the recovery phase.
    if d < std::time::Duration::from_secs(20) || d > std::time::Duration::from_secs(3600) {
        return Err("the demo needs between 20s and 1h".to_owned());
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 2m)"))
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; real usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Check { config, deny_warnings } => check(&config, deny_warnings),
        Command::InitIptables(options) => iptables::run(&options),
        Command::Demo { duration, no_tty } => demo::run(demo::Options { duration, no_tty }),
        Command::Explain {
            files,
            trace,
            format,
            gap,
        } => explain(&files, trace.as_deref(), &format, gap),
        Command::Run {
            config,
            workers,
            log_format,
        } => {
            let format = if log_format == "pretty" {
                outrigger_telemetry::logging::Format::Pretty
            } else {
                outrigger_telemetry::logging::Format::Json
            };
            outrigger_telemetry::logging::set_format(format);
            // Access lines are written in batches: none may be left behind by a crash or exit.
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                outrigger_telemetry::logging::flush();
                report(info);
            }));
            let code = run(config, workers);
            outrigger_telemetry::logging::flush();
            code
        }
    }
}

fn explain(files: &[String], trace: Option<&str>, format: &str, gap: std::time::Duration) -> ExitCode {
    let gap_ms = i64::try_from(gap.as_millis()).unwrap_or(i64::MAX);
    let mut ex = outrigger_explain::Explainer::new(trace, gap_ms);
    let stdin = ["-".to_owned()];
    for f in if files.is_empty() { &stdin[..] } else { files } {
        if let Err(e) = ex.read_path(f) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let (report, journey) = ex.finish();
    let out = match (journey, format) {
        (Some(j), "json") => serde_json::to_string_pretty(&j).unwrap_or_default(),
        (Some(j), _) => j.text(),
        (None, "json") => outrigger_explain::render::json(&report),
        (None, "brief") => outrigger_explain::render::brief(&report),
        (None, _) => outrigger_explain::render::text(&report),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = writeln!(stdout, "{}", out.trim_end());
    ExitCode::SUCCESS
}

fn load(path: Option<&PathBuf>) -> Result<outrigger_proxy::LoadedConfig, ConfigError> {
    match path {
        Some(p) => outrigger_proxy::read_config(p),
        None => outrigger_proxy::builtin_config(),
    }
}

fn check(path: &Path, deny_warnings: bool) -> ExitCode {
    match outrigger_config::load_checked(path) {
        Ok(checked) => {
            // Certificates, keys and CAs are loaded as `run` would load them.
            if let Err(e) = outrigger_proxy::check_tls(&checked.config) {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            let n = checked.warnings.len();
            if deny_warnings && n > 0 {
                eprintln!(
                    "{n} warning{} in {} (--deny-warnings)",
                    if n == 1 { "" } else { "s" },
                    path.display()
                );
                return ExitCode::from(1);
            }
            let note = if n > 0 {
                format!(" ({n} warning{} above)", if n == 1 { "" } else { "s" })
            } else {
                String::new()
            };
            println!("{} is valid{note}.\n", path.display());
            print!("{}", summary(&checked.config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// A short table of listeners and routes, for `check`.
fn summary(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut rows = vec![["LISTENER".to_owned(), "ROLE".to_owned(), "ADDRESS".to_owned()]];
    for l in &config.listeners {
        rows.push([l.name.clone(), l.role.as_str().to_owned(), l.address.to_string()]);
    }
    rows.push(["(admin)".to_owned(), String::new(), config.admin.address.to_string()]);
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![[
        "ROUTE".to_owned(),
        "MATCH".to_owned(),
        "LISTENER".to_owned(),
        "UPSTREAM".to_owned(),
        "ENDPOINTS".to_owned(),
    ]];
    for r in &config.routes {
        let m = &r.matcher;
        let mut desc = String::new();
        if !m.methods.is_empty() {
            let _ = write!(
                desc,
                "{} ",
                m.methods.iter().map(|x| x.as_str()).collect::<Vec<_>>().join("|")
            );
        }
        if let Some(d) = &m.destination {
            let _ = write!(desc, "to {d} ");
        }
        if let Some(h) = &m.host {
            let _ = write!(
                desc,
                "{}{}",
                h.host,
                h.port.map(|p| format!(":{p}")).unwrap_or_default()
            );
        }
        match (&m.path, &m.path_prefix, &m.path_regex) {
            (Some(p), _, _) => desc.push_str(p),
            (_, Some(p), _) => {
                let _ = write!(desc, "{p}*");
            }
            (_, _, Some(r)) => {
                let _ = write!(
                    desc,
                    "~{}",
                    r.as_str().trim_start_matches("^(?:").trim_end_matches(")$")
                );
            }
            _ if desc.is_empty() || desc.ends_with(' ') => desc.push_str("(any path)"),
            _ => desc.push_str(" (any path)"),
        }
        if !m.headers.is_empty() {
            let _ = write!(desc, " +{} header rule(s)", m.headers.len());
        }
        let endpoints = config
            .upstream(&r.upstream)
            .map(|u| {
                u.endpoints
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        rows.push([
            r.name.clone(),
            desc.trim().to_owned(),
            r.listener.clone().unwrap_or_else(|| "all".to_owned()),
            r.upstream.clone(),
            endpoints,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn run(path: Option<PathBuf>, workers: Option<u16>) -> ExitCode {
    let loaded = match load(path.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "outrigger did not start: fix the config and run again (`outrigger check -c FILE` shows every problem)."
            );
            return ExitCode::from(1);
        }
    };
    let config = loaded.checked.config;
    outrigger_telemetry::logging::init(config.telemetry.logs.level.as_str());
    for w in &loaded.checked.warnings {
        tracing::warn!(kind = "config", file = %w.file, line = w.pos.line, column = w.pos.column, setting = %w.path, fix = %w.fix, "Config warning: {}.", w.message);
    }
    // One worker: a current-thread runtime (no work-stealing queues, no cross-thread wake-ups);
    // chosen by measurement, see docs/performance.md.
    let mut runtime = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all();
    if let Some(n) = workers.filter(|n| *n > 1) {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let source = outrigger_proxy::Source {
        path,
        hash: loaded.hash,
    };
    runtime.block_on(serve(config, source))
}

async fn serve(config: Config, source: outrigger_proxy::Source) -> ExitCode {
    let metrics = match outrigger_telemetry::Metrics::new(VERSION, COMMIT) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot set up metrics (a bug in outrigger): {e}");
            return ExitCode::from(1);
        }
    };
    let described = source
        .path
        .as_ref()
        .map_or_else(|| "the built-in config".to_owned(), |p| p.display().to_string());
    let hash = source.hash.clone();
    let proxy = match outrigger_proxy::Proxy::bind(config, metrics).await {
        Ok(p) => p.with_source(source),
        Err(e) => {
            tracing::error!(kind = "lifecycle", error = %e, "outrigger could not start: {e}.");
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(kind = "lifecycle", version = VERSION, commit = COMMIT, config = %described, hash = %hash, "outrigger {VERSION} starting with {described} (hash {hash}).");
    let reloader = proxy.reloader();
    let drained = proxy
        .run(async move {
            shutdown_signal(&reloader).await;
            // A second signal while draining: the operator wants out now.
            tokio::spawn(async move {
                shutdown_signal(&reloader).await;
                tracing::warn!(
                    kind = "lifecycle",
                    "A second signal during the drain: exiting at once (status 1)."
                );
                outrigger_telemetry::logging::flush();
                std::process::exit(1);
            });
        })
        .await;
    if drained.cut > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT. SIGHUP asks for a config reload.
async fn shutdown_signal(reloader: &outrigger_proxy::Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!(
            kind = "lifecycle",
            "Cannot install signal handlers; stop outrigger with SIGKILL."
        );
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(kind = "lifecycle", signal = "SIGTERM", "Received SIGTERM."); return; }
            _ = int.recv() => { tracing::info!(kind = "lifecycle", signal = "SIGINT", "Received SIGINT."); return; }
            _ = hup.recv() => {
                tracing::info!(kind = "reload", signal = "SIGHUP", "Received SIGHUP: reloading the config.");
                reloader.reload();
            }
        }
    }
}
