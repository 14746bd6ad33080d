//! Large bodies stream through with flat proxy memory, both ways.

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;

/// Bytes through the proxy in each direction: 1 GiB unless `OUTRIGGER_STREAM_MIB` says otherwise.
fn size() -> u64 {
    std::env::var("OUTRIGGER_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        << 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_and_download_stream_with_flat_memory() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(
        &[up.addr()],
        "  - {name: default, match: {path_prefix: /}, upstream: app, timeout: 300s}\n",
    ));
    let n = size();
    let rss_before = proxy.memory_kib("VmRSS");

    // Download: the upstream generates n bytes; the client counts them as they arrive.
    let resp = http1_client()
        .request(
            http::Request::get(proxy.url(&format!("/bytes/{n}")))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, n);

    // Upload: the client generates n bytes; the upstream counts them.
    static CHUNK: [u8; 65536] = [b'u'; 65536];
    let chunks = n / CHUNK.len() as u64;
    let frames =
        stream::iter((0..chunks).map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&CHUNK)))));
    let req = http::Request::post(proxy.url("/count"))
        .header("content-length", n)
        .body(StreamBody::new(frames))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&counted), n.to_string());

    let peak = proxy.memory_kib("VmHWM");
    eprintln!(
        "streamed {} MiB each way; proxy RSS before {rss_before} KiB, peak {peak} KiB",
        n >> 20
    );
    assert!(peak < 64 * 1024, "proxy peak RSS {peak} KiB is not flat (limit 64 MiB)");
}
