//! `outrigger demo`: the real proxy, in this process, with a built-in config in front of two
//! built-in upstreams on loopback, driven by built-in traffic through a scripted story:
//! healthy, then `payments` slows down, then hangs (timeouts, retries within budget, the
//! breaker opens, the checkout fallback answers), then recovers (half-open probes, the
//! breaker closes). A live view shows it as it happens; at the end `outrigger explain`
//! reads the proxy's own log and tells the story back.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the demo was asked for.
pub(crate) struct Options {
    pub(crate) duration: Duration,
    /// Plain lines instead of a redrawn view (CI, logs, pipes).
    pub(crate) no_tty: bool,
}

/// The story's phases, as shares of the duration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Healthy,
    Slow,
    Failing,
    Recovering,
}

impl Phase {
    fn at(elapsed: Duration, total: Duration) -> Phase {
        let f = elapsed.as_secs_f64() / total.as_secs_f64().max(0.001);
        match f {
            f if f < 0.2 => Phase::Healthy,
            f if f < 0.4 => Phase::Slow,
            f if f < 0.65 => Phase::Failing,
            _ => Phase::Recovering,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Phase::Healthy => "1/4 healthy: payments answers in ~5 ms",
            Phase::Slow => "2/4 payments slows down to ~120 ms (latency inflation)",
            Phase::Failing => "3/4 payments hangs: timeouts, retries, breaker, fallback",
            Phase::Recovering => "4/4 payments recovers: half-open probes, breaker closes",
        }
    }

    /// How long `payments` takes to answer in this phase (milliseconds).
    fn delay_ms(self) -> u64 {
        match self {
            Phase::Healthy | Phase::Recovering => 3 + fastrand::u64(0..5),
            Phase::Slow => 100 + fastrand::u64(0..40),
            Phase::Failing => 30_000,
        }
    }
}

/// Runs the demo; the exit code is 0 unless it could not start.
pub(crate) fn run(opts: Options) -> std::process::ExitCode {
    // A directory of our own, made new (never one that already exists, nor a link planted
    // in its place on a shared /tmp).
    let dir = std::env::temp_dir().join(format!(
        "outrigger-demo-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let log_path = dir.join("outrigger.log");
    let file = match std::fs::create_dir(&dir)
        .and_then(|_| std::fs::OpenOptions::new().write(true).create_new(true).open(&log_path))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot create the demo's log file {}: {e}", log_path.display());
            return std::process::ExitCode::from(1);
        }
    };
    outrigger_telemetry::logging::set_output(file);
    outrigger_telemetry::logging::init("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = runtime.block_on(story(opts, &log_path));
    outrigger_telemetry::logging::flush();
    code
}

async fn story(opts: Options, log_path: &std::path::Path) -> std::process::ExitCode {
    let payments_delay = Arc::new(AtomicU64::new(Phase::Healthy.delay_ms()));
    let (payments, catalog) = match (
        upstream(payments_delay.clone()).await,
        upstream(Arc::new(AtomicU64::new(1))).await,
    ) {
        (Ok(p), Ok(c)) => (p, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot start the demo's upstreams on 127.0.0.1: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let yaml = config_yaml(payments, catalog);
    let config = match outrigger_config::from_yaml(&yaml, "(demo config)", &|_| None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: the demo's config is invalid (a bug in outrigger): {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let metrics = match outrigger_telemetry::Metrics::new(crate::VERSION, crate::COMMIT) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot set up metrics: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let proxy = match outrigger_proxy::Proxy::bind(config, metrics).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot start the proxy: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let Some(listen) = proxy.listener_addrs().first().map(|x| x.1) else {
        return std::process::ExitCode::from(1);
    };
    let admin = proxy.admin_addr();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let proxy_task = tokio::spawn(proxy.run(async move { stopped.notified().await }));

    println!("outrigger demo: the real proxy on {listen}, in front of two upstreams on loopback.");
    println!("  routes: /checkout -> payments (critical, timeout 600ms, 2 attempts, breaker, fallback)");
    println!("          /         -> catalog");
    println!("  scrape it meanwhile: curl -s http://{admin}/metrics | grep outrigger_circuit");
    println!("  its JSON log: {}", log_path.display());
    println!();

    let tally = Arc::new(Tally::default());
    let traffic = tokio::spawn(drive(listen, tally.clone()));
    let start = Instant::now();
    let tty = !opts.no_tty && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut view = View::new(tty);
    let mut last = tally.snapshot();
    let mut tick = tokio::time::interval(if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    });
    tick.tick().await;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= opts.duration {
            break;
        }
        let phase = Phase::at(elapsed, opts.duration);
        payments_delay.store(phase.delay_ms(), Ordering::Relaxed);
        let now = tally.snapshot();
        let breakers = breaker_states(admin).await;
        let retries = retries_total(admin).await;
        view.show(elapsed, opts.duration, phase, now.minus(&last), &breakers, retries);
        last = now;
    }
    traffic.abort();
    view.done();
    stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(10), proxy_task).await;
    outrigger_telemetry::logging::flush();

    let total = tally.snapshot();
    println!(
        "\nSent {} requests: {} answered by the upstreams, {} by the checkout fallback, {} errors, {} refused as callers' mistakes.\n",
        total.sent, total.ok, total.fallback, total.error, total.client
    );
    println!("outrigger explain {}\n", log_path.display());
    let mut ex = outrigger_explain::Explainer::new(None, outrigger_explain::DEFAULT_GAP_MS);
    if let Err(e) = ex.read_path(&log_path.to_string_lossy()) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(1);
    }
    let (report, _) = ex.finish();
    println!("{}", outrigger_explain::render::text(&report).trim_end());
    std::process::ExitCode::SUCCESS
}

