//! gRPC end to end with real tonic peers: client -> outrigger -> server, and the proxy's
//! own errors as gRPC statuses.

use outrigger_testkit::{EchoClient, EchoRequest, EchoUpstream, GrpcUpstream, refused_addr};
use outrigger_tests::*;
use tokio_stream_shim::next;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

mod tokio_stream_shim {
    /// The next message of a server stream, within the test's patience.
    pub async fn next<T>(s: &mut tonic::Streaming<T>) -> Option<T> {
        tokio::time::timeout(super::PATIENCE, s.message())
            .await
            .expect("stream message in time")
            .expect("stream ok")
    }
}

fn grpc_config(endpoint: std::net::SocketAddr, protocol: &str) -> String {
    with_upstream_setting(&config(&[endpoint], DEFAULT_ROUTE), &format!("protocol: {protocol}"))
}

async fn client(proxy: &Outrigger) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(proxy.url(""))
        .unwrap()
        .connect()
        .await
        .expect("connect to outrigger");
    HealthClient::new(channel)
}

#[tokio::test]
async fn unary_streaming_and_error_statuses_pass_through() {
    let server = GrpcUpstream::start().await;
    let proxy = Outrigger::start(&grpc_config(server.addr(), "auto"));
    let mut c = client(&proxy).await;

    let ok = c
        .check(HealthCheckRequest {
            service: "outrigger.test".into(),
        })
        .await
        .expect("unary call");
    assert_eq!(ok.get_ref().status, ServingStatus::Serving as i32);

    let err = c
        .check(HealthCheckRequest {
            service: "no.such.service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the upstream's status arrives in trailers: {err:?}"
    );

    let mut watch = c
        .watch(HealthCheckRequest {
            service: "outrigger.test".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first: HealthCheckResponse = next(&mut watch).await.expect("first update");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.set_status("outrigger.test", false).await;
    let second = next(&mut watch).await.expect("second update");
    assert_eq!(
        second.status,
        ServingStatus::NotServing as i32,
        "server streaming passes updates as they happen"
    );

    let line = proxy
        .wait_for_log(|l| l["kind"] == "access" && l["path"] == "/grpc.health.v1.Health/Check")
        .await;
    assert_eq!(line["protocol"], "HTTP/2");
    assert_eq!(line["status"], 200);
}

#[tokio::test]
async fn proxy_errors_reach_grpc_clients_as_statuses() {
    let proxy = Outrigger::start(&grpc_config(refused_addr(), "http2"));
    let mut c = client(&proxy).await;
    let err = c
        .check(HealthCheckRequest { service: "x".into() })
        .await
        .expect_err("refused upstream");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("Could not connect to the service 'app'"),
        "{err:?}"
    );
    assert_eq!(
        err.metadata().get("outrigger-error").unwrap(),
        "upstream_connect_failed"
    );

    let routes = "  - {name: only-rest, match: {path_prefix: /rest}, upstream: app}\n";
    let proxy = Outrigger::start(&config(&[refused_addr()], routes));
    let mut c = client(&proxy).await;
    let err = c
        .check(HealthCheckRequest { service: "x".into() })
        .await
        .expect_err("no route");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(err.metadata().get("x-request-id").is_some());
}

#[tokio::test]
async fn echo_unary_server_streaming_and_bidi_streaming_pass_intact() {
    let server = EchoUpstream::start().await;
    let proxy = Outrigger::start(&grpc_config(server.addr(), "auto"));
    let mut c = EchoClient::connect(proxy.url("")).await.expect("connect");

    let big = "x".repeat(1 << 20);
    let reply = c
        .unary(EchoRequest {
            message: big.clone(),
            ..Default::default()
        })
        .await
        .expect("unary");
    assert_eq!(reply.get_ref().message, big, "a 1 MiB message arrives intact");

    let err = c
        .unary(EchoRequest {
            message: "card declined".into(),
            fail_code: Code::PermissionDenied as i32,
            ..Default::default()
        })
        .await
        .expect_err("requested failure");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "card declined");

    let mut replies = c
        .server_stream(EchoRequest {
            message: "tick".into(),
            repeat: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(r) = next(&mut replies).await {
        assert_eq!(r.message, format!("tick #{n}"));
        n += 1;
    }
    assert_eq!(n, 100);

    // Ping-pong: each request is sent only after the previous reply arrived, which only
    // works if the proxy streams both directions instead of buffering either.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let requests = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = c.bidi(requests).await.expect("bidi").into_inner();
    for i in 0..20 {
        tx.send(EchoRequest {
            message: format!("ping {i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(next(&mut replies).await.expect("pong").message, format!("ping {i}"));
    }
    drop(tx);
    assert!(
        next(&mut replies).await.is_none(),
        "the stream ends when the client ends it"
    );
}
