//! The comparison harness: outrigger against Envoy, HAProxy, nginx and no proxy, on loopback.
//!
//! ```text
//! cargo run -p outrigger-benches --release -- compare              # 5 rounds, about 25 minutes
//! cargo run -p outrigger-benches --release -- compare --quick      # 1 short round, about 3 minutes
//! ```
//!
//! `upstream` and `probe` are the harness's own helpers, run as pinned child processes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark harness reports a broken set-up by stopping"
)]

mod compare;
mod probe;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "outrigger-benches", about = "outrigger's comparison harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every proxy through every scenario, round by round, and writes the report.
    Compare {
        /// Alternating rounds (medians and spread are reported over them).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds of load per measurement.
        #[arg(long, default_value_t = 8)]
        secs: u64,
        /// One round of 3-second runs: a smoke test of the harness, not a result.
        #[arg(long)]
        quick: bool,
        /// Only these configurations (comma-separated names, e.g. `outrigger,envoy`);
        /// `direct` is always kept as the reference.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The upstream: `nginx` (a neutral C server) or `testkit` (our Rust one).
        #[arg(long, default_value = "nginx")]
        upstream: String,
        /// Where results go (a dated folder is made inside).
        #[arg(long, default_value = "target/bench-results")]
        out: PathBuf,
        /// Also copy the table and chart to `docs/performance/`.
        #[arg(long)]
        publish: bool,
        /// The outrigger binary to measure (default: the release build beside this harness),
        /// for A/B runs of a change.
        #[arg(long)]
        outrigger: Option<PathBuf>,
    },
    /// Serves the testkit's fast upstream on 127.0.0.1:PORT until killed.
    Upstream {
        #[arg(long)]
        port: u16,
    },
    /// Sends GETs to URL at a fixed rate (open loop) and prints latency percentiles as JSON.
    Probe {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long, default_value_t = 16)]
        conns: usize,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Compare {
            rounds,
            secs,
            quick,
            only,
            upstream,
            out,
            publish,
            outrigger,
        } => {
            let plan = compare::Plan {
                rounds: if quick { 1 } else { rounds.max(1) },
                secs: if quick { 3 } else { secs.max(1) },
                only,
                upstream,
                out,
                publish,
                outrigger,
            };
            match compare::run(&plan) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Upstream { port } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(outrigger_testkit::serve_fast(port));
            ExitCode::SUCCESS
        }
        Command::Probe { url, rate, secs, conns } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let report = rt.block_on(probe::run(&url, rate, secs, conns));
            println!("{report}");
            ExitCode::SUCCESS
        }
    }
}
