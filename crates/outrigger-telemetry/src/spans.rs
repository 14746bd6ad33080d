//! Span export over OTLP: a bounded queue in front of the OpenTelemetry SDK's OTLP exporter.
//!
//! Spans are built by the proxy from its own request record (the span ids it already put on
//! the wire in `traceparent`), so there is no tracer here, only the export side: requests hand
//! finished spans to [`SpanQueue::submit`], which never waits — a full queue drops the span and
//! counts it. A thread of its own batches the queue (the OpenTelemetry batch processor's
//! settings and `OTEL_BSP_*` variables) and exports each batch with a timeout, so a collector
//! that is down or slow costs the request path nothing.
//!
//! The SDK's own `BatchSpanProcessor` is not used: it keeps its drop count private (we must
//! export it as a metric) and runs the exporter on its own thread outside the Tokio runtime
//! that the tonic exporter needs.

use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
pub use opentelemetry::{KeyValue as Attribute, Value as AttributeValue};
pub use opentelemetry_sdk::trace::SpanData as FinishedSpan;
pub use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

use crate::Metrics;

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// The collector, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Spans waiting for export; beyond this they are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub queue_size: usize,
    /// Spans per export call (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub batch_size: usize,
    /// The longest a span waits for its batch (`OTEL_BSP_SCHEDULE_DELAY`, milliseconds).
    pub interval: Duration,
    /// The longest one export call may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds).
    pub timeout: Duration,
}

impl ExportSettings {
    /// Settings with the batch processor's sizes from the standard `OTEL_BSP_*` variables
    /// (queue 2048, batch 512, 1 s delay, 10 s export timeout when unset).
    pub fn new(endpoint: String, protocol: Protocol, service_name: String) -> Self {
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        ExportSettings {
            endpoint,
            protocol,
            service_name,
            queue_size: env("OTEL_BSP_MAX_QUEUE_SIZE", 2048) as usize,
            batch_size: env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) as usize,
            interval: Duration::from_millis(env("OTEL_BSP_SCHEDULE_DELAY", 1000)),
            timeout: Duration::from_millis(env("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)),
        }
    }
}

/// The request path's side of the export: hand a finished span over, never wait. A clone
/// feeds the same export (a config reload builds a new runtime around it).
#[derive(Clone, Debug)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanData>,
    scope: InstrumentationScope,
    dropped_queue_full: IntCounter,
}

/// Stops the export task after one last flush.
#[derive(Debug)]
pub struct ExportTask {
    stop: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

/// Builds the exporter and starts the export on a thread of its own, with its own
/// single-threaded runtime: encoding and sending a batch of spans never holds up the request
/// path's event loop, whatever the collector does.
pub fn start(settings: ExportSettings, metrics: &Metrics) -> Result<(SpanQueue, ExportTask), String> {
    let (tx, rx) = mpsc::channel(settings.queue_size.max(1));
    let (stop, stopped) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let (built_tx, built) = std::sync::mpsc::channel::<Result<(), String>>();
    let exported = metrics.spans_exported.clone();
    let dropped_export_failed = metrics.spans_dropped.with_label_values(&["export_failed"]);
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = built_tx.send(Err(format!("cannot start the export runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                // Built inside this runtime: the tonic channel lives on it.
                let mut exporter = match build_exporter(&settings) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                let resource = Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build();
                exporter.set_resource(&resource);
                let _ = built_tx.send(Ok(()));
                let export = Exporting {
                    exporter,
                    batch_size: settings.batch_size.clamp(1, settings.queue_size.max(1)),
                    interval: settings.interval,
                    timeout: settings.timeout,
                    exported,
                    dropped_export_failed,
                    endpoint: settings.endpoint.clone(),
                    last_warned: None,
                    failed_since_warned: 0,
                };
                export.run(rx, stopped).await;
            });
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start the span export thread: {e}"))?;
    // Start-up only: building the exporter connects nothing yet, so this wait is short.
    built
        .recv()
        .map_err(|_| "the span export thread ended before it started".to_owned())??;
    let scope = InstrumentationScope::builder("outrigger")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    Ok((
        SpanQueue {
            tx,
            scope,
            dropped_queue_full: metrics.spans_dropped.with_label_values(&["queue_full"]),
        },
        ExportTask { stop, done },
    ))
}

fn build_exporter(s: &ExportSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match s.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(s.endpoint.clone())
            .with_timeout(s.timeout)
            .build(),
        Protocol::HttpProtobuf => {
            // The HTTP exporter posts to the endpoint as given: add the signal's path when
            // only a host was configured, as the OTLP specification does for the base endpoint.
            let endpoint = match s.endpoint.split_once("://").map(|(_, rest)| rest.split_once('/')) {
                Some(Some((_, path))) if !path.is_empty() => s.endpoint.clone(),
                _ => format!("{}/v1/traces", s.endpoint.trim_end_matches('/')),
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(s.timeout)
                .build()
        }
    };
    built.map_err(|e| format!("cannot build the OTLP exporter for {}: {e}", s.endpoint))
}

impl SpanQueue {
    /// The scope every span of ours names.
    pub fn scope(&self) -> &InstrumentationScope {
        &self.scope
    }

    /// Queues a finished span for export; drops (and counts) it when the queue is full.
    pub fn submit(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.dropped_queue_full.inc();
        }
    }
}

impl ExportTask {
    /// Exports what is queued (within `grace`) and ends the task.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(grace, self.done).await;
    }
}

