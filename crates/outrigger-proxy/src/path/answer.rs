//! How a request is answered once its attempts are over: the upstream's response streamed
//! back, the route's fallback for an upstream-class failure, a normalized upstream 5xx, or
//! the error rendered for the caller.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode, Version};

use crate::error::{self, ErrorClass, ErrorKind, ProxyError, RenderContext};
use crate::http::headers::{self, X_REQUEST_ID};
use crate::policy::stale::Stale;
use crate::record::Completion;
use crate::respond::{ProxyBody, ResponseBody};
use crate::runtime::upstream::AttemptResponse;
use crate::runtime::{FallbackRt, RouteRt, Runtime};

use super::attempt::Tried;
use super::{Forward, located};

impl Runtime {
    /// The fallback and respond phases: the route's fallback stands in for an upstream-class
    /// failure or an upstream 5xx; a 5xx that is not problem+json is normalized; anything
    /// else goes back as the upstream sent it, with its body streaming.
    pub(super) fn answer(
        &self,
        done: Box<Completion>,
        fwd: &mut Forward,
        tried: Tried,
        request_id: HeaderValue,
        grpc: bool,
    ) -> Response<ResponseBody> {
        let route = fwd.route.clone();
        // --- fallback: a kept answer first (stale-if-error), then the route's fallback ---
        let answer = match tried {
            Tried::Failed(err) => {
                if err.class() == ErrorClass::Upstream {
                    if let Some(stale) = kept_answer(&route, fwd) {
                        return self.stale(done, stale, Some(err));
                    }
                    if let Some(fb) = &route.fallback {
                        return self.fallback(done, &route, fb, err.code(), Some(err));
                    }
                }
                return self.fail(done, err, grpc);
            }
            Tried::Answered(a) => a,
        };
        let status = answer.response.status();
        if status.is_server_error() {
            if let Some(stale) = kept_answer(&route, fwd) {
                let err = located(
                    ErrorKind::UpstreamError {
                        status: status.as_u16(),
                    },
                    &route,
                );
                return self.stale(done, stale, Some(err));
            }
            if let Some(fb) = &route.fallback {
                return self.fallback(done, &route, fb, "upstream_error", None);
            }
            if self.normalize_5xx && !is_problem_json(answer.response.headers()) {
                return self.normalized(done, &route, answer, grpc);
            }
        }

        // --- respond ---
        if let Some(store) = &route.stale {
            let tee = keep_answer(store, fwd, status, answer.response.headers());
            return respond(done, fwd, &route, answer, request_id, tee);
        }
        respond(done, fwd, &route, answer, request_id, None)
    }

    /// An upstream 5xx whose body is not problem+json: keep the status and headers, replace
    /// the body (it may hold stack traces, SQL, secrets) with problem+json `upstream_error`,
    /// and log only the original body's length and type.
    fn normalized(
        &self,
        mut done: Box<Completion>,
        route: &RouteRt,
        answer: AttemptResponse,
        grpc: bool,
    ) -> Response<ResponseBody> {
        let (head, _dropped_body) = answer.response.into_parts();
        let status = head.status.as_u16();
        done.upstream_body = Some((
            head.headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            head.headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ));
        let mut response = self.fail(done, located(ErrorKind::UpstreamError { status }, route), grpc);
        if !grpc {
            let mut kept = head.headers;
            headers::strip_hop_by_hop(&mut kept, false);
            for name in [
                CONTENT_LENGTH,
                CONTENT_TYPE,
                http::header::CONTENT_ENCODING,
                http::header::TRANSFER_ENCODING,
            ] {
                kept.remove(name);
            }
            for (name, value) in kept {
                if let Some(name) = name {
                    response.headers_mut().entry(name).or_insert(value);
                }
            }
        }
        response
    }

