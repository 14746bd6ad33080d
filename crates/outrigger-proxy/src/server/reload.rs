//! Config reload: read and validate the file again, build the next runtime from the live
//! one, and swap it in. Everything that can fail (the file, settings that need a restart,
//! TLS files, binding a new listener address, resolving new names) happens before anything
//! changes; after that the swap cannot fail. Requests in flight finish on the runtime they
//! started with; new ones take the new one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use outrigger_config::{Config, ConfigError};

use super::source::{self, LoadedConfig, Trigger};
use super::{Server, Slot};
use crate::downstream::listener::Ended;
use crate::runtime::Runtime;

/// How long a reload waits for a new upstream's DNS names to resolve before it swaps anyway
/// (the refresh task keeps trying).
const RESOLVE_WAIT: Duration = Duration::from_secs(5);

/// Why a reload was refused; the running config stays.
enum Rejected {
    /// The file cannot be read or is invalid.
    Config(ConfigError),
    /// Settings that only a restart can change.
    NeedsRestart(Vec<String>),
    /// A certificate, key or CA file cannot be used.
    Tls(crate::TlsError),
    /// A new listener address cannot be bound.
    Bind(crate::BindError),
}

/// Where each listener of the new config gets its socket.
enum Socket {
    /// Unchanged: its accept loop goes on (index into the running slots).
    Keep(usize),
    /// Same address, other settings: its accept loop hands the socket to a new one.
    Restart(usize),
    /// A new address, bound already.
    Fresh(TcpListener, SocketAddr),
}

impl Server {
    /// Handles one reload request. Logs one `kind: reload` line either way and counts it.
    pub(crate) async fn reload(&mut self, trigger: Trigger) {
        let Some(path) = self.source.path.clone() else {
            tracing::warn!(
                kind = "reload",
                trigger = trigger.as_str(),
                "A config reload was asked for, but outrigger runs its built-in config: there is no file to read again. Start it with -c FILE to use reloads."
            );
            return;
        };
        let bytes = match source::read_bytes(&path) {
            Ok(bytes) => bytes,
            Err(e) => return self.rejected(trigger, &path, None, Rejected::Config(e)),
        };
        let file_hash = source::hash_of(&bytes);
        let seen = self.last_read.as_ref().unwrap_or(&self.source.hash);
        if trigger == Trigger::FileChanged && file_hash == *seen {
            // Touched, rewritten with the same bytes, or already tried: nothing to do.
            return;
        }
        self.last_read = Some(file_hash.clone());
        let loaded = match source::parse(&path, bytes) {
            Ok(loaded) => loaded,
            Err(e) => return self.rejected(trigger, &path, Some(&file_hash), Rejected::Config(e)),
        };
        for w in &loaded.checked.warnings {
            tracing::warn!(kind = "config", file = %w.file, line = w.pos.line, column = w.pos.column, setting = %w.path, fix = %w.fix, "Config warning: {}.", w.message);
        }
        let before = self.source.hash.clone();
        match self.apply(loaded).await {
            Ok(changes) => {
                let m = &self.metrics;
                m.config_reloads.with_label_values(&["success"]).inc();
                self.live.load().show_config();
                m.config_last_reload_success.set(unix_now());
                m.config_last_reload_successful.set(1);
                tracing::info!(
                    kind = "reload",
                    result = "success",
                    trigger = trigger.as_str(),
                    file = %path.display(),
                    hash = %self.source.hash,
                    previous_hash = %before,
                    changes = %changes,
                    "Config reloaded from {} (hash {before} -> {}): {changes}.",
                    path.display(),
                    self.source.hash
                );
            }
            Err(why) => self.rejected(trigger, &path, Some(&file_hash), why),
        }
    }

