//! An upstream at run time: its endpoints' pools, round-robin choice, and the translation
//! of transport failures into [`ErrorKind`]s.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response, Version};

use outrigger_config::{Protocol, Upstream};

use crate::body::RequestBody;
use crate::error::ErrorKind;
use crate::pool::{ConnInfo, EndpointPool, PoolSettings, SendError, UpstreamBody};

/// One upstream's endpoints and how to talk to them.
pub struct UpstreamRt {
    /// The upstream's name from config.
    pub name: Arc<str>,
    endpoints: Vec<Arc<EndpointPool>>,
    next: AtomicUsize,
    protocol: Protocol,
}

/// The result of one attempt that failed.
pub struct AttemptFailure {
    /// What went wrong, as an error code.
    pub kind: ErrorKind,
    /// The connection used, when one was established.
    pub conn: Option<ConnInfo>,
}

/// The result of one attempt that got a response head.
pub struct AttemptResponse {
    /// The response, body still streaming.
    pub response: Response<UpstreamBody>,
    /// The connection used.
    pub conn: ConnInfo,
}

impl UpstreamRt {
    /// Builds the runtime form of a configured upstream. No connection is made yet.
    pub fn new(cfg: &Upstream) -> Self {
        let settings = PoolSettings {
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool.idle_timeout,
            max_idle: cfg.pool.max_idle_per_endpoint,
        };
        UpstreamRt {
            name: cfg.name.as_str().into(),
            endpoints: cfg
                .endpoints
                .iter()
                .map(|e| Arc::new(EndpointPool::new(e.host.clone(), e.port, settings.clone())))
                .collect(),
            next: AtomicUsize::new(0),
            protocol: cfg.protocol,
        }
    }

    /// Whether a request goes out over HTTP/2: always for `http2`, for gRPC under `auto`,
    /// never for a protocol upgrade (WebSocket needs HTTP/1.1).
    pub fn uses_http2(&self, grpc: bool, upgrade: bool) -> bool {
        !upgrade
            && match self.protocol {
                Protocol::Http1 => false,
                Protocol::Http2 => true,
                Protocol::Auto => grpc,
            }
    }

    /// The next endpoint in turn (round robin).
    pub fn pick(&self) -> Option<&Arc<EndpointPool>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len().max(1);
        self.endpoints.get(i)
    }

    /// Sends one attempt to `pool`. `req` must carry an origin-form URI and the client's
    /// `Host`; the HTTP/2 form (`:authority`) is derived here.
    pub async fn send_to(
        pool: &Arc<EndpointPool>,
        mut req: Request<RequestBody>,
        http2: bool,
    ) -> Result<AttemptResponse, AttemptFailure> {
        let result = if http2 {
            *req.version_mut() = Version::HTTP_2;
            let authority = req
                .headers_mut()
                .remove(http::header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_owned))
                .unwrap_or_else(|| pool.label().to_owned());
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            match http::Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(path)
                .build()
            {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => {
                    let reason = "the Host header is not a valid authority";
                    return Err(AttemptFailure {
                        kind: ErrorKind::BadRequest { reason },
                        conn: None,
                    });
                }
            }
            pool.send_http2(req).await
        } else {
            *req.version_mut() = Version::HTTP_11;
            pool.send_http1(req).await
        };
        match result {
            Ok((response, conn)) => Ok(AttemptResponse { response, conn }),
            Err(e) => Err(classify(e)),
        }
    }
}

fn classify(e: SendError) -> AttemptFailure {
    let (kind, conn) = match e {
        SendError::Connect(c) => (ErrorKind::UpstreamConnectFailed { reason: c.reason() }, None),
        SendError::Request(e, info) => {
            let kind = if e.is_parse() || e.is_parse_status() {
                ErrorKind::UpstreamProtocolError
            } else if e.is_user() && !e.is_canceled() {
                // Our side of the exchange failed: the client's body broke off mid-upload.
                ErrorKind::BadRequest {
                    reason: "the request body ended before it was complete",
                }
            } else {
                ErrorKind::UpstreamReset
            };
            (kind, Some(info))
        }
    };
    AttemptFailure { kind, conn }
}
