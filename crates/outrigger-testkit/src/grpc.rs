//! A real gRPC upstream: tonic's standard health service (`grpc.health.v1.Health`), which
//! has a unary call (`Check`), a server-streaming call (`Watch`) and error statuses
//! (`NOT_FOUND` for an unknown service), with no code generation needed here.

use std::net::SocketAddr;

use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// A running gRPC health server. Stops when dropped.
pub struct GrpcUpstream {
    addr: SocketAddr,
    reporter: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcUpstream {
    /// Starts the server on 127.0.0.1, port chosen by the OS, with service `outrigger.test`
    /// reported SERVING.
    pub async fn start() -> GrpcUpstream {
        let (listener, addr) = crate::bind_loopback().await;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("outrigger.test", ServingStatus::Serving)
            .await;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        GrpcUpstream { addr, reporter, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what `Check`/`Watch` report for `service` (watchers get the change streamed).
    pub async fn set_status(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }
}