    /// Logs and counts a rejected reload. `file_hash`: the hash of the file that was refused.
    fn rejected(&self, trigger: Trigger, path: &Path, file_hash: Option<&str>, why: Rejected) {
        self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
        self.metrics.config_last_reload_successful.set(0);
        let file = path.display();
        let hash = &self.source.hash;
        let reason = match why {
            Rejected::Config(ConfigError::Invalid(diags)) => {
                for d in &diags {
                    tracing::error!(
                        kind = "reload",
                        result = "rejected",
                        file = %d.file,
                        line = d.pos.line,
                        column = d.pos.column,
                        setting = %d.path,
                        fix = %d.fix,
                        "Config reload rejected: {}:{}:{}: {}{}{} (fix: {}).",
                        d.file,
                        d.pos.line,
                        d.pos.column,
                        d.path,
                        if d.path.is_empty() { "" } else { ": " },
                        d.message,
                        d.fix
                    );
                }
                let n = diags.len();
                format!(
                    "{n} error{} in {file} (each logged above)",
                    if n == 1 { "" } else { "s" }
                )
            }
            Rejected::Config(e @ ConfigError::Read { .. }) => e.to_string().replace('\n', "; "),
            Rejected::NeedsRestart(what) => format!(
                "{} changed, which only a restart applies (restart outrigger, or put the old value back)",
                what.join(", ")
            ),
            Rejected::Tls(e) => e.to_string(),
            Rejected::Bind(e) => e.to_string(),
        };
        tracing::error!(
            kind = "reload",
            result = "rejected",
            trigger = trigger.as_str(),
            file = %file,
            hash = %hash,
            file_hash = file_hash.unwrap_or(""),
            reason = %reason,
            "Config reload rejected: {reason}. The running config (hash {hash}) stays."
        );
    }

    /// Validates and swaps in `loaded`; returns what changed, for the log line.
    async fn apply(&mut self, loaded: LoadedConfig) -> Result<String, Rejected> {
        let old = self.live.load_full();
        let config = loaded.checked.config;
        let restart = needs_restart(&old.config, &config);
        if !restart.is_empty() {
            return Err(Rejected::NeedsRestart(restart));
        }
        let mut tls = self.tls.next(&config, &self.metrics).map_err(Rejected::Tls)?;
        let sockets = self.plan_sockets(&config).await?;
        let runtime = Runtime::new(
            Arc::new(config),
            loaded.hash.as_str().into(),
            self.metrics.clone(),
            old.sinks.spans.clone(),
            &tls,
            Some(&old),
        );
        for u in runtime.upstreams() {
            let new = !old.upstreams.iter().any(|o| Arc::ptr_eq(o, u));
            if new && u.endpoints.has_names() {
                let _ = tokio::time::timeout(RESOLVE_WAIT, u.endpoints.resolve()).await;
            }
        }
        let mut changes = describe(&old, &runtime);

        // --- from here on nothing fails ---
        let runtime = Arc::new(runtime);
        self.live.store(runtime.clone());
        tls.commit(&self.metrics);
        self.tls = tls;
        self.source.hash = loaded.hash;
        changes.extend(self.switch_listeners(&old, &runtime, sockets).await);
        self.follow_dns();
        for gone in old
            .upstreams
            .iter()
            .filter(|o| !runtime.upstreams.iter().any(|u| u.name == o.name))
        {
            // Gauges of an upstream that no longer exists would hold their last value (an
            // open breaker) forever, and alerts on them would never resolve.
            let m = &self.metrics;
            let _ = m.breaker_state.remove_label_values(&[&gone.name]);
            let _ = m.endpoints_healthy.remove_label_values(&[&gone.name]);
            let _ = m.latency_inflation.remove_label_values(&[&gone.name]);
        }
        let level = runtime.config.telemetry.logs.level;
        if level != old.config.telemetry.logs.level
            && let Err(e) = outrigger_telemetry::logging::set_level(level.as_str())
        {
            tracing::warn!(kind = "reload", "The new log level could not be applied: {e}.");
        }
        if changes.is_empty() {
            changes.push("no setting changed".to_owned());
        }
        changes.extend(kept_note(&old, &runtime));
        Ok(changes.join("; "))
    }

    /// Decides where each listener of `config` gets its socket, binding new addresses now (a
    /// new address binds before the old one closes; one that cannot be bound rejects the
    /// reload).
    async fn plan_sockets(&self, config: &Config) -> Result<Vec<Socket>, Rejected> {
        let mut plan = Vec::with_capacity(config.listeners.len());
        let mut taken = vec![false; self.slots.len()];
        for l in &config.listeners {
            let same_name = self.slots.iter().position(|s| s.config.name == l.name);
            // A renamed listener on the same address takes over the old one's socket.
            let renamed = || {
                self.slots.iter().enumerate().position(|(i, s)| {
                    !taken[i]
                        && s.config.address == l.address
                        && !config.listeners.iter().any(|n| n.name == s.config.name)
                })
            };
            let socket = match same_name {
                Some(i) if self.slots[i].config.address == l.address => {
                    if self.slots[i].config == *l {
                        Socket::Keep(i)
                    } else {
                        Socket::Restart(i)
                    }
                }
                _ => match renamed() {
                    Some(i) => Socket::Restart(i),
                    None => {
                        let (socket, bound) = crate::bind(l.address, format!("listener '{}'", l.name))
                            .await
                            .map_err(Rejected::Bind)?;
                        Socket::Fresh(socket, bound)
                    }
                },
            };
            if let Socket::Keep(i) | Socket::Restart(i) = socket {
                taken[i] = true;
            }
            plan.push(socket);
        }
        Ok(plan)
    }

