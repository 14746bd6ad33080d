//! `/debug/explain`: the explanation of `outrigger explain`, for the live process, from
//! the ring of recent failures and state changes (`outrigger_telemetry::recent`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::runtime::Runtime;

/// Answers `/debug/explain` (`?format=text` for a person, JSON otherwise). The analysis
/// runs on the blocking pool: a long ring never holds up a proxy worker.
pub(crate) async fn answer(runtime: Arc<Runtime>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return super::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let format = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("format=")))
        .unwrap_or("json")
        .to_owned();
    let lines = outrigger_telemetry::recent::snapshot();
    drop(runtime);
    let rendered = tokio::task::spawn_blocking(move || {
        let report = outrigger_explain::explain_lines("live", lines.iter().map(|l| l.as_bytes()));
        match format.as_str() {
            "text" => (false, outrigger_explain::render::text(&report)),
            "brief" => (false, outrigger_explain::render::brief(&report)),
            _ => (true, outrigger_explain::render::json(&report)),
        }
    })
    .await;
    match rendered {
        Ok((true, body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Ok((false, body)) => super::text_owned(StatusCode::OK, body),
        Err(e) => super::text_owned(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the explanation failed (a bug in outrigger): {e}\n"),
        ),
    }
}

/// Once a second: one `traffic` line per route with the successful requests since the last
/// tick, into the ring, so the live explanation knows shares and recoveries without
/// keeping every success. `last`: each route's count at the previous tick.
pub(crate) fn traffic_tick(runtime: &Runtime, last: &mut HashMap<Arc<str>, u64>) {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    for (_, route) in &runtime.routes {
        let count = route.record.succeeded.count();
        let before = last.insert(route.record.name.clone(), count).unwrap_or(count);
        let delta = count.saturating_sub(before);
        if delta == 0 {
            continue;
        }
        let line = format!(
            r#"{{"ts":"{now}","level":"info","kind":"traffic","msg":"{delta} successful requests","requests":{delta},{}}}"#,
            &*route.record.log_members
        );
        outrigger_telemetry::recent::remember(&line);
    }
}