    fn fallback(
        &self,
        mut done: Box<Completion>,
        route: &RouteRt,
        fb: &FallbackRt,
        code: &'static str,
        err: Option<ProxyError>,
    ) -> Response<ResponseBody> {
        route.fallbacks.inc();
        let mut r = Response::new(ProxyBody::full(fb.body.clone()));
        *r.status_mut() = fb.status;
        *r.version_mut() = done.version;
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, fb.content_type.clone());
        h.insert(CONTENT_LENGTH, HeaderValue::from(fb.body.len()));
        h.insert("outrigger-fallback", HeaderValue::from_static(code));
        h.insert(X_REQUEST_ID, done.request_id.clone());
        done.fallback = Some(code);
        degraded(done, r, err)
    }

    /// A kept answer served for an upstream-class failure: as the upstream last sent it,
    /// with its `Age` and `outrigger-fallback: stale`.
    fn stale(&self, mut done: Box<Completion>, stale: Stale, err: Option<ProxyError>) -> Response<ResponseBody> {
        let age = stale.age.as_secs();
        let mut r = Response::new(ProxyBody::full(stale.body));
        *r.status_mut() = stale.status;
        *r.version_mut() = done.version;
        *r.headers_mut() = stale.headers;
        let h = r.headers_mut();
        h.insert(http::header::AGE, HeaderValue::from(age));
        h.insert("outrigger-fallback", HeaderValue::from_static("stale"));
        h.insert(X_REQUEST_ID, done.request_id.clone());
        done.fallback = Some("stale");
        done.stale_age = Some(age);
        degraded(done, r, err)
    }

    pub(super) fn fail(&self, mut done: Box<Completion>, err: ProxyError, grpc: bool) -> Response<ResponseBody> {
        let cx = RenderContext {
            request_id: done.request_id.to_str().unwrap_or(""),
            path: done.uri.path(),
            grpc,
            head: done.method == Method::HEAD,
            html: done.wants_html,
            trace_id: Some(done.trace.trace_id_hex()),
            type_base: &self.type_base,
        };
        let mut response = error::render(&err, &cx);
        *response.version_mut() = done.version;
        let (mut parts, body) = response.into_parts();
        if matches!(err.kind, ErrorKind::BadRequest { .. } | ErrorKind::ShuttingDown)
            && done.version <= Version::HTTP_11
        {
            // After a malformed request the rest of the connection cannot be trusted.
            parts
                .headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ErrorKind::Internal { context } = &err.kind {
            self.metrics.internal_errors.inc();
            tracing::error!(kind = "internal", request_id = %done.request_id.to_str().unwrap_or(""), context = %context,
                "Bug in outrigger while serving {} {}: {context}. The request was answered 500; please report this line.", done.method, done.uri.path());
        }
        done.status = Some(parts.status.as_u16());
        done.error = Some(err);
        Response::from_parts(parts, ResponseBody::new(ProxyBody::rendered(body), Some(done)))
    }

    /// The answer to a request whose handler panicked: 500 internal, counted and logged at
    /// error level. The connection and the process carry on.
    pub(crate) fn panicked(
        &self,
        request_id: &HeaderValue,
        version: Version,
        panic: &(dyn std::any::Any + Send),
    ) -> Response<ResponseBody> {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        self.metrics.internal_errors.inc();
        tracing::error!(kind = "internal", request_id = %request_id.to_str().unwrap_or(""), panic = %what,
            "Bug in outrigger: a request handler panicked ({what}). The request was answered 500 and the proxy keeps serving; please report this line.");
        let err = ProxyError::new(ErrorKind::internal(what));
        let cx = RenderContext {
            request_id: request_id.to_str().unwrap_or(""),
            path: "",
            grpc: false,
            head: false,
            html: false,
            trace_id: None,
            type_base: &self.type_base,
        };
        let mut response = error::render(&err, &cx);
        *response.version_mut() = version;
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, ResponseBody::new(ProxyBody::rendered(body), None))
    }
}

/// The respond phase: the upstream's head and its body, streaming. Inlined in both calls
/// so the one without a copy to keep (`tee: None`, every route without `stale_if_error`)
/// carries none of its code.
#[inline(always)]
fn respond(
    mut done: Box<Completion>,
    fwd: &mut Forward,
    route: &RouteRt,
    answer: AttemptResponse,
    request_id: HeaderValue,
    tee: Option<Box<crate::policy::stale::Tee>>,
) -> Response<ResponseBody> {
    let status = answer.response.status();
    // The request's head is done with: its map serves a later response ([`headers::spare_map`]).
    headers::recycle_map(std::mem::take(&mut fwd.parts.headers));
    let mut response = answer.response;
    if let Some(client_upgrade) = fwd
        .client_upgrade
        .take()
        .filter(|_| status == StatusCode::SWITCHING_PROTOCOLS)
        && let Some(upstream_upgrade) = response.body_mut().take_upgrade()
    {
        tokio::spawn(crate::respond::tunnel(
            client_upgrade,
            upstream_upgrade,
            route.upstream.name.clone(),
        ));
    }
    let (mut head, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut head.headers, status == StatusCode::SWITCHING_PROTOCOLS);
    head.headers.insert(X_REQUEST_ID, request_id);
    head.version = done.version;
    done.status = Some(status.as_u16());
    done.head_at = Some(done.started().elapsed());
    let body = ResponseBody::upstream(body, done, tee);
    let body = if fwd.target.grpc_timeout.is_some() {
        body.with_deadline(fwd.target.deadline, fwd.target.budget)
    } else {
        body
    };
    Response::from_parts(head, body)
}

/// The route's kept answer to this request (stale-if-error), if it has one to give.
#[cold]
fn kept_answer(route: &RouteRt, fwd: &Forward) -> Option<Stale> {
    let store = route.stale.as_ref()?;
    store.serve(&store.lookup(&fwd.parts)?, &fwd.parts.headers)
}

/// A copy of the upstream's answer to keep as it streams, when it may be kept. Out of line:
/// only routes with `stale_if_error` call it.
#[inline(never)]
fn keep_answer(
    store: &std::sync::Arc<crate::policy::stale::StaleStore>,
    fwd: &Forward,
    status: StatusCode,
    headers: &http::HeaderMap,
) -> Option<Box<crate::policy::stale::Tee>> {
    store.tee(store.lookup(&fwd.parts)?, &fwd.parts.headers, status, headers)
}

/// A degraded answer (a fallback or a kept answer) standing in for `err`, recorded as such;
/// without a body for HEAD.
fn degraded(mut done: Box<Completion>, r: Response<ProxyBody>, err: Option<ProxyError>) -> Response<ResponseBody> {
    done.status = Some(r.status().as_u16());
    done.error = err;
    let (head, body) = r.into_parts();
    let body = if done.method == Method::HEAD {
        ProxyBody::empty()
    } else {
        body
    };
    Response::from_parts(head, ResponseBody::new(body, Some(done)))
}

fn is_problem_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
}
