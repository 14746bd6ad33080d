//! Rendering an error for the caller: problem+json (RFC 9457), a short HTML page for browsers,
//! or a gRPC trailers-only answer. The one place errors become bytes on the wire; the body
//! is plain bytes (empty for gRPC and `HEAD`), wrapped by the caller.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::{ErrorKind, ProxyError};

/// What the renderer needs to know about the request besides the error.
pub struct RenderContext<'a> {
    /// The request id (also in `x-request-id`).
    pub request_id: &'a str,
    /// The request path without its query, for `instance`.
    pub path: &'a str,
    /// The caller speaks gRPC: answer trailers-only.
    pub grpc: bool,
    /// `HEAD`: headers only.
    pub head: bool,
    /// The client asked for HTML only.
    pub html: bool,
    /// The request's trace id (32 hex), when known.
    pub trace_id: Option<String>,
    /// Prefix of the problem `type`.
    pub type_base: &'a str,
}

/// Renders an error as the response the caller sees: problem+json for HTTP, trailers-only
/// for gRPC. Always carries `x-request-id` and `outrigger-error`.
pub fn render(err: &ProxyError, cx: &RenderContext<'_>) -> Response<Bytes> {
    let code = err.code();
    let mut builder = Response::builder()
        .header("outrigger-error", HeaderValue::from_static(code))
        .header(crate::http::headers::X_REQUEST_ID, cx.request_id);
    if let Some(secs) = err.retry_after() {
        builder = builder.header(RETRY_AFTER, secs);
    }
    let response = if cx.grpc {
        builder
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", u16::from(err.grpc_status()))
            .header("grpc-message", percent_encode_grpc(&err.detail()))
            .body(Bytes::new())
    } else {
        let (body, content_type) = if cx.html {
            (html_page(err, cx), "text/html; charset=utf-8")
        } else {
            (problem_json(err, cx), "application/problem+json")
        };
        if let ErrorKind::MethodNotAllowed { allowed } = &err.kind {
            let list: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
            builder = builder.header(http::header::ALLOW, list.join(", "));
        }
        builder
            .status(err.status())
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, body.len())
            .body(if cx.head { Bytes::new() } else { body })
    };
    // Every header above is built from valid static parts or checked ids; should that ever
    // not hold, a bare 500 still reaches the caller instead of a dropped connection.
    response.unwrap_or_else(|_| {
        let mut r = Response::new(Bytes::new());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// A short page for browsers that asked for HTML only: the same facts, escaped.
pub(super) fn html_page(err: &ProxyError, cx: &RenderContext<'_>) -> Bytes {
    fn esc(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    }
    let status = err.status();
    Bytes::from(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\n<body><h1>{status} {title}</h1>\n<p>{detail}</p>\n<p>code: <code>{code}</code> · class: {class} · retryable: {retry} · request id: <code>{id}</code></p></body></html>\n",
        status = status.as_u16(),
        title = esc(err.title()),
        detail = esc(&err.detail()),
        code = err.code(),
        class = err.class().as_str(),
        retry = if err.retryable() { "yes" } else { "no" },
        id = esc(cx.request_id),
    ))
}

/// Whether a client asked for HTML and not JSON (a browser): `Accept: text/html`, with no
/// JSON type and no `*/*` preferred over it.
pub fn wants_html(accept: Option<&HeaderValue>) -> bool {
    let Some(a) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    a.contains("text/html") && !a.contains("json")
}

pub(super) fn problem_json(err: &ProxyError, cx: &RenderContext<'_>) -> Bytes {
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), format!("{}{}", cx.type_base, err.code()).into());
    obj.insert("title".into(), err.title().into());
    obj.insert("status".into(), err.status().as_u16().into());
    obj.insert("detail".into(), err.detail().into());
    obj.insert("instance".into(), cx.path.into());
    obj.insert("code".into(), err.code().into());
    obj.insert("class".into(), err.class().as_str().into());
    obj.insert("retryable".into(), err.retryable().into());
    obj.insert("request_id".into(), cx.request_id.into());
    if let Some(t) = &cx.trace_id {
        obj.insert("trace_id".into(), t.as_str().into());
    }
    if let Some(r) = &err.route {
        obj.insert("route".into(), r.as_str().into());
    }
    if let Some(u) = &err.upstream {
        obj.insert("upstream".into(), u.as_str().into());
    }
    if let Some(s) = err.retry_after() {
        obj.insert("retry_after_s".into(), s.into());
    }
    Bytes::from(serde_json::Value::Object(obj).to_string())
}

/// gRPC's `grpc-message` encoding: percent-encode everything outside printable ASCII and `%`.
pub(super) fn percent_encode_grpc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
