//! A fixed-rate (open-loop) latency probe: requests leave on a schedule whether or not the
//! previous ones have come back, and each latency is counted from its *scheduled* start, so a
//! stall shows up in the percentiles instead of silently lowering the rate (coordinated
//! omission, which closed-loop tools such as wrk suffer from).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

/// Runs the probe and returns its report as JSON text.
pub(crate) async fn run(url: &str, rate: u32, secs: u64, conns: usize) -> String {
    let uri: http::Uri = url.parse().expect("a valid URL");
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns.max(1))
        .build_http();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (u64::from(rate) * secs) as usize;
    // The first tenth warms connections up and is not counted.
    let warm = total / 10;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(Mutex::new(0usize));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let scheduled = start + period * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let uri = uri.clone();
        let latencies = latencies.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(uri).await {
                Ok(resp) => resp.status().is_success() && resp.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            if i < warm {
                return;
            }
            if ok {
                let us = scheduled.elapsed().as_micros() as u64;
                latencies.lock().unwrap().push(us);
            } else {
                *errors.lock().unwrap() += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| {
        if l.is_empty() {
            0
        } else {
            l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
        }
    };
    json!({
        "rate": rate,
        "counted": l.len(),
        "errors": *errors.lock().unwrap(),
        "achieved_rps": total as f64 / start.elapsed().as_secs_f64(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": l.last().copied().unwrap_or(0),
    })
    .to_string()
}
