//! Routing (which route takes the request, on the authority that will also be its upstream
//! `Host`) and the route's fault injection.

use std::sync::Arc;

use http::header::HOST;
use http::{HeaderMap, Request, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::error::{ErrorKind, ProxyError};
use crate::http::headers;
use crate::policy::fault;
use crate::record::Completion;
use crate::router::{RouteQuery, split_authority};
use crate::runtime::{RouteRt, Runtime};

use super::{ConnCtx, located};

impl Runtime {
    /// The route that takes the request (404 `route_not_found`, or 405 when only the method
    /// is wrong), and whether the request came in absolute form. The route is noted on the
    /// record; a caller its `allow` does not list is refused here (403), and so is a body
    /// declared larger than the route allows (413).
    pub(super) fn route(
        &self,
        req: &Request<Incoming>,
        listener: usize,
        conn: &ConnCtx,
        carried: headers::Carried,
        done: &mut Completion,
    ) -> Result<(Arc<RouteRt>, bool), ProxyError> {
        let identity = conn.identity.as_ref();
        let redirected_outbound = conn.redirected && self.is_outbound(listener);
        let query = route_query(req, listener, carried.host, Some(conn.destination), redirected_outbound)
            .map_err(|reason| ProxyError::new(ErrorKind::BadRequest { reason }))?;
        let absolute_form = query.absolute_form;
        let request = crate::router::Request {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        };
        let Some(route) = self.router.find(&request, &query).map(|(_, rt)| rt.clone()) else {
            let allowed = self.router.allowed_methods(&request, &query);
            let kind = if allowed.is_empty() {
                ErrorKind::RouteNotFound
            } else {
                ErrorKind::MethodNotAllowed { allowed }
            };
            return Err(ProxyError::new(kind));
        };
        done.set_route(route.record.clone());
        if let Some(allow) = &route.allow
            && !identity.is_some_and(|id| allow.admits(&id.id))
        {
            let identity = identity.map(|id| id.id.to_string());
            return Err(located(ErrorKind::Forbidden { identity }, &route));
        }
        if let Some(limit) = route.max_body_bytes
            && req.body().size_hint().lower() > limit
        {
            return Err(located(ErrorKind::PayloadTooLarge { limit }, &route));
        }
        if self.panic_path.as_deref() == Some(req.uri().path()) {
            panic!("OUTRIGGER_TEST_PANIC_PATH requested a panic for {}", req.uri().path());
        }
        Ok((route, absolute_form))
    }

    /// Whether the listener at this index is outbound.
    pub(crate) fn is_outbound(&self, listener: usize) -> bool {
        self.listeners
            .get(listener)
            .is_some_and(|l| l.role == outrigger_config::Role::Outbound)
    }
}

/// What the router looks at for `req`: the authority it is routed on (what the upstream
/// also gets as `Host`), the listener and the connection's destination.
fn route_query<B>(
    req: &Request<B>,
    listener: usize,
    carries_host: bool,
    destination: Option<std::net::SocketAddr>,
    redirected_outbound: bool,
) -> Result<RouteQuery<'_>, &'static str> {
    let absolute_form = req.version() <= Version::HTTP_11 && req.uri().authority().is_some();
    let authority = routed_authority(req, carries_host, absolute_form)?;
    let (host, port) = authority
        .map(split_authority)
        .map_or((None, None), |(h, p)| (Some(h), p));
    Ok(RouteQuery {
        listener,
        host,
        port,
        absolute_form,
        destination,
        redirected_outbound,
    })
}

/// The route's fault, if it has one and it strikes this request: a delay (waited here, not
/// counted as the proxy's overhead) and an abort (the configured status, `fault_injected`).
pub(super) async fn inject_fault(
    route: &RouteRt,
    headers: &HeaderMap,
    done: &mut Completion,
) -> Result<(), ProxyError> {
    let Some(f) = &route.fault else {
        return Ok(());
    };
    let chosen =
        fault::choose(f, headers, fastrand::f64).map_err(|reason| located(ErrorKind::BadRequest { reason }, route))?;
    if chosen.delay.is_some() || chosen.abort.is_some() {
        route.faults.inc();
        done.fault = Some(chosen.describe());
    }
    if let Some(d) = chosen.delay {
        tokio::time::sleep(d).await;
        done.waited += d;
    }
    match chosen.abort {
        Some(status) => Err(located(ErrorKind::FaultInjected { status }, route)),
        None => Ok(()),
    }
}

/// The authority a request is routed on, and the `Host` its upstream gets: the request
/// target's when it has one (absolute form, or HTTP/2's `:authority`: RFC 9112 §3.2.2,
/// RFC 9113 §8.3.1), else its one `Host` field. Two `Host` fields, an invalid one, or an
/// HTTP/1.1 request without one are malformed (RFC 9112 §3.2): the reason, for a 400.
fn routed_authority<B>(
    req: &Request<B>,
    carries_host: bool,
    absolute_form: bool,
) -> Result<Option<&str>, &'static str> {
    let mut host = None;
    if carries_host {
        let headers = req.headers();
        host = headers.get(HOST);
        // Only a map with a repeated name can hold two `Host` fields (the count is free).
        if headers.len() != headers.keys_len() && headers.get_all(HOST).iter().nth(1).is_some() {
            return Err("it has more than one Host field");
        }
    }
    let host = match host {
        Some(h) => Some(
            h.to_str()
                .ok()
                .filter(|h| headers::valid_authority(h.as_bytes()))
                .ok_or("its Host field is not a valid host[:port]")?,
        ),
        None if req.version() == Version::HTTP_11 => return Err("an HTTP/1.1 request must carry a Host field"),
        None => None,
    };
    if (absolute_form || req.version() == Version::HTTP_2)
        && let Some(a) = req.uri().authority()
    {
        return Ok(Some(a.as_str()));
    }
    Ok(host)
}
