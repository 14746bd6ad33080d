//! outrigger's data path.
//!
//! [`Proxy::bind`] binds every listener and the admin port of a validated config;
//! [`Proxy::run`] serves until the shutdown future resolves, then drains. The request path
//! itself reads top to bottom in `path/mod.rs`; docs/architecture.md has the file map.

mod admin;
mod body;
pub mod error;
pub mod http;
pub mod policy;
mod record;
mod respond;
pub mod router;
mod runtime;

mod downstream;
mod path;
mod server;
mod sys;
mod tls;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use outrigger_config::{Config, Role};
use outrigger_telemetry::Metrics;

pub use error::{ErrorClass, ErrorKind, ProxyError};
pub use server::source::{LoadedConfig, Source, Trigger, builtin_config, hash_of, read_config};
pub use tls::{TlsError, check as check_tls};

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A certificate, key or CA file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({what}): {source}{hint}")]
pub struct BindError {
    /// Which listener (`listener 'inbound'` or `admin`).
    pub what: String,
    /// The address.
    pub address: SocketAddr,
    /// The operating system's reason.
    #[source]
    pub source: std::io::Error,
    hint: &'static str,
}

/// A bound, not yet serving, proxy.
pub struct Proxy {
    config: Config,
    metrics: Metrics,
    listeners: Vec<(TcpListener, SocketAddr)>,
    admin: (TcpListener, SocketAddr),
    tls: tls::rotate::Live,
    source: Source,
    reloads: (mpsc::Sender<Trigger>, mpsc::Receiver<Trigger>),
}

/// Asks a running proxy to read its config file again (what SIGHUP does).
#[derive(Clone, Debug)]
pub struct Reloader(mpsc::Sender<Trigger>);

impl Reloader {
    /// Asks for a reload; returns at once. Requests made while one is pending are folded into it.
    pub fn reload(&self) {
        let _ = self.0.try_send(Trigger::Signal);
    }
}