fn config_yaml(payments: SocketAddr, catalog: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - {{ name: inbound, address: "127.0.0.1:0" }}
admin: {{ address: "127.0.0.1:0" }}
drain: {{ delay: 0s, timeout: 2s }}
upstreams:
  payments:
    endpoints: ["{payments}"]
    circuit_breaker: {{ consecutive_failures: 5, open_for: 2s, max_open_for: 4s, half_open_probes: 3 }}
  catalog:
    endpoints: ["{catalog}"]
routes:
  - name: checkout
    match: {{ path_prefix: /checkout }}
    upstream: payments
    critical: true
    timeout: 600ms
    max_body_bytes: 1024
    retry:
      attempts: 2
      per_try_timeout: 250ms
      on: [connect_failure, reset, unavailable, timeout]
      backoff: {{ base: 25ms, max: 100ms }}
    fallback:
      status: 200
      body: '{{"status":"accepted","note":"payment queued; you will get a confirmation by email"}}'
  - name: catalog
    match: {{ path_prefix: / }}
    upstream: catalog
    timeout: 2s
telemetry:
  service_name: demo
  latency_inflation: {{ baseline: 30s, recent: 1s, alert_ratio: 3 }}
"#
    )
}

/// A small HTTP/1.1 upstream that answers after `delay` milliseconds.
async fn upstream(delay: Arc<AtomicU64>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let delay = delay.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let wait = Duration::from_millis(delay.load(Ordering::Relaxed));
                    async move {
                        tokio::time::sleep(wait).await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}\n"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// What the callers saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    fallback: AtomicU64,
    error: AtomicU64,
    client: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    sent: u64,
    ok: u64,
    fallback: u64,
    error: u64,
    client: u64,
}

impl Counts {
    fn minus(&self, o: &Counts) -> Counts {
        Counts {
            sent: self.sent - o.sent,
            ok: self.ok - o.ok,
            fallback: self.fallback - o.fallback,
            error: self.error - o.error,
            client: self.client - o.client,
        }
    }

    fn answered(&self) -> u64 {
        self.ok + self.fallback + self.error + self.client
    }
}

impl Tally {
    fn snapshot(&self) -> Counts {
        Counts {
            sent: self.sent.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            fallback: self.fallback.load(Ordering::Relaxed),
            error: self.error.load(Ordering::Relaxed),
            client: self.client.load(Ordering::Relaxed),
        }
    }
}

