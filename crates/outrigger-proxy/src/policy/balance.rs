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
pub(crate) struct EndpointRt {
    /// Its connection pool.
    pub pool: Arc<EndpointPool>,
    in_flight: AtomicU32,
    stats: Mutex<Stats>,
}

struct Stats {
    ewma: PeakEwma,
    /// It has answered at least once: until then its estimate is a placeholder.
    sampled: bool,
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
                sampled: false,
                outlier: Outlier::default(),
                backoff_until: None,
            }),
        }
    }

    /// The latency estimate, when the endpoint has answered at least once.
    fn rtt(&self) -> Option<f64> {
        let s = lock(&self.stats);
        s.sampled.then(|| s.ewma.get().as_secs_f64())
    }

    fn load(&self) -> f64 {
        f64::from(self.in_flight.load(Ordering::Relaxed) + 1)
    }

    fn usable(&self, now: Instant, allow_backoff: bool) -> bool {
        let s = lock(&self.stats);
        !s.outlier.is_ejected(now.into_std()) && (allow_backoff || s.backoff_until.is_none_or(|t| now >= t))
    }

    /// Counts a request in flight until the returned guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Whether `b` should be picked over `a`, at random with a chance in inverse proportion to
/// its cost (latency estimate times requests in flight plus one): equal endpoints share the
/// traffic, one five times slower gets a sixth of the pairs it is in, and none is starved by
/// a passing spike. An endpoint that has not answered yet is tried first when it has nothing
/// in flight, and otherwise costed at the other's estimate, so it is judged on its own
/// figures once it has some (a fixed placeholder would be slower than any loopback peer
/// and never be tried).
fn cheaper(b: &EndpointRt, a: &EndpointRt, draw: &mut impl FnMut(usize) -> usize) -> bool {
    let (rtt_a, rtt_b) = match (a.rtt(), b.rtt()) {
        (Some(x), Some(y)) => (x, y),
        // A new endpoint with nothing in flight is tried at once.
        (Some(_), None) if b.load() == 1.0 => return true,
        (None, Some(_)) if a.load() == 1.0 => return false,
        (Some(x), None) => (x, x),
        (None, Some(y)) => (y, y),
        (None, None) => (1.0, 1.0),
    };
    let (cost_a, cost_b) = (rtt_a * a.load(), rtt_b * b.load());
    let chance_b = cost_a / (cost_a + cost_b);
    if !chance_b.is_finite() {
        return false;
    }
    (draw(1_000_000) as f64) < chance_b * 1_000_000.0
}