struct Exporting {
    exporter: opentelemetry_otlp::SpanExporter,
    batch_size: usize,
    interval: Duration,
    timeout: Duration,
    exported: IntCounter,
    dropped_export_failed: IntCounter,
    endpoint: String,
    last_warned: Option<Instant>,
    failed_since_warned: u64,
}

impl Exporting {
    async fn run(mut self, mut rx: mpsc::Receiver<SpanData>, mut stop: oneshot::Receiver<()>) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(self.batch_size);
        loop {
            // Wait for the first span of a batch, then at most `interval` for the rest.
            tokio::select! {
                n = rx.recv_many(&mut batch, self.batch_size) => if n == 0 { return },
                _ = &mut stop => break,
            }
            let until = Instant::now() + self.interval;
            while batch.len() < self.batch_size {
                let room = self.batch_size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = tokio::time::sleep_until(until) => break,
                    _ = &mut stop => {
                        rx.close();
                        break;
                    }
                }
            }
            self.export(std::mem::replace(&mut batch, Vec::with_capacity(self.batch_size)))
                .await;
            if rx.is_closed() {
                break;
            }
        }
        // Shutting down: what is still queued goes out in batches, then the task ends.
        rx.close();
        while rx.recv_many(&mut batch, self.batch_size).await > 0 {
            self.export(std::mem::replace(&mut batch, Vec::with_capacity(self.batch_size)))
                .await;
        }
    }

    async fn export(&mut self, batch: Vec<SpanData>) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        // The exporter has its own timeout; this one also bounds a collector that accepts the
        // connection and never answers.
        let result = tokio::time::timeout(self.timeout + Duration::from_secs(1), self.exporter.export(batch)).await;
        let why = match result {
            Ok(Ok(())) => {
                self.exported.inc_by(n);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}", humantime::format_duration(self.timeout)),
        };
        self.dropped_export_failed.inc_by(n);
        self.failed_since_warned += n;
        // One warning a minute at most: a collector outage must not flood the log.
        let now = Instant::now();
        if self
            .last_warned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::warn!(
                kind = "otlp",
                endpoint = %self.endpoint,
                dropped = self.failed_since_warned,
                "Spans could not be exported to {} and were dropped ({} since the last warning): {why}. \
                 Requests are not affected; check that the collector is running and reachable.",
                self.endpoint,
                self.failed_since_warned,
            );
            self.last_warned = Some(now);
            self.failed_since_warned = 0;
        }
    }
}
