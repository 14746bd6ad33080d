//! Micro-benchmarks of per-request work: route matching and header handling.
//! Run: `cargo bench -p outrigger-benches --bench hot_path`.

use http::{HeaderMap, HeaderValue, Method, Uri};
use outrigger_proxy::router::{Request, RouteQuery, Router, split_authority};

fn main() {
    divan::main();
}

fn router(n: usize) -> Router<()> {
    let mut yaml = String::from(
        "listeners: [{name: a, address: 127.0.0.1:0}]\nupstreams: {u: {endpoints: [127.0.0.1:1]}}\nroutes:\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{name: r{i}, match: {{path_prefix: /svc{i}/, methods: [GET, POST]}}, upstream: u}}\n"
        ));
    }
    yaml.push_str("  - {name: last, match: {path_prefix: /}, upstream: u}\n");
    let config = outrigger_config::from_yaml(&yaml, "bench.yaml", &|_| None).expect("valid bench config");
    Router::new(config.routes.into_iter().map(|r| (r, Vec::new(), ())).collect())
}

/// Times `find` for a GET of `uri` over a table of `n` routes.
fn bench_find(bencher: divan::Bencher, n: usize, uri: &str) {
    let r = router(n);
    let uri: Uri = uri.parse().expect("uri");
    let headers = HeaderMap::new();
    bencher.bench_local(|| {
        let req = Request {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
        };
        let q = RouteQuery {
            listener: 0,
            host: Some("example.com"),
            port: None,
            absolute_form: false,
            destination: None,
            redirected_outbound: false,
        };
        divan::black_box(r.find(divan::black_box(&req), &q).is_some())
    });
}

/// The worst case of a list walk: the request falls through every route to the last.
#[divan::bench(args = [10, 1000])]
fn route_match_fall_through(bencher: divan::Bencher, n: usize) {
    bench_find(bencher, n, "/not/matching/anything");
}

/// A hit in the middle of the table: `/svc{n/2}/...`.
#[divan::bench(args = [10, 1000])]
fn route_match_hit_middle(bencher: divan::Bencher, n: usize) {
    bench_find(bencher, n, &format!("/svc{}/orders/42", n / 2));
}

#[divan::bench]
fn strip_hop_by_hop_and_forwarding(bencher: divan::Bencher) {
    let mut base = HeaderMap::new();
    base.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
    base.insert("x-hop", HeaderValue::from_static("1"));
    base.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    base.insert("accept", HeaderValue::from_static("*/*"));
    // Made once per client connection in the proxy.
    let forwarding = outrigger_proxy::http::headers::Forwarding::new([10, 0, 0, 1].into(), "http");
    bencher.with_inputs(|| base.clone()).bench_local_values(|mut h| {
        outrigger_proxy::http::headers::strip_hop_by_hop(&mut h, false);
        outrigger_proxy::http::added::add_forwarding(&mut h, &forwarding);
        h
    });
}

#[divan::bench]
fn request_id_generate(bencher: divan::Bencher) {
    let h = HeaderMap::new();
    bencher.bench_local(|| outrigger_proxy::http::headers::request_id(divan::black_box(&h)));
}

#[divan::bench]
fn authority_split(bencher: divan::Bencher) {
    bencher.bench_local(|| split_authority(divan::black_box("payments.internal:8080")));
}

fn breaker_settings() -> outrigger_resilience::BreakerSettings {
    outrigger_resilience::BreakerSettings {
        consecutive_failures: 5,
        failure_rate: 0.5,
        window: std::time::Duration::from_secs(10),
        min_requests: 20,
        open_for: std::time::Duration::from_secs(5),
        max_open_for: std::time::Duration::from_secs(60),
        half_open_probes: 3,
        slow_call: Some((std::time::Duration::from_secs(1), 0.8)),
    }
}

/// The breaker's success path: admit, then record a success (the pure state machine).
#[divan::bench]
fn breaker_admit_and_record_success(bencher: divan::Bencher) {
    let now = std::time::Instant::now();
    let mut b = outrigger_resilience::Breaker::new(breaker_settings(), now);
    bencher.bench_local(|| {
        if let (outrigger_resilience::Admission::Allowed(ticket), _) = b.admit(now) {
            let call = outrigger_resilience::Call {
                ticket,
                failed: false,
                took: std::time::Duration::from_millis(3),
                what: "ok",
            };
            divan::black_box(b.record(now, call));
        }
    });
}

/// The same through the proxy's shared breaker (lock + concurrency limit), from 1 and 2 threads.
#[divan::bench(threads = [1, 2])]
fn circuit_admit_and_record_success(bencher: divan::Bencher) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let cfg = outrigger_config::CircuitBreaker::default();
    let gauge = prometheus::IntGauge::new("g", "g").expect("gauge");
    let transitions =
        prometheus::IntCounterVec::new(prometheus::Opts::new("t", "t"), &["upstream", "from", "to"]).expect("counter");
    let circuit = std::sync::Arc::new(outrigger_proxy::policy::circuit::Circuit::new(
        "app",
        &cfg,
        gauge,
        transitions,
    ));
    bencher.bench(|| {
        let now = tokio::time::Instant::now();
        if let Ok(permit) = circuit.admit(now) {
            circuit.record(now, permit, false, std::time::Duration::from_millis(3), "ok");
        }
    });
}

#[divan::bench]
fn retry_budget_deposit_and_withdraw(bencher: divan::Bencher) {
    let now = std::time::Instant::now();
    let mut b = outrigger_resilience::RetryBudget::new(0.2, 10.0, now);
    bencher.bench_local(|| {
        b.deposit(now);
        divan::black_box(b.try_withdraw(now))
    });
}

#[divan::bench]
fn grpc_timeout_parse_and_format(bencher: divan::Bencher) {
    bencher.bench_local(|| {
        let d = outrigger_resilience::deadline::parse_grpc_timeout(divan::black_box(b"1500m"));
        d.map(outrigger_resilience::deadline::format_grpc_timeout)
    });
}
