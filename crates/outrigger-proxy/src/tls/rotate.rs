//! The TLS configs of a running proxy, and what keeps them current: cert-manager and
//! Kubernetes Secret volumes replace files in place (a `..data` symlink swap), so every
//! certificate, key and CA file is looked at once a second, and when one has changed (and
//! stayed the same for one more look, so a half-written pair is not read) its config is
//! rebuilt. New handshakes take the new config; open connections keep theirs. A rebuild
//! that fails keeps the previous config serving, logs the path and the reason, and counts.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{Gauge, IntCounter};
use rustls::{ClientConfig, ServerConfig};

use outrigger_config::{Config, ListenerTls, UpstreamTls};
use outrigger_telemetry::Metrics;

use super::explain::Seen;
use super::{TlsError, client, server, unix_now};

/// A listener's current server config.
pub(crate) type LiveServer = ArcSwap<ServerConfig>;

/// An upstream's current client configs, one per ALPN offer.
#[derive(Debug)]
pub(crate) struct LiveClient {
    pub(crate) http1: ArcSwap<ClientConfig>,
    pub(crate) http2: ArcSwap<ClientConfig>,
}

/// Every TLS config of a proxy, by listener and upstream index (`None`: plain).
pub(crate) struct Live {
    pub(crate) listeners: Vec<Option<Arc<LiveServer>>>,
    pub(crate) upstreams: Vec<Option<Arc<LiveClient>>>,
    /// What the watch task looks at: shared by every `Live` of the process (a reload swaps
    /// its contents when it commits).
    watched: Arc<std::sync::Mutex<Vec<Watched>>>,
    /// Built for this config and not watched yet (until [`Live::commit`]).
    fresh: Vec<Watched>,
    /// Entries of the watched list this config keeps (scope, name).
    kept: Vec<(&'static str, String)>,
}

/// The expiry gauge of an upstream: the earlier of outrigger's own client certificate and
/// the one the upstream last presented.
struct UpstreamExpiry {
    own: AtomicI64,
    presented: AtomicI64,
    gauge: Gauge,
}

impl UpstreamExpiry {
    fn update(&self) {
        let t = self
            .own
            .load(Ordering::Relaxed)
            .min(self.presented.load(Ordering::Relaxed));
        if t != i64::MAX {
            self.gauge.set(t as f64);
        }
    }
}

enum What {
    Listener {
        tls: ListenerTls,
        live: Arc<LiveServer>,
        expiry: Gauge,
        /// When the certificate in use expires (shown once the config is committed).
        not_after: i64,
    },
    Upstream {
        tls: UpstreamTls,
        live: Arc<LiveClient>,
        expiry: Arc<UpstreamExpiry>,
    },
}

/// What a file looked like: device, inode, modification time and length (following
/// symlinks, so a `..data` swap shows as a new inode); `None` when it cannot be read.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

struct Watched {
    scope: &'static str,
    name: String,
    files: Vec<PathBuf>,
    /// The files as they were when the config in use was built.
    applied: Vec<Stamp>,
    /// The files at the previous look.
    last: Vec<Stamp>,
    what: What,
    success: IntCounter,
    rejected: IntCounter,
}

impl Live {
    /// Builds every listener's and upstream's TLS config from its files: the first problem
    /// stops the start.
    pub(crate) fn load(config: &Config, metrics: &Metrics) -> Result<Live, TlsError> {
        let mut live = Live {
            listeners: Vec::new(),
            upstreams: Vec::new(),
            watched: Arc::default(),
            fresh: Vec::new(),
            kept: Vec::new(),
        }
        .next(config, metrics)?;
        live.commit(metrics);
        Ok(live)
    }

    /// The TLS configs of `config` for a reload: a listener or upstream whose `tls` settings
    /// are the same as now keeps its live config (and its watch); the others are built from
    /// their files (the first problem rejects the reload). Nothing changes for the running
    /// proxy until [`Live::commit`].
    pub(crate) fn next(&self, config: &Config, metrics: &Metrics) -> Result<Live, TlsError> {
        let now = unix_now();
        let running = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut fresh, mut kept) = (Vec::new(), Vec::new());
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let Some(tls) = &l.tls else {
                listeners.push(None);
                continue;
            };
            let same = running.iter().find_map(|w| match &w.what {
                What::Listener { tls: t, live, .. } if w.name == l.name && t == tls => Some(live.clone()),
                _ => None,
            });
            if let Some(live) = same {
                kept.push(("listener", l.name.clone()));
                listeners.push(Some(live));
                continue;
            }
            let built = server(tls, &format!("listener '{}'", l.name), now)?;
            let expiry = metrics.tls_certificate_expiry.with_label_values(&["listener", &l.name]);
            let live = Arc::new(ArcSwap::new(built.config));
            let files: Vec<PathBuf> = [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            fresh.push(Watched::new(
                "listener",
                &l.name,
                files,
                What::Listener {
                    tls: tls.clone(),
                    live: live.clone(),
                    expiry,
                    not_after: built.not_after,
                },
                metrics,
            ));
            listeners.push(Some(live));
        }
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let Some(tls) = &u.tls else {
                upstreams.push(None);
                continue;
            };
            let same = running.iter().find_map(|w| match &w.what {
                What::Upstream { tls: t, live, .. } if w.name == u.name && t == tls => Some(live.clone()),
                _ => None,
            });
            if let Some(live) = same {
                kept.push(("upstream", u.name.clone()));
                upstreams.push(Some(live));
                continue;
            }
            let expiry = Arc::new(UpstreamExpiry {
                own: AtomicI64::new(i64::MAX),
                presented: AtomicI64::new(i64::MAX),
                gauge: metrics.tls_certificate_expiry.with_label_values(&["upstream", &u.name]),
            });
            let built = client(tls, &format!("upstream '{}'", u.name), seen(&expiry))?;
            expiry.own.store(built.not_after.unwrap_or(i64::MAX), Ordering::Relaxed);
            let live = Arc::new(LiveClient {
                http1: ArcSwap::new(built.http1),
                http2: ArcSwap::new(built.http2),
            });
            let files: Vec<PathBuf> = [tls.ca.as_ref(), tls.cert.as_ref(), tls.key.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            fresh.push(Watched::new(
                "upstream",
                &u.name,
                files,
                What::Upstream {
                    tls: tls.clone(),
                    live: live.clone(),
                    expiry,
                },
                metrics,
            ));
            upstreams.push(Some(live));
        }
        Ok(Live {
            listeners,
            upstreams,
            watched: self.watched.clone(),
            fresh,
            kept,
        })
    }

