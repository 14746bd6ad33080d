//! gRPC end to end with real tonic peers: client -> outrigger -> server, and the proxy's
//! own errors as gRPC statuses.

use outrigger_testkit::{GrpcUpstream, refused_addr};
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
