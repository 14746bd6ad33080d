//! A tonic gRPC echo service, `outrigger.testkit.Echo`, written without code generation
//! (no `protoc` on the machine): prost messages and a hand-routed service.
//!
//! | method | kind | answer |
//! |---|---|---|
//! | `Unary` | unary | the message back; or the status `fail_code` with `message` when set |
//! | `ServerStream` | server streaming | the message `repeat` times |
//! | `BidiStream` | bidirectional | every message back as it arrives |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt, stream};
use http::uri::PathAndQuery;
use tonic::server::{Grpc, NamedService, ServerStreamingService, StreamingService, UnaryService};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// What a client sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back.
    #[prost(string, tag = "1")]
    pub message: String,
    /// `ServerStream`: how many replies.
    #[prost(uint32, tag = "2")]
    pub repeat: u32,
    /// `Unary`: answer with this gRPC status code instead (0 = succeed).
    #[prost(int32, tag = "3")]
    pub fail_code: i32,
}

/// What the server sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The echoed message.
    #[prost(string, tag = "1")]
    pub message: String,
}

const SERVICE: &str = "outrigger.testkit.Echo";
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;
type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The echo service, ready for `tonic::transport::Server::add_service`.
#[derive(Clone, Default)]
pub struct EchoService;

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE;
}

struct Unary;
impl UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;
    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        let r = req.into_inner();
        Box::pin(async move {
            if r.fail_code != 0 {
                return Err(Status::new(Code::from(r.fail_code), r.message));
            }
            Ok(Response::new(EchoReply { message: r.message }))
        })
    }
}

struct ServerStream;
impl ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;
    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        let r = req.into_inner();
        Box::pin(async move {
            let replies = (0..r.repeat).map(move |i| {
                Ok(EchoReply {
                    message: format!("{} #{i}", r.message),
                })
            });
            Ok(Response::new(Box::pin(stream::iter(replies)) as ReplyStream))
        })
    }
}

struct Bidi;
impl StreamingService<EchoRequest> for Bidi {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;
    fn call(&mut self, req: Request<Streaming<EchoRequest>>) -> Self::Future {
        let incoming = req.into_inner();
        Box::pin(async move {
            let replies = incoming.map(|m| m.map(|r| EchoReply { message: r.message }));
            Ok(Response::new(Box::pin(replies) as ReplyStream))
        })
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match path.strip_prefix("/outrigger.testkit.Echo/") {
                Some("Unary") => grpc.unary(Unary, req).await,
                Some("ServerStream") => grpc.server_streaming(ServerStream, req).await,
                Some("BidiStream") => grpc.streaming(Bidi, req).await,
                _ => Status::unimplemented(format!("no method {path}")).into_http(),
            })
        })
    }
}

/// A running echo server. Stops when dropped.
pub struct EchoUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoUpstream {
    /// Starts the echo server on 127.0.0.1, port chosen by the OS.
    pub async fn start() -> EchoUpstream {
        let (listener, addr) = crate::bind_loopback().await;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoService)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        EchoUpstream { addr, task }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A client for the echo service.
#[derive(Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// Connects to `url` (e.g. `http://127.0.0.1:15001`, through outrigger).
    pub async fn connect(url: String) -> Result<EchoClient, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
        Ok(EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// A client on a channel made elsewhere (over TLS, say).
    pub fn from_channel(channel: Channel) -> EchoClient {
        EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))
    }

    /// `Unary`.
    pub async fn unary(&mut self, req: EchoRequest) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/outrigger.testkit.Echo/Unary");
        self.grpc
            .unary(Request::new(req), path, ProstCodec::<EchoRequest, EchoReply>::default())
            .await
    }

    /// `ServerStream`.
    pub async fn server_stream(&mut self, req: EchoRequest) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/outrigger.testkit.Echo/ServerStream");
        self.grpc
            .server_streaming(Request::new(req), path, ProstCodec::<EchoRequest, EchoReply>::default())
            .await
    }

    /// `BidiStream`: sends `requests` as a stream, returns the replies as they come.
    pub async fn bidi(
        &mut self,
        requests: impl Stream<Item = EchoRequest> + Send + 'static,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/outrigger.testkit.Echo/BidiStream");
        self.grpc
            .streaming(
                Request::new(requests),
                path,
                ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
    }
}