/// About 50 requests a second, open loop: two thirds to /checkout, a third to the catalog,
/// and now and then a checkout with a body over the route's limit (a caller's mistake).
async fn drive(proxy: SocketAddr, tally: Arc<Tally>) {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let (method, path, body) = match n % 60 {
            0 => ("POST", "/checkout/pay", Bytes::from(vec![b'x'; 4096])),
            k if k % 3 == 0 => ("GET", "/catalog/items", Bytes::new()),
            _ => ("GET", "/checkout/cart", Bytes::new()),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{proxy}{path}"))
            .body(Full::new(body));
        let Ok(req) = req else { continue };
        let client = client.clone();
        let tally = tally.clone();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let counter = match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let fallback = resp.headers().contains_key("outrigger-fallback");
                    let _ = resp.into_body().collect().await;
                    if fallback {
                        &tally.fallback
                    } else if status.is_success() {
                        &tally.ok
                    } else if status.is_client_error() {
                        &tally.client
                    } else {
                        &tally.error
                    }
                }
                _ => &tally.error,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// `(upstream, breaker state)` from `/debug/upstreams`.
async fn breaker_states(admin: SocketAddr) -> Vec<(String, String)> {
    let Some(body) = admin_get(admin, "/debug/upstreams").await else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    v["upstreams"]
        .as_array()
        .map(|ups| {
            ups.iter()
                .map(|u| {
                    (
                        u["name"].as_str().unwrap_or("?").to_owned(),
                        u["breaker"]["state"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The sum of `outrigger_retries_total` from `/metrics`.
async fn retries_total(admin: SocketAddr) -> u64 {
    let Some(body) = admin_get(admin, "/metrics").await else {
        return 0;
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("outrigger_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn admin_get(admin: SocketAddr, path: &str) -> Option<Bytes> {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{admin}{path}").parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.get(uri))
        .await
        .ok()?
        .ok()?;
    resp.into_body().collect().await.ok().map(|b| b.to_bytes())
}

/// The live view: redrawn in place on a terminal, a line a second otherwise.
struct View {
    tty: bool,
    drawn: usize,
    retries_before: Option<u64>,
}

impl View {
    fn new(tty: bool) -> Self {
        View {
            tty,
            drawn: 0,
            retries_before: None,
        }
    }

    fn show(
        &mut self,
        at: Duration,
        total: Duration,
        phase: Phase,
        c: Counts,
        breakers: &[(String, String)],
        retries: u64,
    ) {
        let retried = retries - self.retries_before.unwrap_or(retries);
        self.retries_before = Some(retries);
        let answered = c.answered().max(1);
        let pct = |n: u64| n as f64 * 100.0 / answered as f64;
        let secs = if self.tty { 0.5 } else { 1.0 };
        let breaker_text: Vec<String> = breakers.iter().map(|(u, s)| format!("{u}={s}")).collect();
        if !self.tty {
            println!(
                "t={:>4.1}s phase={:?} req/s={:.0} ok={:.0}% fallback={:.0}% errors={:.0}% client={:.0}% breakers: {} retries={}",
                at.as_secs_f64(),
                phase,
                c.sent as f64 / secs,
                pct(c.ok),
                pct(c.fallback),
                pct(c.error),
                pct(c.client),
                breaker_text.join(" "),
                retried
            );
            return;
        }
        let mut out = String::new();
        if self.drawn > 0 {
            // Back to the top of the view and redraw it.
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        let width = 30usize;
        let done = ((at.as_secs_f64() / total.as_secs_f64()) * width as f64) as usize;
        let lines = [
            format!(
                "[{}{}] {:>4.1}s / {}s  {}",
                "#".repeat(done.min(width)),
                ".".repeat(width - done.min(width)),
                at.as_secs_f64(),
                total.as_secs(),
                phase.title()
            ),
            format!(
                "  requests/s {:>4.0}   ok {:>5.1} %   fallback {:>5.1} %   errors {:>5.1} %   callers' mistakes {:>4.1} %",
                c.sent as f64 / secs,
                pct(c.ok),
                pct(c.fallback),
                pct(c.error),
                pct(c.client)
            ),
            format!("  retries in the last {secs}s: {retried}"),
            "  UPSTREAM    BREAKER".to_owned(),
        ];
        let mut all: Vec<String> = lines.to_vec();
        for (u, s) in breakers {
            all.push(format!("  {u:<11} {s}"));
        }
        for l in &all {
            out.push_str("\x1b[2K");
            out.push_str(l);
            out.push('\n');
        }
        self.drawn = all.len();
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    fn done(&self) {
        if self.tty {
            println!("  done.");
        }
    }
}
