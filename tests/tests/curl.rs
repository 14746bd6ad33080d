//! The proxy as users first meet it: through curl, HTTP/1.1 and HTTP/2 with prior knowledge.

use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;

/// Runs curl with `args`; returns (stdout, exit code).
async fn curl(args: &[&str]) -> (String, i32) {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "30"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[tokio::test]
async fn curl_http1_and_http2_prior_knowledge_get_through() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let (out, code) = curl(&["--include", &proxy.url("/echo")]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (out, code) = curl(&["--include", "--http2-prior-knowledge", &proxy.url("/echo")]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("x-request-id: "), "{out}");
}

#[tokio::test]
async fn curl_sees_the_error_contract() {
    let proxy = Outrigger::start(&config(&[refused_addr()], DEFAULT_ROUTE));
    let (out, _) = curl(&["--include", "--http2-prior-knowledge", &proxy.url("/checkout")]).await;
    assert!(out.starts_with("HTTP/2 503"), "{out}");
    assert!(out.contains("content-type: application/problem+json"), "{out}");
    assert!(out.contains("outrigger-error: upstream_connect_failed"), "{out}");
    assert!(out.contains("\"code\":\"upstream_connect_failed\""), "{out}");
}
