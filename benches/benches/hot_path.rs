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

/// The worst case: the request falls through every route to the last.
#[divan::bench(args = [10, 1000])]
fn route_match_fall_through(bencher: divan::Bencher, n: usize) {
    let r = router(n);
    let uri: Uri = "/not/matching/anything".parse().expect("uri");
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
        };
        divan::black_box(r.find(divan::black_box(&req), &q).is_some())
    });
}

#[divan::bench]
fn strip_hop_by_hop_and_forwarding(bencher: divan::Bencher) {
    let mut base = HeaderMap::new();
    base.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
    base.insert("x-hop", HeaderValue::from_static("1"));
    base.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    base.insert("accept", HeaderValue::from_static("*/*"));
    bencher.with_inputs(|| base.clone()).bench_local_values(|mut h| {
        outrigger_proxy::headers::strip_hop_by_hop(&mut h, false);
        outrigger_proxy::headers::add_forwarding(&mut h, [10, 0, 0, 1].into(), "http");
        h
    });
}

#[divan::bench]
fn request_id_generate(bencher: divan::Bencher) {
    let h = HeaderMap::new();
    bencher.bench_local(|| outrigger_proxy::headers::request_id(divan::black_box(&h)));
}

#[divan::bench]
fn authority_split(bencher: divan::Bencher) {
    bencher.bench_local(|| split_authority(divan::black_box("payments.internal:8080")));
}
