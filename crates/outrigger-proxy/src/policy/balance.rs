//! Choosing an endpoint: power of two choices over the healthy endpoints, each scored by
//! its latency estimate times its requests in flight (linkerd2-proxy's PeakEWMA balancer),
//! with passive outlier detection taking failing endpoints out of rotation, endpoints
//! that asked callers to back off (429, `Retry-After`) avoided for that long, and DNS names
//! re-resolved so a Kubernetes headless service's pods are followed as they change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use outrigger_config::{Endpoint, Upstream};
use outrigger_resilience::outlier::max_ejectable;
use outrigger_resilience::{Outlier, OutlierSettings, PeakEwma};

use crate::upstream::pool::{EndpointPool, PoolSettings};

/// The latency assumed for an endpoint that has not answered yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How quickly the latency estimate forgets.
const EWMA_DECAY: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One endpoint address and what the balancer knows about it.
pub struct EndpointRt {
    /// Its connection pool.
    pub pool: Arc<EndpointPool>,
    in_flight: AtomicU32,
    stats: Mutex<Stats>,
}

struct Stats {
    ewma: PeakEwma,
    outlier: Outlier,
    backoff_until: Option<Instant>,
}

impl EndpointRt {
    fn new(addr: SocketAddr, name: Option<&str>, settings: PoolSettings) -> Self {
        EndpointRt {
            pool: Arc::new(EndpointPool::new(addr, name, settings)),
            in_flight: AtomicU32::new(0),
            stats: Mutex::new(Stats {
                ewma: PeakEwma::new(DEFAULT_RTT, EWMA_DECAY, Instant::now().into_std()),
                outlier: Outlier::default(),
                backoff_until: None,
            }),
        }
    }