impl Proxy {
    /// Loads the TLS files and binds every listener and the admin address. Nothing is
    /// served yet.
    pub async fn bind(config: Config, metrics: Metrics) -> Result<Self, StartError> {
        let tls = tls::rotate::Live::load(&config, &metrics)?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let bound = bind(l.address, format!("listener '{}'", l.name)).await?;
            listeners.push(bound);
        }
        let admin = bind(config.admin.address, "admin".to_owned()).await?;
        // Without a file, the hash is of the settings themselves (tests, embedding programs).
        let hash = hash_of(format!("{config:?}").as_bytes());
        Ok(Proxy {
            config,
            metrics,
            listeners,
            admin,
            tls,
            source: Source { path: None, hash },
            reloads: mpsc::channel(1),
        })
    }

    /// Says where the config came from: with a file, the proxy reloads it on
    /// [`Reloader::reload`] and when the file changes.
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// A handle that asks the running proxy to reload its config (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.reloads.0.clone())
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.config
            .listeners
            .iter()
            .zip(&self.listeners)
            .map(|(l, (_, a))| (l.name.clone(), *a))
            .collect()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.1
    }

    /// Serves until `shutdown` resolves (or `POST /shutdown`), then drains: readiness goes
    /// off at once, traffic is still served for `drain.delay` (while endpoints update), then
    /// inbound listeners stop accepting; outbound listeners (the app's own calls) go on until
    /// the inbound side has closed and no outbound request came for `drain.delay`; open
    /// connections finish their requests until `drain.delay + drain.timeout` after the start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Drained {
        let Proxy {
            config,
            metrics,
            listeners,
            admin,
            tls,
            source,
            reloads: (reload_tx, mut reload_rx),
        } = self;
        let ready = Arc::new(AtomicBool::new(false));
        let mut span_export = None;
        let mut spans = None;
        if let Some(endpoint) = &config.telemetry.tracing.otlp_endpoint {
            let settings = outrigger_telemetry::spans::ExportSettings::new(
                endpoint.to_string(),
                match config.telemetry.tracing.otlp_protocol {
                    outrigger_config::OtlpProtocol::Grpc => outrigger_telemetry::spans::Protocol::Grpc,
                    outrigger_config::OtlpProtocol::HttpProtobuf => outrigger_telemetry::spans::Protocol::HttpProtobuf,
                },
                config.telemetry.service_name.clone(),
            );
            match outrigger_telemetry::spans::start(settings, &metrics) {
                Ok((queue, task)) => {
                    tracing::info!(kind = "lifecycle", endpoint = %endpoint, "Exporting spans to {endpoint} (OTLP).");
                    spans = Some(queue);
                    span_export = Some(task);
                }
                // Tracing must never cost traffic: serve without it, loudly.
                Err(e) => tracing::error!(kind = "lifecycle", "Spans will not be exported: {e}."),
            }
        }
        let routes = config.routes.len();
        let upstreams = config.upstreams.len();
        let runtime = runtime::Runtime::new(
            Arc::new(config),
            source.hash.as_str().into(),
            metrics.clone(),
            spans,
            &tls,
            None,
        );
        runtime.show_config();
        metrics.config_last_reload_success.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        // Inbound and outbound listeners stop at different times (`drain`).
        let (inbound_alive, mut inbound_alive_rx) = mpsc::channel::<()>(1);
        let (outbound_alive, mut outbound_alive_rx) = mpsc::channel::<()>(1);
        let (admin_stop, admin_stop_rx) = watch::channel(false);

        // Background tasks run supervised: restarted after a failure, counted, and (for the
        // ones serving needs) reflected in readiness.
        let supervisor = runtime::supervise::Supervisor::new(&metrics);
        let mut server = server::Server::new(
            runtime,
            metrics.clone(),
            tls,
            supervisor.clone(),
            source,
            (inbound_alive, outbound_alive),
        );
        let live = server.live.clone();
        // Resolve DNS endpoints before saying ready, then keep following them.
        server.start_dns().await;
        let mut tasks = vec![supervisor.spawn("tls_watch", true, server.tls_watch())];
        if let Some(path) = server.source.path.clone() {
            let watch = server::source::watch(path, std::time::Duration::from_secs(1), reload_tx.clone());
            tasks.push(supervisor.spawn("config_watch", false, watch));
        }
        // One summary line per second for each kind of log line that rate limiting dropped.
        let summarised = live.clone();
        tasks.push(supervisor.spawn("log_summary", false, move || {
            let live = summarised.clone();
            async move {
                let every = std::time::Duration::from_secs(1);
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    live.load().sinks.log_limiter.flush(every);
                }
            }
        }));
        // The live explanation's traffic: each route's successes, once a second.
        let counted = live.clone();
        tasks.push(supervisor.spawn("recent_traffic", false, move || {
            let live = counted.clone();
            async move {
                let mut last = std::collections::HashMap::new();
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    admin::traffic_tick(&live.load(), &mut last);
                }
            }
        }));

        let admin_shutdown = Arc::new(tokio::sync::Notify::new());
        let admin_task = tokio::spawn(admin::serve(
            admin.0,
            Arc::new(admin::AdminState {
                metrics,
                ready: ready.clone(),
                level_changes: std::sync::atomic::AtomicU64::new(0),
                shutdown: admin_shutdown.clone(),
                live: live.clone(),
                supervisor: supervisor.clone(),
            }),
            admin_stop_rx,
        ));
        tracing::info!(kind = "lifecycle", address = %admin.1, "Admin endpoints are serving on {}: /metrics /healthz /readyz /debug/log_level /debug/upstreams /debug/routes /debug/config /debug/explain /shutdown.", admin.1);
        server.start_listeners(listeners);
        ready.store(true, Ordering::Release);
        tracing::info!(kind = "lifecycle", routes, upstreams, "outrigger is ready.");

        // Reloads until a signal, or `POST /shutdown` on the admin port. A reload is not
        // interrupted: it swaps everything or nothing, and its waits are bounded.
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = admin_shutdown.notified() => break,
                Some(trigger) = reload_rx.recv() => server.reload(trigger).await,
            }
        }
        drop(reload_tx);
        ready.store(false, Ordering::Release);
        let config = live.load().config.clone();
        let has_inbound = config.listeners.iter().any(|l| l.role == Role::Inbound);
        tracing::info!(
            kind = "lifecycle",
            delay_ms = config.drain.delay.as_millis() as u64,
            timeout_ms = config.drain.timeout.as_millis() as u64,
            "Draining: readiness is off; serving for {} more while endpoints update{}.",
            error::humanize(config.drain.delay),
            if has_inbound { "" } else { " (no inbound listener)" }
        );
        let drain_started = tokio::time::Instant::now();
        let deadline = drain_started + config.drain.delay + config.drain.timeout;
        server.stop_admitting_connections();
        tokio::time::sleep(config.drain.delay).await;
        // From here on, requests that still reach an inbound connection are told to go elsewhere.
        live.load().draining.store(true, Ordering::Relaxed);
        server.stop(Role::Inbound);
        // The app may still be finishing its work, and its calls out must not fail: outbound
        // listeners accept until the inbound side has closed and no outbound request has been
        // seen for `drain.delay`, or until the drain's time is up.
        outbound_quiet(&live.load(), &config, &mut inbound_alive_rx, deadline).await;
        server.stop(Role::Outbound);
        let _ = admin_stop.send(true);
        let inbound_done = tokio::time::timeout_at(deadline, inbound_alive_rx.recv()).await.is_ok();
        let outbound_done = tokio::time::timeout_at(deadline, outbound_alive_rx.recv())
            .await
            .is_ok();
        let cut = server.in_flight();
        if inbound_done && outbound_done {
            tracing::info!(kind = "lifecycle", "Drained: every connection has finished. Exiting.");
        } else if cut == 0 {
            tracing::info!(
                kind = "lifecycle",
                "Drain timeout of {} reached with idle connections still open; no request was cut. Exiting.",
                error::humanize(config.drain.timeout)
            );
        } else {
            tracing::warn!(
                kind = "lifecycle",
                cut,
                "Drain timeout of {} reached with {cut} request{} still in flight; they are cut. Exiting with status 1.",
                error::humanize(config.drain.timeout),
                if cut == 1 { "" } else { "s" }
            );
        }
        admin_task.abort();
        tasks.iter().for_each(tokio::task::JoinHandle::abort);
        server.stop_tasks();
        if let Some(task) = span_export {
            // The last spans (the drain's own requests) get a short, bounded chance to leave.
            task.shutdown(std::time::Duration::from_secs(2)).await;
        }
        Drained { cut }
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Requests still in flight when the drain's time ran out (0: none was cut).
    pub cut: usize,
}