/// One request in flight to an endpoint.
pub(crate) struct InFlight(Arc<EndpointRt>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one upstream.
pub(crate) struct Endpoints {
    upstream: Arc<str>,
    configured: Vec<Endpoint>,
    settings: PoolSettings,
    outlier: OutlierSettings,
    current: ArcSwap<Vec<Arc<EndpointRt>>>,
    ejections: IntCounter,
    healthy: IntGauge,
}

/// What happened to an endpoint because of one result.
pub(crate) enum Health {
    /// Nothing changed.
    Unchanged,
    /// It was ejected for this long.
    Ejected(Duration),
}

impl Endpoints {
    /// Endpoints from config: IP endpoints are used as they are; DNS names are resolved by
    /// [`Endpoints::resolve`] (called once before serving and then every `resolve_every`).
    /// `previous`: the upstream's endpoints before a reload that left its connection settings
    /// alone; an endpoint still listed keeps its pool, estimate and ejection (for a DNS name,
    /// its last addresses until it is resolved again).
    pub(crate) fn new(
        cfg: &Upstream,
        tls: Option<Arc<crate::tls::rotate::LiveClient>>,
        ejections: IntCounter,
        healthy: IntGauge,
        previous: Option<&Endpoints>,
    ) -> Self {
        let settings = PoolSettings {
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool.idle_timeout,
            max_idle: cfg.pool.max_idle_per_endpoint,
            // `check` refused a server name that is neither a DNS name nor an address.
            tls: tls.map(|live| {
                let forced = cfg
                    .tls
                    .as_ref()
                    .and_then(|t| t.server_name.clone())
                    .and_then(|n| rustls_pki_types::ServerName::try_from(n).ok());
                (live, forced)
            }),
        };
        let od = &cfg.outlier_detection;
        let outlier = OutlierSettings {
            consecutive_failures: od.consecutive_failures,
            eject_for: od.eject_for,
            max_ejected_percent: od.max_ejected_percent,
        };
        let before = previous.map(|p| p.current.load_full()).unwrap_or_default();
        let mut ips: Vec<Arc<EndpointRt>> = Vec::with_capacity(cfg.endpoints.len());
        for e in &cfg.endpoints {
            match e.host.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    let addr = SocketAddr::new(ip, e.port);
                    if ips.iter().any(|x| x.pool.addr() == addr) {
                        continue;
                    }
                    let kept = before
                        .iter()
                        .find(|x| x.pool.addr() == addr && x.pool.dns_name().is_none());
                    ips.push(
                        kept.cloned()
                            .unwrap_or_else(|| Arc::new(EndpointRt::new(addr, None, settings.clone()))),
                    );
                }
                Err(_) => ips.extend(
                    before
                        .iter()
                        .filter(|x| x.pool.addr().port() == e.port && x.pool.dns_name() == Some(e.host.as_str()))
                        .cloned(),
                ),
            }
        }
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
    pub(crate) fn has_names(&self) -> bool {
        self.configured
            .iter()
            .any(|e| e.host.parse::<std::net::IpAddr>().is_err())
    }

    /// Resolves every DNS name again and replaces the endpoint set, keeping the pools and
    /// statistics of addresses that are still there. A name that fails to resolve keeps
    /// its previous addresses: a DNS hiccup must not empty an upstream.
    pub(crate) async fn resolve(&self) {
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
                            .filter(|x| x.pool.dns_name() == Some(e.host.as_str()))
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

    /// Picks an endpoint: two random candidates among the usable ones, weighed by cost.
    /// Endpoints backing off (429) are used only when nothing else is left, and `avoid` (the
    /// endpoint a retry's previous attempt failed on) only when it is the only one left.
    /// `draw(n)` gives a uniform index below `n` (the caller's random source, so a test can
    /// fix it).
    pub(crate) fn pick(
        &self,
        now: Instant,
        mut draw: impl FnMut(usize) -> usize,
        avoid: Option<&Arc<EndpointRt>>,
    ) -> Option<Arc<EndpointRt>> {
        let all = self.current.load();
        let mut usable = |allow_backoff: bool, allow_avoided: bool| -> Option<Arc<EndpointRt>> {
            let n = all.len();
            if n == 0 {
                return None;
            }
            let ok = |i: usize| {
                (allow_avoided || avoid.is_none_or(|x| !Arc::ptr_eq(x, &all[i]))) && all[i].usable(now, allow_backoff)
            };
            let first = draw(n) % n;
            let a = (0..n).map(|k| (first + k) % n).find(|&i| ok(i))?;
            let second = draw(n) % n;
            let b = (0..n).map(|k| (second + k) % n).find(|&i| i != a && ok(i));
            Some(match b {
                Some(b) if cheaper(&all[b], &all[a], &mut draw) => all[b].clone(),
                _ => all[a].clone(),
            })
        };
        usable(false, false)
            .or_else(|| usable(false, true))
            .or_else(|| usable(true, false))
            .or_else(|| usable(true, true))
    }

    /// Records an attempt's result for balancing and outlier detection. `latency` is what
    /// the balancer should learn from it: the time of an answer or of a timeout, but not of
    /// a fast failure (a refusing endpoint must not look fast).
    pub(crate) fn record(
        &self,
        now: Instant,
        ep: &EndpointRt,
        failed: bool,
        latency: Option<Duration>,
        backoff: Option<Duration>,
    ) -> Health {
        let mut s = lock(&ep.stats);
        if let Some(l) = latency {
            if !s.sampled {
                // The placeholder must not weigh on the first real figure.
                s.ewma = PeakEwma::new(l, EWMA_DECAY, now.into_std());
                s.sampled = true;
            }
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
        Health::Ejected(period)
    }

    /// Sets the healthy-endpoints gauge again when an ejection of `period` ends, even if
    /// no request looks: a future for the caller to spawn (a record call spawns nothing).
    pub(crate) fn refresh_after(&self, period: Duration) -> impl Future<Output = ()> + Send + 'static {
        let healthy = self.healthy.clone();
        let current = self.current.load_full();
        async move {
            tokio::time::sleep(period).await;
            let now = Instant::now();
            healthy.set(current.iter().filter(|e| e.usable(now, true)).count() as i64);
        }
    }

    /// What `/debug/upstreams` shows of each endpoint.
    pub(crate) fn view(&self, now: Instant) -> Vec<serde_json::Value> {
        self.current
            .load()
            .iter()
            .map(|e| {
                let s = lock(&e.stats);
                let ejected_for = s.outlier.ejected_until().map(|t| t.saturating_duration_since(now.into_std()));
                serde_json::json!({
                    "address": e.pool.label(),
                    "healthy": !s.outlier.is_ejected(now.into_std()),
                    "ejected_for_ms": ejected_for.filter(|d| !d.is_zero()).map(|d| d.as_millis() as u64),
                    "backing_off_ms": s.backoff_until.map(|t| t.saturating_duration_since(now).as_millis() as u64).filter(|ms| *ms > 0),
                    "in_flight": e.in_flight.load(Ordering::Relaxed),
                    "ewma_ms": s.sampled.then(|| (s.ewma.get().as_secs_f64() * 1e6).round() / 1e3),
                })
            })
            .collect()
    }

    /// How many endpoints there are now.
    pub(crate) fn len(&self) -> usize {
        self.current.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream of three endpoints from a config file's own reader, with the outlier rule
    /// `consecutive_failures: 1`, `eject_for: 10s`.
    fn three() -> Endpoints {
        let yaml = "listeners: [{name: in, address: 127.0.0.1:0}]\n\
                    upstreams:\n  app:\n    endpoints: [127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3]\n    \
                    outlier_detection: {consecutive_failures: 1, eject_for: 10s, max_ejected_percent: 50}\n\
                    routes: [{name: r, match: {path_prefix: /}, upstream: app}]\n";
        let config = outrigger_config::from_yaml(yaml, "t.yaml", &|_| None).expect("valid");
        let ejections = IntCounter::new("e", "e").expect("counter");
        let healthy = IntGauge::new("h", "h").expect("gauge");
        Endpoints::new(&config.upstreams[0], None, ejections, healthy, None)
    }

    fn port(e: &EndpointRt) -> String {
        e.pool.label().rsplit(':').next().unwrap_or("").to_owned()
    }

    /// The draw is the caller's: fixed candidates give a fixed choice, the cheaper of the two.
    #[tokio::test(start_paused = true)]
    async fn of_two_candidates_the_cheaper_is_picked() {
        let eps = three();
        let now = Instant::now();
        let all = eps.current.load_full();
        // Endpoint :2 answers slowly, :3 quickly.
        for _ in 0..5 {
            eps.record(now, &all[1], false, Some(Duration::from_millis(400)), None);
            eps.record(now, &all[2], false, Some(Duration::from_millis(2)), None);
        }
        // The third draw decides between the two, by their costs: the middle of its range.
        let mut draws = [1, 2, 500_000].into_iter();
        let picked = eps.pick(now, |_| draws.next().unwrap_or(0), None).expect("an endpoint");
        assert_eq!(port(&picked), "3");
        let mut draws = [2, 1, 500_000].into_iter();
        let picked = eps.pick(now, |_| draws.next().unwrap_or(0), None).expect("an endpoint");
        assert_eq!(port(&picked), "3", "whichever comes first");
    }

    /// An endpoint that failed is ejected (and reported), is not picked while ejected, and
    /// comes back when its period ends: time is tokio's, paused and advanced by the test.
    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_is_skipped_until_its_period_ends() {
        let eps = three();
        let all = eps.current.load_full();
        let now = Instant::now();
        assert!(matches!(
            eps.record(now, &all[0], true, None, None),
            Health::Ejected(p) if p == Duration::from_secs(10)
        ));
        for first in 0..3 {
            let picked = eps.pick(now, |_| first, None).expect("an endpoint");
            assert_ne!(port(&picked), "1", "the ejected endpoint is skipped");
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        let later = Instant::now();
        let picked = eps
            .pick(later, |n| if n == 3 { 0 } else { n - 1 }, None)
            .expect("an endpoint");
        assert_eq!(port(&picked), "1", "back after its period");
    }

    fn endpoints(list: &str) -> Endpoints {
        let yaml = format!(
            "listeners: [{{name: in, address: 127.0.0.1:0}}]\n\
             upstreams:\n  app:\n    endpoints: [{list}]\n\
             routes: [{{name: r, match: {{path_prefix: /}}, upstream: app}}]\n"
        );
        let config = outrigger_config::from_yaml(&yaml, "t.yaml", &|_| None).expect("valid");
        let ejections = IntCounter::new("e", "e").expect("counter");
        let healthy = IntGauge::new("h", "h").expect("gauge");
        Endpoints::new(&config.upstreams[0], None, ejections, healthy, None)
    }

    /// Sequential traffic (one request at a time) to endpoints whose latency is `answer(port)`
    /// plus a little jitter: how many of 1,000 requests each port got.
    fn share(eps: &Endpoints, answer: impl Fn(&str) -> f64) -> std::collections::HashMap<String, u32> {
        let mut got = std::collections::HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut now = Instant::now();
        for _ in 0..1000 {
            let ep = eps.pick(now, |n| rng.usize(..n), None).expect("an endpoint");
            let port = port(&ep);
            let micros = answer(&port) * (0.9 + 0.2 * rng.f64());
            now += Duration::from_micros(micros as u64);
            eps.record(now, &ep, false, Some(Duration::from_micros(micros as u64)), None);
            *got.entry(port).or_insert(0) += 1;
        }
        got
    }

    /// Two equal endpoints share sequential traffic (each 30-70 %): a new endpoint is tried,
    /// and the choice between two is weighed at random by cost. A slow one (5x) gets less.
    #[tokio::test(start_paused = true)]
    async fn equal_endpoints_share_sequential_traffic_and_a_slow_one_gets_less() {
        let got = share(&endpoints("127.0.0.1:1, 127.0.0.1:2"), |_| 200.0);
        for port in ["1", "2"] {
            let n = got.get(port).copied().unwrap_or(0);
            assert!((300..=700).contains(&n), "port {port} got {n} of 1000: {got:?}");
        }
        let got = share(&endpoints("127.0.0.1:1, 127.0.0.1:2"), |p| {
            if p == "2" { 1000.0 } else { 200.0 }
        });
        let slow = got.get("2").copied().unwrap_or(0);
        assert!(slow > 0, "the slow endpoint was tried: {got:?}");
        assert!(slow < 300, "the slow endpoint got {slow} of 1000: {got:?}");
    }

    /// A retry avoids the endpoint its previous attempt failed on while another is usable,
    /// and goes back to it when it is the only one left.
    #[tokio::test(start_paused = true)]
    async fn a_retry_avoids_the_endpoint_that_just_failed() {
        let eps = endpoints("127.0.0.1:1, 127.0.0.1:2");
        let all = eps.current.load_full();
        let now = Instant::now();
        for first in 0..2 {
            for tie in [0, 999_999] {
                let picked = eps
                    .pick(now, |n| if n == 2 { first } else { tie }, Some(&all[0]))
                    .expect("an endpoint");
                assert_eq!(port(&picked), "2");
            }
        }
        let single = endpoints("127.0.0.1:1");
        let only = single.current.load_full()[0].clone();
        let picked = single.pick(now, |_| 0, Some(&only)).expect("the only endpoint");
        assert!(Arc::ptr_eq(&picked, &only));
    }
}