    fn cost(&self) -> f64 {
        let rtt = lock(&self.stats).ewma.get().as_secs_f64();
        rtt * f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    fn usable(&self, now: Instant, allow_backoff: bool) -> bool {
        let s = lock(&self.stats);
        !s.outlier.is_ejected(now.into_std()) && (allow_backoff || s.backoff_until.is_none_or(|t| now >= t))
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One request in flight to an endpoint.
pub struct InFlight(Arc<EndpointRt>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one upstream.
pub struct Endpoints {
    upstream: Arc<str>,
    configured: Vec<Endpoint>,
    settings: PoolSettings,
    outlier: OutlierSettings,
    current: ArcSwap<Vec<Arc<EndpointRt>>>,
    ejections: IntCounter,
    healthy: IntGauge,
}

/// What happened to an endpoint because of one result.
pub enum Health {
    /// Nothing changed.
    Unchanged,
    /// It was ejected for this long.
    Ejected(Duration),
}

impl Endpoints {
    /// Endpoints from config: IP endpoints are used as they are; DNS names are resolved by
    /// [`Endpoints::resolve`] (called once before serving and then every `resolve_every`).
    pub fn new(cfg: &Upstream, ejections: IntCounter, healthy: IntGauge) -> Self {
        let settings = PoolSettings {
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool.idle_timeout,
            max_idle: cfg.pool.max_idle_per_endpoint,
        };
        let od = &cfg.outlier_detection;
        let outlier = OutlierSettings {
            consecutive_failures: od.consecutive_failures,
            eject_for: od.eject_for,
            max_ejected_percent: od.max_ejected_percent,
        };
        let ips: Vec<Arc<EndpointRt>> = cfg
            .endpoints
            .iter()
            .filter_map(|e| {
                e.host
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| Arc::new(EndpointRt::new(SocketAddr::new(ip, e.port), None, settings.clone())))
            })
            .collect();
        healthy.set(ips.len() as i64);
        Endpoints {
            upstream: cfg.name.as_str().into(),
            configured: cfg.endpoints.clone(),
            settings,
            outlier,
            current: ArcSwap::from_pointee(ips),
            ejections,
            healthy,
        }
    }

    /// Whether any endpoint is a DNS name (and so needs re-resolving).
    pub fn has_names(&self) -> bool {
        self.configured
            .iter()
            .any(|e| e.host.parse::<std::net::IpAddr>().is_err())
    }

    /// Resolves every DNS name again and replaces the endpoint set, keeping the pools and
    /// statistics of addresses that are still there. A name that fails to resolve keeps
    /// its previous addresses: a DNS hiccup must not empty an upstream.
    pub async fn resolve(&self) {
        let old = self.current.load_full();
        let mut next: Vec<Arc<EndpointRt>> = Vec::with_capacity(old.len());
        for e in &self.configured {
            let addrs: Vec<SocketAddr> = match e.host.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, e.port)],
                Err(_) => match tokio::net::lookup_host((e.host.as_str(), e.port)).await {
                    Ok(found) => found.collect(),
                    Err(err) => {
                        tracing::warn!(kind = "dns", upstream = %self.upstream, name = %e.host, error = %err,
                            "Could not resolve {} for upstream '{}'; keeping its previous addresses.", e.host, self.upstream);
                        old.iter()
                            .filter(|x| x.pool.label().ends_with(&format!("({})", e.host)))
                            .map(|x| x.pool.addr())
                            .collect()
                    }
                },
            };
            for addr in addrs {
                if next.iter().any(|x| x.pool.addr() == addr) {
                    continue;
                }
                let kept = old.iter().find(|x| x.pool.addr() == addr).cloned();
                let name = e.host.parse::<std::net::IpAddr>().is_err().then_some(e.host.as_str());
                next.push(kept.unwrap_or_else(|| Arc::new(EndpointRt::new(addr, name, self.settings.clone()))));
            }
        }
        let changed = next.len() != old.len() || next.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            let list: Vec<String> = next.iter().map(|x| x.pool.label().to_owned()).collect();
            tracing::info!(kind = "dns", upstream = %self.upstream, endpoints = %list.join(", "),
                "Upstream '{}' now has {} endpoint(s): {}.", self.upstream, next.len(), list.join(", "));
            self.current.store(Arc::new(next));
        }
        self.update_healthy(Instant::now());
    }

    fn update_healthy(&self, now: Instant) {
        let n = self.current.load().iter().filter(|e| e.usable(now, true)).count();
        self.healthy.set(n as i64);
    }

    /// Picks an endpoint: two random candidates among the usable ones, the cheaper wins.
    /// Endpoints backing off (429) are used only when nothing else is left.
    pub fn pick(&self, now: Instant) -> Option<Arc<EndpointRt>> {
        let all = self.current.load();
        let usable = |allow_backoff: bool| -> Option<Arc<EndpointRt>> {
            let n = all.len();
            if n == 0 {
                return None;
            }
            let first = fastrand::usize(..n);
            let a = (0..n)
                .map(|k| (first + k) % n)
                .find(|&i| all[i].usable(now, allow_backoff))?;
            let second = fastrand::usize(..n);
            let b = (0..n)
                .map(|k| (second + k) % n)
                .find(|&i| i != a && all[i].usable(now, allow_backoff));
            Some(match b {
                Some(b) if all[b].cost() < all[a].cost() => all[b].clone(),
                _ => all[a].clone(),
            })
        };
        usable(false).or_else(|| usable(true))
    }

    /// Records an attempt's result for balancing and outlier detection. `latency` is what
    /// the balancer should learn from it: the time of an answer or of a timeout, but not of
    /// a fast failure (a refusing endpoint must not look fast).
    pub fn record(
        &self,
        now: Instant,
        ep: &EndpointRt,
        failed: bool,
        latency: Option<Duration>,
        backoff: Option<Duration>,
    ) -> Health {
        let mut s = lock(&ep.stats);
        if let Some(l) = latency {
            s.ewma.observe(l, now.into_std());
        }
        if let Some(b) = backoff {
            s.backoff_until = Some(now + b);
        }
        let earned = s.outlier.record(now.into_std(), failed, &self.outlier);
        drop(s);
        if !earned {
            return Health::Unchanged;
        }
        let all = self.current.load();
        let ejected = all
            .iter()
            .filter(|e| lock(&e.stats).outlier.is_ejected(now.into_std()))
            .count();
        if ejected >= max_ejectable(all.len(), self.outlier.max_ejected_percent) {
            return Health::Unchanged;
        }
        let period = lock(&ep.stats).outlier.eject(now.into_std(), &self.outlier);
        self.ejections.inc();
        self.update_healthy(now);
        // Bring the gauge back when the ejection ends, even if no request looks.
        let healthy = self.healthy.clone();
        let current = self.current.load_full();
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            let now = Instant::now();
            healthy.set(current.iter().filter(|e| e.usable(now, true)).count() as i64);
        });
        Health::Ejected(period)
    }

    /// How many endpoints there are now.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether there are none (every name failed to resolve).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
