//! The admin listener: `/metrics`, `/healthz` (the process serves), `/readyz` (listeners
//! bound, config loaded, not draining), `/debug/log_level` (read or change the log level),
//! `POST /shutdown` (drain and exit, for a Job's pod). `/debug/*` and `/shutdown` answer the
//! sources in `admin.debug_from` only (default: loopback); others get 403 `forbidden`.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use outrigger_telemetry::Metrics;

mod explain;
mod views;

pub(crate) use explain::traffic_tick;
use views::{config_view, routes_view, upstreams_view, view_text};

/// What the admin endpoints report on.
pub(crate) struct AdminState {
    pub(crate) metrics: Metrics,
    pub(crate) ready: Arc<AtomicBool>,
    /// Bumped by every log-level change, so a timed revert only undoes its own change.
    pub(crate) level_changes: AtomicU64,
    /// `POST /shutdown` starts the drain through this.
    pub(crate) shutdown: Arc<tokio::sync::Notify>,
    /// The live runtime: its routes and upstreams (`/debug/routes`, `/debug/upstreams`), its
    /// config (`/debug/config`, who may use `/debug/*` and `/shutdown`, the problem `type`
    /// prefix). Loaded per request, so a reload shows at once.
    pub(crate) live: Arc<crate::runtime::LiveRuntime>,
    /// Background tasks: a needed one that keeps failing turns `/readyz` red.
    pub(crate) supervisor: crate::runtime::supervise::Supervisor,
}

pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    if req.uri().path() == "/debug/explain" {
                        let runtime = state.live.load_full();
                        if !runtime.config.admin.may_debug(peer.ip()) {
                            return Ok::<_, Infallible>(forbidden(&runtime, &req, peer.ip()));
                        }
                        return Ok(explain::answer(runtime, &req).await);
                    }
                    Ok::<_, Infallible>(answer(&state, &req, peer.ip()))
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn answer(state: &Arc<AdminState>, req: &Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let guarded = path.starts_with("/debug/") || path == "/shutdown";
    let runtime = state.live.load_full();
    if guarded && !runtime.config.admin.may_debug(peer) {
        return forbidden(&runtime, req, peer);
    }
    if path == "/debug/log_level" {
        return log_level(state, req, peer);
    }
    if matches!(path, "/debug/upstreams" | "/debug/routes" | "/debug/config") {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        let as_text = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "format=text"));
        let view = match path {
            "/debug/upstreams" => upstreams_view(&runtime),
            "/debug/routes" => routes_view(&runtime),
            _ => config_view(&runtime.config, &runtime.hash),
        };
        return if as_text {
            text_owned(StatusCode::OK, view_text(&view))
        } else {
            json(StatusCode::OK, &view)
        };
    }
    if path == "/shutdown" {
        if req.method() != Method::POST {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST /shutdown to drain and exit\n");
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return r;
        }
        tracing::warn!(kind = "lifecycle", client = %peer, "POST /shutdown from {peer}: draining, then exiting.");
        // Readiness goes off before the answer, so whoever asked sees it off at once.
        state.ready.store(false, Ordering::Release);
        state.shutdown.notify_one();
        return json(StatusCode::ACCEPTED, &serde_json::json!({ "status": "draining" }));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match path {
        "/metrics" => {
            state.metrics.ready.set(i64::from(ready(state)));
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) && !state.supervisor.healthy() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a background task serving needs keeps failing (see the `kind: task` log lines)\n",
        ),
        "/readyz" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or draining\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /debug/upstreams, /debug/routes, /debug/config, /debug/explain or /debug/log_level\n",
        ),
    }
}

/// `GET /debug/log_level` reads the level of event lines; `PUT` (or `POST`)
/// `/debug/log_level?level=debug&for=10m` changes it, and with `for` puts it back afterwards
/// (so a debugging session cannot leave a node logging at `debug` for good).
fn log_level(state: &Arc<AdminState>, req: &Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let current = outrigger_telemetry::logging::level().unwrap_or_default();
    match *req.method() {
        Method::GET | Method::HEAD => return json(StatusCode::OK, &serde_json::json!({ "level": current })),
        Method::PUT | Method::POST => {}
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, or PUT ?level=debug[&for=10m]\n",
            );
        }
    }
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let Some(level) = param("level") else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing ?level=: use one of trace, debug, info, warn, error (and optionally &for=10m)\n",
        );
    };
    let revert_after = match param("for").map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "invalid `for`: write a duration such as 30s or 10m\n",
            );
        }
    };
    let previous = match outrigger_telemetry::logging::set_level(level) {
        Ok(p) => p,
        Err(e) => return text_owned(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let change = state.level_changes.fetch_add(1, Ordering::Relaxed) + 1;
    let until = revert_after.map_or(String::new(), |d| {
        format!(" for {} (then back to {previous})", humantime::format_duration(d))
    });
    tracing::warn!(
        kind = "admin",
        from = %previous,
        to = %level,
        client = %peer,
        "Log level changed from {previous} to {level}{until} by {peer} through the admin port."
    );
    if let Some(after) = revert_after {
        let state = state.clone();
        let back_to = previous.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // A later change wins: only undo this one.
            if state.level_changes.load(Ordering::Relaxed) == change
                && outrigger_telemetry::logging::set_level(&back_to).is_ok()
            {
                tracing::warn!(kind = "admin", to = %back_to, "Log level is back to {back_to} after {}.", humantime::format_duration(after));
            }
        });
    }
    let mut body = serde_json::json!({ "level": level, "previous": previous });
    if let Some(d) = revert_after {
        body["reverts_after_s"] = d.as_secs_f64().into();
    }
    json(StatusCode::OK, &body)
}

/// 403 `forbidden` as problem+json, like every error outrigger makes.
fn forbidden(runtime: &crate::runtime::Runtime, req: &Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let err = crate::error::ProxyError::new(crate::error::ErrorKind::AdminForbidden { source: peer });
    let id = crate::http::headers::request_id(req.headers());
    let cx = crate::error::RenderContext {
        request_id: id.to_str().unwrap_or(""),
        path: req.uri().path(),
        grpc: false,
        head: req.method() == Method::HEAD,
        html: false,
        trace_id: None,
        type_base: &runtime.type_base,
    };
    crate::error::render(&err, &cx).map(Full::new)
}

/// What `/readyz` says: serving, not draining, and every needed background task well.
fn ready(state: &AdminState) -> bool {
    state.ready.load(Ordering::Acquire) && state.supervisor.healthy()
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{v}\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn text_owned(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = text(status, "");
    *r.body_mut() = Full::new(Bytes::from(body));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