    /// Makes this the TLS of the running proxy: the watch follows this config's files from
    /// now on, and the expiry gauges of what it no longer has are removed (an alert on a
    /// certificate nobody uses would be noise).
    pub(crate) fn commit(&mut self, metrics: &Metrics) {
        let mut running = self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.retain(|w| {
            let keep = self
                .kept
                .iter()
                .any(|(scope, name)| *scope == w.scope && *name == w.name);
            if !keep {
                let _ = metrics.tls_certificate_expiry.remove_label_values(&[w.scope, &w.name]);
            }
            keep
        });
        for w in self.fresh.drain(..) {
            w.show_expiry();
            running.push(w);
        }
        self.kept.clear();
    }

    /// The watch over the files, as a task maker (the supervisor starts it again after a
    /// failure): each task looks at the files every `period` and rebuilds what changed.
    /// It runs even without TLS: a reload may add some.
    #[allow(clippy::type_complexity, reason = "a task maker: a closure returning a future")]
    pub(crate) fn watch(
        &self,
        period: Duration,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
        let watched = self.watched.clone();
        move || {
            let watched = watched.clone();
            let task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // Held for one look only, never across an await.
                    let mut all = watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    for w in all.iter_mut() {
                        w.look();
                    }
                }
            });
            task
        }
    }
}

fn seen(expiry: &Arc<UpstreamExpiry>) -> Seen {
    let expiry = expiry.clone();
    Seen::new(move |not_after| {
        if expiry.presented.swap(not_after, Ordering::Relaxed) != not_after {
            expiry.update();
        }
    })
}

impl Watched {
    fn new(scope: &'static str, name: &str, files: Vec<PathBuf>, what: What, metrics: &Metrics) -> Self {
        let applied: Vec<Stamp> = files.iter().map(stamp).collect();
        Watched {
            scope,
            name: name.to_owned(),
            last: applied.clone(),
            applied,
            files,
            what,
            success: metrics
                .tls_certificate_reloads
                .with_label_values(&[scope, name, "success"]),
            rejected: metrics
                .tls_certificate_reloads
                .with_label_values(&[scope, name, "rejected"]),
        }
    }

    /// Sets the expiry gauge from the certificate in use.
    fn show_expiry(&self) {
        match &self.what {
            What::Listener { expiry, not_after, .. } => expiry.set(*not_after as f64),
            What::Upstream { expiry, .. } => expiry.update(),
        }
    }

    /// One look at the files: rebuild when they changed and have stayed so since the last look.
    fn look(&mut self) {
        let now: Vec<Stamp> = self.files.iter().map(stamp).collect();
        let settled = now == self.last;
        self.last.clone_from(&now);
        if now == self.applied || !settled {
            return;
        }
        self.applied = now;
        let scope = format!("{} '{}'", self.scope, self.name);
        let result = match &mut self.what {
            What::Listener {
                tls,
                live,
                expiry,
                not_after,
            } => server(tls, &scope, unix_now()).map(|built| {
                live.store(built.config);
                *not_after = built.not_after;
                expiry.set(built.not_after as f64);
            }),
            What::Upstream { tls, live, expiry } => client(tls, &scope, seen(expiry)).map(|built| {
                live.http1.store(built.http1);
                live.http2.store(built.http2);
                expiry.own.store(built.not_after.unwrap_or(i64::MAX), Ordering::Relaxed);
                expiry.update();
            }),
        };
        match result {
            Ok(()) => {
                self.success.inc();
                tracing::info!(
                    kind = "tls",
                    scope = self.scope,
                    name = %self.name,
                    "The TLS files of {scope} changed and were loaded; new connections use them."
                );
            }
            Err(e) => {
                self.rejected.inc();
                tracing::error!(
                    kind = "tls",
                    scope = self.scope,
                    name = %self.name,
                    setting = e.setting,
                    path = %e.path.display(),
                    reason = %e.reason,
                    "The TLS files of {scope} changed but cannot be used ({}: {}); the previous ones keep serving.",
                    e.path.display(),
                    e.reason
                );
            }
        }
    }
}