    /// Moves the listeners to the new config: kept ones go on, changed ones restart on their
    /// socket, new ones start, and the rest stop accepting (their connections close once
    /// their requests are answered). Returns what changed.
    async fn switch_listeners(&mut self, old: &Runtime, new: &Runtime, plan: Vec<Socket>) -> Vec<String> {
        let mut notes = Vec::new();
        let mut running: Vec<Option<Slot>> = std::mem::take(&mut self.slots).into_iter().map(Some).collect();
        let config = new.config.clone();
        for (l, socket) in config.listeners.iter().zip(plan) {
            match socket {
                Socket::Keep(i) => {
                    if let Some(slot) = running[i].take() {
                        self.slots.push(slot);
                    }
                }
                Socket::Restart(i) => {
                    let Some(mut slot) = running[i].take() else { continue };
                    if let Some(handover) = slot.handover.take() {
                        let _ = handover.send(());
                    }
                    let socket = match (&mut slot.task).await {
                        Ok(Ended::HandedOver(socket)) => Some(socket),
                        _ => None,
                    };
                    let renamed = slot.config.name != l.name;
                    notes.push(if renamed {
                        format!("listener {} renamed {} on {}", slot.config.name, l.name, slot.bound)
                    } else {
                        format!("listener {} settings changed (same socket)", l.name)
                    });
                    let stop = if renamed {
                        // The old name's connections close; their clients reconnect.
                        let _ = slot.stop.send(true);
                        self.retire(old, &slot.config.name);
                        watch::channel(false).0
                    } else {
                        slot.stop
                    };
                    let bound = slot.bound;
                    let socket = match socket {
                        Some(s) => Some((s, bound)),
                        // Its loop had ended (it should not): bind the address again.
                        None => crate::bind(l.address, format!("listener '{}'", l.name)).await.ok(),
                    };
                    match socket {
                        Some((socket, bound)) => {
                            let slot = self.start(socket, bound, l, stop);
                            self.slots.push(slot);
                        }
                        None => tracing::error!(
                            kind = "reload",
                            listener = %l.name,
                            "Listener {} could not be restarted on {}: it is not accepting. Restart outrigger.",
                            l.name,
                            l.address
                        ),
                    }
                }
                Socket::Fresh(socket, bound) => {
                    let moved_from = running
                        .iter()
                        .flatten()
                        .find(|s| s.config.name == l.name)
                        .map(|s| s.bound);
                    notes.push(match moved_from {
                        Some(from) => format!("listener {} moved {from} -> {bound}", l.name),
                        None => format!("listener {} added on {bound}", l.name),
                    });
                    let slot = self.start(socket, bound, l, watch::channel(false).0);
                    self.slots.push(slot);
                }
            }
        }
        for slot in running.into_iter().flatten() {
            // Removed, or moved to a new address: stop accepting here.
            let _ = slot.stop.send(true);
            let removed = !config.listeners.iter().any(|l| l.name == slot.config.name);
            if removed {
                notes.push(format!("listener {} removed (was on {})", slot.config.name, slot.bound));
                self.retire(old, &slot.config.name);
            }
            tracing::info!(
                kind = "lifecycle",
                listener = %slot.config.name,
                address = %slot.bound,
                "Listener {} stopped accepting on {}; its open connections close after their requests.",
                slot.config.name,
                slot.bound
            );
        }
        notes
    }

    /// Keeps counting the requests of a listener that is gone until they end (the drain
    /// reports what it cuts).
    fn retire(&mut self, old: &Runtime, name: &str) {
        self.retired.retain(|n| Arc::strong_count(n) > 1);
        if let Some(l) = old.listeners.iter().find(|l| *l.name == *name) {
            self.retired.push(l.in_flight.clone());
        }
    }
}

/// Settings a running proxy cannot change: the admin socket and the span exporter are set
/// up once.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut what = Vec::new();
    if old.admin.address != new.admin.address {
        what.push(format!(
            "admin.address ({} -> {})",
            old.admin.address, new.admin.address
        ));
    }
    let (a, b) = (&old.telemetry, &new.telemetry);
    if a.service_name != b.service_name {
        what.push(format!(
            "telemetry.service_name ({} -> {})",
            a.service_name, b.service_name
        ));
    }
    if a.tracing.otlp_endpoint != b.tracing.otlp_endpoint {
        what.push("telemetry.tracing.otlp_endpoint".to_owned());
    }
    if a.tracing.otlp_protocol != b.tracing.otlp_protocol {
        what.push("telemetry.tracing.otlp_protocol".to_owned());
    }
    what
}

