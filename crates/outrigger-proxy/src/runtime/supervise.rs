//! Background tasks under supervision: a task that fails (panics, or returns when it should
//! not) is restarted with a growing pause, logged with why and counted in
//! `outrigger_task_restarts_total{task}`. A task that serving needs and that keeps failing
//! (3 times within a minute) turns `/readyz` red until it has run for a minute again. The
//! data path never waits on these tasks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Restarts background tasks; knows how many needed ones are failing.
#[derive(Clone)]
pub(crate) struct Supervisor {
    restarts: prometheus::IntCounterVec,
    /// Needed tasks that keep failing now (`/readyz` is red while this is not 0).
    failing: Arc<AtomicUsize>,
    /// Test hook (`OUTRIGGER_TEST_PANIC_TASK=task:times`): that task panics on its first runs,
    /// to prove a failing task is restarted while requests flow. Unset in production.
    panic_hook: Option<(String, usize)>,
}

/// Aborts the task it holds when dropped: aborting the supervisor aborts its task too.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A needed task counted as failing; stopping the task (a reload that no longer needs it)
/// uncounts it, so readiness does not stay off for a task that is gone.
struct Marked {
    failing: Arc<AtomicUsize>,
    on: bool,
}

impl Marked {
    fn set(&mut self, on: bool) {
        if on != self.on {
            self.on = on;
            if on {
                self.failing.fetch_add(1, Ordering::Relaxed);
            } else {
                self.failing.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        self.set(false);
    }
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// A task that runs this long without failing is well again.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Failures within `HEALTHY_AFTER` that make a needed task count as failing.
const FAILING_AFTER: usize = 3;

impl Supervisor {
    pub(crate) fn new(metrics: &outrigger_telemetry::Metrics) -> Self {
        let panic_hook = std::env::var("OUTRIGGER_TEST_PANIC_TASK").ok().and_then(|v| {
            let (task, times) = v.split_once(':')?;
            Some((task.to_owned(), times.parse().ok()?))
        });
        Supervisor {
            restarts: metrics.task_restarts.clone(),
            failing: Arc::new(AtomicUsize::new(0)),
            panic_hook,
        }
    }

    /// Whether every needed task is running well.
    pub(crate) fn healthy(&self) -> bool {
        self.failing.load(Ordering::Relaxed) == 0
    }

    /// Runs `make()` as task `name`, again after each failure. `needed`: serving depends on
    /// it (its repeated failure turns readiness off).
    pub(crate) fn spawn<F, Fut>(&self, name: &'static str, needed: bool, make: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let restarts = self.restarts.with_label_values(&[name]);
        let failing = self.failing.clone();
        let mut panics_left = match &self.panic_hook {
            Some((task, times)) if task == name => *times,
            _ => 0,
        };
        tokio::spawn(async move {
            let mut pause = FIRST_PAUSE;
            let mut recent: Vec<Instant> = Vec::new();
            let mut marked = Marked { failing, on: false };
            loop {
                let hook = panics_left > 0;
                panics_left = panics_left.saturating_sub(1);
                let work = make();
                let run = tokio::spawn(async move {
                    if hook {
                        panic!("OUTRIGGER_TEST_PANIC_TASK asked this task to panic");
                    }
                    work.await;
                });
                let _guard = AbortOnDrop(run.abort_handle());
                let started = Instant::now();
                let mut run = std::pin::pin!(run);
                let result = loop {
                    tokio::select! {
                        r = &mut run => break r,
                        () = tokio::time::sleep_until(started + HEALTHY_AFTER), if marked.on || pause > FIRST_PAUSE => {
                            // A minute without failing: well again.
                            pause = FIRST_PAUSE;
                            recent.clear();
                            if marked.on {
                                marked.set(false);
                                tracing::info!(kind = "task", task = name, "Background task {name} has run for a minute without failing.");
                            }
                        }
                    }
                };
                let why = match result {
                    Err(e) if e.is_cancelled() => return,
                    Err(e) => match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".to_owned()),
                        Err(_) => "it was stopped".to_owned(),
                    },
                    Ok(()) => "it ended".to_owned(),
                };
                restarts.inc();
                let now = Instant::now();
                recent.retain(|t| now.saturating_duration_since(*t) < HEALTHY_AFTER);
                recent.push(now);
                if needed && recent.len() >= FAILING_AFTER {
                    marked.set(true);
                }
                tracing::error!(
                    kind = "task",
                    task = name,
                    why = %why,
                    restart_in_ms = pause.as_millis() as u64,
                    "Background task {name} failed ({why}); restarting it in {}{}.",
                    outrigger_resilience::humanize(pause),
                    if marked.on { "; readiness is off until it runs well again" } else { "" }
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        })
    }
}