/// Waits until the outbound side may stop: the inbound connections have all closed and no
/// outbound request has been admitted, or been in flight, for `drain.delay`; or `deadline`.
async fn outbound_quiet(
    shared: &runtime::Runtime,
    config: &Config,
    inbound_alive: &mut mpsc::Receiver<()>,
    deadline: tokio::time::Instant,
) {
    let outbound: Vec<&runtime::ListenerRt> = shared.listeners.iter().filter(|l| l.role == Role::Outbound).collect();
    if outbound.is_empty() {
        return;
    }
    let activity = || -> (u64, usize) {
        outbound.iter().fold((0, 0), |(seen, busy), l| {
            (
                seen + l.admitted.load(Ordering::Relaxed),
                busy + l.in_flight.load(Ordering::Relaxed),
            )
        })
    };
    let mut inbound_closed = false;
    let (mut last_seen, mut quiet_since) = (activity().0, tokio::time::Instant::now());
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        let now = tick.tick().await;
        if now >= deadline {
            return;
        }
        if !inbound_closed {
            inbound_closed = matches!(inbound_alive.try_recv(), Err(mpsc::error::TryRecvError::Disconnected));
        }
        let (seen, busy) = activity();
        if seen != last_seen || busy > 0 {
            (last_seen, quiet_since) = (seen, now);
        } else if inbound_closed && now.saturating_duration_since(quiet_since) >= config.drain.delay {
            tracing::info!(
                kind = "lifecycle",
                "The app's side is quiet (no inbound connection, no outbound request for {}): outbound listeners stop accepting.",
                error::humanize(config.drain.delay)
            );
            return;
        }
    }
}

async fn bind(address: SocketAddr, what: String) -> Result<(TcpListener, SocketAddr), BindError> {
    let hint = |e: &std::io::Error| match e.kind() {
        std::io::ErrorKind::AddrInUse => " (another process is using this port: find it with `ss -ltnp`)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        _ => "",
    };
    let listener = downstream::listener::bind(address).await.map_err(|source| BindError {
        what: what.clone(),
        address,
        hint: hint(&source),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| BindError {
        what,
        address,
        hint: "",
        source,
    })?;
    Ok((listener, local))
}