/// What a reload changes, in words: routes added, removed and changed; each changed
/// upstream and which of its settings; how many breakers kept their state; other sections.
fn describe(old: &Runtime, new: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let (o, n) = (&old.config, &new.config);
    let route = |c: &Config, name: &str| c.routes.iter().position(|r| r.name == name);
    let added = n.routes.iter().filter(|r| route(o, &r.name).is_none()).count();
    let removed = o.routes.iter().filter(|r| route(n, &r.name).is_none()).count();
    let changed = n
        .routes
        .iter()
        .filter(|r| route(o, &r.name).is_some_and(|i| o.routes[i] != **r))
        .count();
    let common = |a: &Config, b: &Config| -> Vec<String> {
        a.routes
            .iter()
            .filter(|r| route(b, &r.name).is_some())
            .map(|r| r.name.clone())
            .collect()
    };
    if added + removed + changed > 0 {
        out.push(format!("routes +{added} -{removed} ~{changed}"));
    }
    if common(o, n) != common(n, o) {
        out.push("route match order changed".to_owned());
    }
    for u in &new.upstreams {
        let Some(before) = old.upstreams.iter().find(|x| x.name == u.name) else {
            out.push(format!("upstream {} added", u.name));
            continue;
        };
        if Arc::ptr_eq(before, u) {
            continue;
        }
        let (a, b) = (&before.config, &u.config);
        let fields: Vec<&str> = [
            ("endpoints", a.endpoints != b.endpoints),
            ("protocol", a.protocol != b.protocol),
            ("connect_timeout", a.connect_timeout != b.connect_timeout),
            ("resolve_every", a.resolve_every != b.resolve_every),
            ("tls", a.tls != b.tls),
            ("pool", a.pool != b.pool),
            ("circuit_breaker", a.circuit_breaker != b.circuit_breaker),
            ("outlier_detection", a.outlier_detection != b.outlier_detection),
        ]
        .into_iter()
        .filter_map(|(f, differs)| differs.then_some(f))
        .collect();
        if !fields.is_empty() {
            out.push(format!("upstream {} {} changed", u.name, fields.join(", ")));
        }
    }
    for u in old
        .upstreams
        .iter()
        .filter(|o| !new.upstreams.iter().any(|n| n.name == o.name))
    {
        out.push(format!("upstream {} removed", u.name));
    }
    for (section, differs) in [
        ("drain", o.drain != n.drain),
        ("admin.debug_from", o.admin.debug_from != n.admin.debug_from),
        ("errors", o.errors != n.errors),
        ("telemetry.logs", o.telemetry.logs != n.telemetry.logs),
        ("telemetry.tracing", o.telemetry.tracing != n.telemetry.tracing),
        (
            "telemetry.latency_inflation",
            o.telemetry.latency_inflation != n.telemetry.latency_inflation,
        ),
    ] {
        if differs {
            out.push(format!("{section} changed"));
        }
    }
    out
}

/// How many upstreams kept their breaker (state, history) through the reload.
fn kept_note(old: &Runtime, new: &Runtime) -> Option<String> {
    let kept = new
        .upstreams
        .iter()
        .filter(|u| old.upstreams.iter().any(|o| Arc::ptr_eq(&o.circuit, &u.circuit)))
        .count();
    (kept > 0).then(|| {
        format!(
            "breaker state kept for {kept} upstream{}",
            if kept == 1 { "" } else { "s" }
        )
    })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        outrigger_config::from_yaml(yaml, "t.yaml", &|_| None).unwrap()
    }

    #[test]
    fn restart_only_settings_are_named() {
        let a = config(
            "listeners: [{name: inbound, address: 127.0.0.1:0}]\nupstreams: {app: {endpoints: ['127.0.0.1:1']}}\nroutes: [{name: r, match: {path_prefix: /}, upstream: app}]\n",
        );
        let mut b = a.clone();
        assert!(needs_restart(&a, &b).is_empty());
        b.admin.address = "127.0.0.1:9".parse().unwrap();
        b.telemetry.service_name = "other".to_owned();
        let what = needs_restart(&a, &b);
        assert_eq!(what.len(), 2, "{what:?}");
        assert!(what[0].starts_with("admin.address"), "{what:?}");
        assert!(what[1].starts_with("telemetry.service_name"), "{what:?}");
    }
}
