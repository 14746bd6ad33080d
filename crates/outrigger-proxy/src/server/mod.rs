//! The running proxy's moving parts, owned in one place: the live runtime, one accept loop
//! per listener, DNS refresh per upstream, and the TLS watch. A reload (`reload.rs`) changes
//! them; the drain (`crate::Proxy::run`) stops them side by side.

pub(crate) mod reload;
pub(crate) mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use outrigger_config::{Listener, Role};
use outrigger_telemetry::Metrics;

use crate::downstream::listener::{AcceptLoop, Ended};
use crate::runtime::supervise::Supervisor;
use crate::runtime::upstream::UpstreamRt;
use crate::runtime::{LiveRuntime, Runtime};
use crate::tls::rotate::Live as LiveTls;
use source::Source;

/// One listener being served.
struct Slot {
    /// As configured (a reload compares it with the new settings).
    config: Listener,
    /// The address it is bound to (the configured one, with port 0 resolved).
    bound: SocketAddr,
    /// Its accept loop and its connections stop (gracefully) when this turns true.
    stop: watch::Sender<bool>,
    /// Asks the accept loop to give its socket back.
    handover: Option<oneshot::Sender<()>>,
    task: JoinHandle<Ended>,
}

/// The running proxy's parts.
pub(crate) struct Server {
    pub(crate) live: Arc<LiveRuntime>,
    metrics: Metrics,
    tls: LiveTls,
    supervisor: Supervisor,
    pub(crate) source: Source,
    /// The hash of the file the last reload read, applied or not: a watched file that has
    /// not changed since is not read again (a rejected file is reported once).
    last_read: Option<String>,
    slots: Vec<Slot>,
    /// Each connection holds a clone of its role's sender until it closes; dropped when the
    /// drain begins so the drain can wait for the last one.
    inbound_alive: Option<mpsc::Sender<()>>,
    outbound_alive: Option<mpsc::Sender<()>>,
    /// Requests in flight on listeners a reload removed (the drain counts what it cuts).
    retired: Vec<Arc<AtomicUsize>>,
    /// DNS refresh, one task per upstream with names, and the upstream it follows.
    dns: Vec<(Arc<UpstreamRt>, JoinHandle<()>)>,
}

impl Server {
    pub(crate) fn new(
        runtime: Runtime,
        metrics: Metrics,
        tls: LiveTls,
        supervisor: Supervisor,
        source: Source,
        alive: (mpsc::Sender<()>, mpsc::Sender<()>),
    ) -> Self {
        Server {
            live: Arc::new(LiveRuntime::from_pointee(runtime)),
            metrics,
            tls,
            supervisor,
            source,
            last_read: None,
            slots: Vec::new(),
            inbound_alive: Some(alive.0),
            outbound_alive: Some(alive.1),
            retired: Vec::new(),
            dns: Vec::new(),
        }
    }

    /// Starts the accept loop of every listener of the live config, on sockets bound in the
    /// same order.
    pub(crate) fn start_listeners(&mut self, sockets: Vec<(TcpListener, SocketAddr)>) {
        let config = self.live.load().config.clone();
        for ((socket, bound), cfg) in sockets.into_iter().zip(&config.listeners) {
            let slot = self.start(socket, bound, cfg, watch::channel(false).0);
            self.slots.push(slot);
        }
    }

    /// Starts one listener's accept loop on `socket`; its connections watch `stop`.
    fn start(&self, socket: TcpListener, bound: SocketAddr, cfg: &Listener, stop: watch::Sender<bool>) -> Slot {
        let runtime = self.live.load();
        let (name, tls) = runtime
            .listeners
            .iter()
            .find(|l| *l.name == *cfg.name)
            .map_or_else(|| (cfg.name.as_str().into(), None), |l| (l.name.clone(), l.tls.clone()));
        let alive = match cfg.role {
            Role::Inbound => self.inbound_alive.clone(),
            Role::Outbound => self.outbound_alive.clone(),
        };
        let (handover, handover_rx) = oneshot::channel();
        let accept = AcceptLoop {
            socket,
            name,
            limits: cfg.limits.clone(),
            tls,
        };
        let task = match alive {
            Some(alive) => tokio::spawn(accept.run(self.live.clone(), stop.subscribe(), handover_rx, alive)),
            // Draining already: nothing new is served.
            None => tokio::spawn(async { Ended::Stopped }),
        };
        tracing::info!(
            kind = "lifecycle",
            listener = %cfg.name,
            role = cfg.role.as_str(),
            address = %bound,
            "Listener {} ({}) is accepting on {bound}.",
            cfg.name,
            cfg.role.as_str()
        );
        Slot {
            config: cfg.clone(),
            bound,
            stop,
            handover: Some(handover),
            task,
        }
    }

    /// Resolves every upstream's DNS names once (before serving), then keeps following them.
    pub(crate) async fn start_dns(&mut self) {
        let runtime = self.live.load_full();
        for u in runtime.upstreams() {
            if u.endpoints.has_names() {
                u.endpoints.resolve().await;
            }
        }
        self.follow_dns();
    }

    /// One refresh task per upstream with DNS names in the live runtime: kept for an upstream
    /// carried over by a reload, started for a new one, stopped for one that is gone.
    fn follow_dns(&mut self) {
        let runtime = self.live.load_full();
        let wanted: Vec<&Arc<UpstreamRt>> = runtime.upstreams().iter().filter(|u| u.endpoints.has_names()).collect();
        self.dns.retain(|(u, task)| {
            let keep = wanted.iter().any(|w| Arc::ptr_eq(w, u));
            if !keep {
                task.abort();
            }
            keep
        });
        for u in wanted {
            if self.dns.iter().any(|(x, _)| Arc::ptr_eq(x, u)) {
                continue;
            }
            let every = u.config.resolve_every;
            let upstream = u.clone();
            let task = self.supervisor.spawn("dns", true, move || {
                let u = upstream.clone();
                async move {
                    let mut tick = tokio::time::interval(every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        u.endpoints.resolve().await;
                    }
                }
            });
            self.dns.push((u.clone(), task));
        }
    }

    /// The TLS watch, as a task maker for the supervisor.
    #[allow(clippy::type_complexity, reason = "a task maker: a closure returning a future")]
    pub(crate) fn tls_watch(&self) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
        self.tls.watch(std::time::Duration::from_secs(1))
    }

    /// Stops accepting on every listener of `role`; their connections close once their
    /// requests are answered (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY).
    pub(crate) fn stop(&self, role: Role) {
        for slot in self.slots.iter().filter(|s| s.config.role == role) {
            let _ = slot.stop.send(true);
        }
    }

    /// The drain has begun: no new connection will be made, so the drain may wait for the
    /// last open one.
    pub(crate) fn stop_admitting_connections(&mut self) {
        self.inbound_alive = None;
        self.outbound_alive = None;
    }

    /// Requests in flight now, on every listener (removed ones included).
    pub(crate) fn in_flight(&self) -> usize {
        let runtime = self.live.load();
        let live: usize = runtime
            .listeners
            .iter()
            .map(|l| l.in_flight.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        live + self
            .retired
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<usize>()
    }

    /// Stops every background task this server started.
    pub(crate) fn stop_tasks(&mut self) {
        for (_, task) in self.dns.drain(..) {
            task.abort();
        }
    }
}
