//! `outrigger explain` on synthetic logs of two proxies: a web sidecar calling payments,
//! whose own sidecar logs the other side of each call. Built line by line in the exact
//! shape the proxy writes (docs/logs.md), with the faults real log collections have: junk,
//! other programs' lines, a truncated file, gzip, interleaving, a skewed clock.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;

use outrigger_explain::Explainer;
use serde_json::{Value, json};

/// 2026-12-06T14:00:00Z.
const T0: i64 = 1_796_565_600_000;

fn ts(ms: i64) -> String {
    outrigger_explain::line::format_ts(ms)
}

struct Gen {
    web: Vec<String>,
    payments: Vec<String>,
    n: u64,
}

impl Gen {
    fn new() -> Self {
        Gen {
            web: Vec::new(),
            payments: Vec::new(),
            n: 0,
        }
    }

    fn id(&mut self) -> (String, String, String) {
        self.n += 1;
        (
            format!("{:032x}", 0xabc0_0000u64 + self.n),
            format!("{:016x}", 0x1000_0000u64 + self.n),
            format!("{:016x}", 0x2000_0000u64 + self.n),
        )
    }

    /// A checkout through web (critical route) to payments, whose sidecar forwards it to
    /// its app. `ok`: answered 200 in 5 ms; else timed out after 2 s with the fallback
    /// served. `skew_ms`: how far the payments host's clock runs ahead.
    fn checkout(&mut self, at: i64, ok: bool, skew_ms: i64) {
        let (trace, server, attempt) = self.id();
        let took = if ok { 5.0 } else { 2000.0 };
        let mut line = json!({
            "ts": ts(at + took as i64), "level": if ok { "info" } else { "warn" }, "kind": "access",
            "msg": "GET /checkout answered 200 by payments in 5ms.",
            "request_id": format!("req-{}", self.n), "trace_id": trace, "span_id": server,
            "route": "checkout", "upstream": "payments", "critical": true,
            "method": "GET", "path": "/checkout", "protocol": "HTTP/1.1", "status": 200,
            "duration_ms": took + 0.4, "upstream_ms": took,
            "attempts": [{"n": 1, "span_id": attempt, "endpoint": "10.0.0.7:8080", "connection": "reused",
                          "idle_ms": 120.0, "duration_ms": took,
                          "status": 200, "circuit_state": "closed"}]
        });
        if !ok {
            let a = &mut line["attempts"][0];
            a.as_object_mut().unwrap().remove("status");
            a["code"] = json!("upstream_timeout");
            a["stage"] = json!("await_headers");
            line["code"] = json!("upstream_timeout");
            line["class"] = json!("upstream");
            line["fallback"] = json!("upstream_timeout");
            line["cause"] = json!("attempt 1 to 10.0.0.7:8080 (reused) failed after 2s: upstream_timeout");
            line["msg"] = json!("GET /checkout was answered 200 by the route's fallback instead of upstream_timeout.");
        }
        self.web.push(line.to_string());
        // The payments sidecar: the same request, its parent the web attempt's span. When
        // web timed out, payments still answered, late (after 2.5 s).
        let inner = if ok { 3.0 } else { 2500.0 };
        let start = at + 1;
        let inner_line = json!({
            "ts": ts(start + inner as i64 + skew_ms), "level": "info", "kind": "access",
            "msg": "GET /checkout answered 200 by app.",
            "request_id": format!("req-{}", self.n), "trace_id": trace,
            "span_id": format!("{:016x}", 0x3000_0000u64 + self.n), "parent_span_id": attempt,
            "route": "default", "upstream": "app", "method": "GET", "path": "/checkout",
            "protocol": "HTTP/1.1", "status": 200, "duration_ms": inner, "upstream_ms": inner - 0.2,
            "attempts": [{"n": 1, "endpoint": "127.0.0.1:8080", "connection": "reused", "idle_ms": 3.0,
                          "duration_ms": inner - 0.2, "status": 200, "circuit_state": "closed"}]
        });
        self.payments.push(inner_line.to_string());
    }

    fn breaker(&mut self, at: i64, to: &str, why: &str) {
        self.web.push(
            json!({"ts": ts(at), "level": "warn", "kind": "breaker",
                   "msg": format!("Circuit breaker for 'payments' {why}."),
                   "upstream": "payments", "from": "closed", "to": to, "why": why})
            .to_string(),
        );
    }

    /// A non-critical route whose upstream refuses connections.
    fn search_refused(&mut self, at: i64) {
        let (trace, server, attempt) = self.id();
        self.web.push(
            json!({
                "ts": ts(at), "level": "warn", "kind": "access",
                "msg": "Could not connect to the service 'search' at 10.0.0.9:80: the connection was refused.",
                "request_id": format!("req-{}", self.n), "trace_id": trace, "span_id": server,
                "route": "search", "upstream": "search", "method": "GET", "path": "/search",
                "status": 503, "code": "upstream_connect_failed", "class": "upstream", "duration_ms": 0.3,
                "upstream_ms": 0.2,
                "attempts": [{"n": 1, "span_id": attempt, "endpoint": "10.0.0.9:80", "duration_ms": 0.2,
                              "code": "upstream_connect_failed", "stage": "connect", "circuit_state": "closed"}],
                "cause": "attempt 1 to 10.0.0.9:80 (no connection) failed after 200µs: upstream_connect_failed"
            })
            .to_string(),
        );
    }

    fn search_ok(&mut self, at: i64) {
        let (trace, server, _) = self.id();
        self.web.push(json!({
            "ts": ts(at), "level": "info", "kind": "access", "msg": "GET /search answered 200 by search in 1ms.",
            "request_id": format!("req-{}", self.n), "trace_id": trace, "span_id": server,
            "route": "search", "upstream": "search", "method": "GET", "path": "/search",
            "status": 200, "duration_ms": 1.0, "upstream_ms": 0.8,
            "attempts": [{"n": 1, "endpoint": "10.0.0.9:80", "duration_ms": 0.8, "status": 200, "circuit_state": "closed"}]
        }).to_string());
    }

    fn bad_request(&mut self, at: i64) {
        let (trace, server, _) = self.id();
        self.web.push(
            json!({
                "ts": ts(at), "level": "info", "kind": "access", "msg": "The request body is larger than allowed.",
                "request_id": format!("req-{}", self.n), "trace_id": trace, "span_id": server,
                "route": "checkout", "upstream": "payments", "critical": true, "method": "POST", "path": "/checkout",
                "status": 413, "code": "payload_too_large", "class": "client", "duration_ms": 0.1
            })
            .to_string(),
        );
    }
}

/// Ten minutes of traffic: search refuses connections at minute 1 for 20 s (not
/// critical); payments times out from minute 4 to minute 6 (critical; the breaker opens at
/// 4:05 and closes at 6:10); callers send 30 oversized bodies; payments' host runs 3 s ahead.
fn story() -> Gen {
    let mut g = Gen::new();
    for s in 0..600i64 {
        let at = T0 + s * 1000;
        let failing = (240..360).contains(&s);
        g.checkout(at, !failing, 3000);
        g.checkout(at + 500, !failing, 3000);
        if (60..80).contains(&s) {
            g.search_refused(at + 200);
        } else {
            g.search_ok(at + 200);
        }
        if s % 20 == 0 {
            g.bad_request(at + 300);
        }
        if s == 245 {
            g.breaker(
                at + 100,
                "open",
                "opened: 5 consecutive failures, last: upstream_timeout after 2s; failing fast for 5s",
            );
        }
        if s == 370 {
            g.breaker(at + 100, "closed", "closed: 3 probes succeeded in a row");
        }
    }
    g
}

fn explain(files: &[(&str, Vec<u8>)], trace: Option<&str>) -> (Value, Option<outrigger_explain::journey::Journey>) {
    let mut ex = Explainer::new(trace, outrigger_explain::DEFAULT_GAP_MS);
    for (name, bytes) in files {
        ex.read(name, &bytes[..]);
    }
    let (report, journey) = ex.finish();
    (
        serde_json::from_str(&outrigger_explain::render::json(&report)).unwrap(),
        journey,
    )
}

fn lines(v: &[String]) -> Vec<u8> {
    let mut out = v.join("\n").into_bytes();
    out.push(b'\n');
    out
}

#[test]
fn incidents_are_found_counted_ordered_and_told() {
    let g = story();
    let (r, _) = explain(
        &[("web.log", lines(&g.web)), ("payments.log", lines(&g.payments))],
        None,
    );
    let incidents = r["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 2, "{:#}", r["incidents"]);

    // Critical first, although the search outage came earlier.
    let pay = &incidents[0];
    assert_eq!(pay["id"], 1);
    assert_eq!(pay["upstream"], "payments");
    assert_eq!(pay["code"], "upstream_timeout");
    assert_eq!(pay["class"], "upstream");
    assert_eq!(pay["critical"], true);
    assert_eq!(pay["start"], ts(T0 + 242_000)); // the first timed-out request ends 2 s after 4:00
    assert_eq!(pay["end"], ts(T0 + 361_999));
    assert_eq!(pay["requests"], 240);
    assert_eq!(pay["recovered_at"], ts(T0 + 362_000));
    assert_eq!(pay["routes"][0]["route"], "checkout");
    assert_eq!(pay["routes"][0]["fallback"], 240);
    assert_eq!(pay["breaker"].as_array().unwrap().len(), 2);
    let story = pay["story"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        story.contains("payments started timing out at 14:04:02 (p50 "),
        "{story}"
    );
    assert!(story.contains("The breaker opened at 14:04:05"), "{story}");
    assert!(story.contains("The breaker closed at 14:06:10"), "{story}");
    assert!(
        story.contains("240 requests to route checkout got the fallback"),
        "{story}"
    );
    assert!(story.contains("It recovered"), "{story}");
    let actions = pay["first_actions"].as_array().unwrap();
    assert!(
        actions[0].as_str().unwrap().contains("requests gave up after 2.0 s"),
        "{actions:?}"
    );
    assert!(!pay["samples"].as_array().unwrap().is_empty());

    let search = &incidents[1];
    assert_eq!(search["upstream"], "search");
    assert_eq!(search["code"], "upstream_connect_failed");
    assert_eq!(search["critical"], false);
    assert_eq!(search["requests"], 20);
    assert_eq!(search["requests_total"], 20);
    assert_eq!(search["share"], 1.0);
    assert!(search["first_actions"][0].as_str().unwrap().contains("10.0.0.9:80"));

    // Callers' mistakes are apart from the incidents.
    assert_eq!(r["client_errors"][0]["code"], "payload_too_large");
    assert_eq!(r["client_errors"][0]["requests"], 30);
    assert_eq!(r["blast_radius"][0]["route"], "checkout");
    assert_eq!(r["blast_radius"][0]["client_errors"], 30);
    assert_eq!(r["skipped_lines"], 0);
}

#[test]
fn junk_truncation_gzip_and_other_programs_are_counted_not_fatal() {
    let g = story();
    let mut web = Vec::new();
    for (i, l) in g.web.iter().enumerate() {
        if i == 10 {
            web.extend_from_slice(b"Exception in thread \"main\" java.lang.NullPointerException\n");
            web.extend_from_slice(b"\xff\xfe\x00binary junk\n");
            web.extend_from_slice(br#"{"level":"info","message":"another program's JSON"}"#);
            web.push(b'\n');
            web.extend_from_slice(br#"{"ts":"not a time","kind":"access","msg":"x"}"#);
            web.push(b'\n');
            web.extend_from_slice(b"\n   \n"); // blank lines are not counted
        }
        web.extend_from_slice(l.as_bytes());
        web.push(b'\n');
    }
    // Cut the payments log in the middle of its last line, and gzip it.
    let mut payments = lines(&g.payments);
    payments.truncate(payments.len() - 40);
    let dir = std::env::temp_dir().join(format!("outrigger-explain-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gz_path = dir.join("payments.log.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&gz_path).unwrap(), flate2::Compression::fast());
    gz.write_all(&payments).unwrap();
    gz.finish().unwrap();
    // A gzip file cut short as well.
    let cut_path = dir.join("cut.log.gz");
    let whole = std::fs::read(&gz_path).unwrap();
    std::fs::write(&cut_path, &whole[..whole.len() / 2]).unwrap();
    let web_path = dir.join("web.log");
    std::fs::write(&web_path, &web).unwrap();

    let mut ex = Explainer::new(None, outrigger_explain::DEFAULT_GAP_MS);
    for p in [&web_path, &gz_path, &cut_path] {
        ex.read_path(p.to_str().unwrap()).unwrap();
    }
    assert!(ex.read_path(dir.join("missing.log").to_str().unwrap()).is_err());
    let (report, _) = ex.finish();
    let r: Value = serde_json::from_str(&outrigger_explain::render::json(&report)).unwrap();
    assert_eq!(r["input"]["skipped"]["not_json"], 2, "{:#}", r["input"]);
    assert_eq!(r["input"]["skipped"]["not_outrigger"], 1);
    assert_eq!(r["input"]["skipped"]["bad_timestamp"], 1);
    assert_eq!(r["input"]["skipped"]["truncated"], 2, "{:#}", r["input"]);
    assert_eq!(r["skipped_lines"], 6);
    let sources = r["input"]["sources"].as_array().unwrap();
    assert_eq!(sources[1]["name"], "payments.log.gz");
    assert_eq!(sources[1]["truncated"], true);
    assert_eq!(sources[1]["lines"], g.payments.len() as u64 - 1);
    assert_eq!(sources[2]["truncated"], true);
    // The incidents are the same as from the clean logs.
    assert_eq!(r["incidents"][0]["requests"], 240);
    let text = outrigger_explain::render::text(&report);
    assert!(
        text.contains("Skipped 6 lines (not_json 2, not_outrigger 1, bad_timestamp 1, truncated 2)."),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interleaved_and_reordered_logs_give_the_same_answer() {
    let g = story();
    let (a, _) = explain(
        &[("web.log", lines(&g.web)), ("payments.log", lines(&g.payments))],
        None,
    );
    // One file with both proxies' lines, shuffled.
    let mut all: Vec<String> = g.web.iter().chain(g.payments.iter()).cloned().collect();
    fastrand::seed(7);
    fastrand::shuffle(&mut all);
    let (b, _) = explain(&[("all.log", lines(&all))], None);
    assert_eq!(a["incidents"], b["incidents"]);
    assert_eq!(a["blast_radius"], b["blast_radius"]);
}

#[test]
fn a_skewed_clock_is_measured_and_named() {
    let g = story();
    let (r, _) = explain(
        &[("web.log", lines(&g.web)), ("payments.log", lines(&g.payments))],
        None,
    );
    let skew = &r["input"]["clock_skew"][0];
    assert_eq!(skew["ahead"], "payments.log", "{:#}", r["input"]);
    assert_eq!(skew["behind"], "web.log");
    // 3 s ahead, less the 1-2 ms the hop sits inside its caller's attempt.
    let by = skew["by_ms"].as_f64().unwrap();
    assert!((2990.0..=3000.0).contains(&by), "{by}");
    // Every call crossing both logs disagrees: all 1,200 checkouts.
    assert_eq!(skew["requests"], 1200);

    // With clocks in sync, each payments hop lies inside web's attempt: nothing to report.
    let mut synced = Gen::new();
    for s in 0..10 {
        synced.checkout(T0 + s * 1000, true, 0);
    }
    let (r, _) = explain(
        &[
            ("web.log", lines(&synced.web)),
            ("payments.log", lines(&synced.payments)),
        ],
        None,
    );
    assert_eq!(r["input"]["clock_skew"], json!([]));
}

#[test]
fn one_journey_across_two_proxies() {
    let g = story();
    // A request in the outage: web's attempt timed out; payments' hop hangs under it.
    let failed: Value = serde_json::from_str(g.web.iter().find(|l| l.contains("\"fallback\"")).unwrap()).unwrap();
    let id = failed["request_id"].as_str().unwrap().to_owned();
    let files = [("web.log", lines(&g.web)), ("payments.log", lines(&g.payments))];
    let (_, j) = explain(&files, Some(&id));
    let j = j.unwrap();
    assert_eq!(j.hops.len(), 1);
    let root = &j.hops[0];
    assert_eq!(root.log, "web.log");
    assert_eq!(root.fallback.as_deref(), Some("upstream_timeout"));
    assert_eq!(root.attempts[0].hops.len(), 1);
    let child = &root.attempts[0].hops[0];
    assert_eq!(child.log, "payments.log");
    assert_eq!(child.route.as_deref(), Some("default"));
    let text = j.text();
    assert!(
        text.starts_with(&format!("Journey of {id}: 2 hops in 2 logs")),
        "{text}"
    );
    assert!(
        text.contains("upstream_timeout after 2.0 s (stage await_headers)"),
        "{text}"
    );
    assert!(text.contains("\n    ") && text.contains("[payments.log]"), "{text}");
    // The same journey by its trace id.
    let trace = root.trace_id.clone();
    let (_, by_trace) = explain(&files, Some(&trace));
    assert_eq!(by_trace.unwrap().hops[0].request_id, id);
    // An id that is nowhere.
    let (_, none) = explain(&files, Some("nothing-like-it"));
    assert!(none.unwrap().text().contains("No access line has"));
}

#[test]
fn the_digest_schema_holds() {
    let g = story();
    let (r, _) = explain(
        &[("web.log", lines(&g.web)), ("payments.log", lines(&g.payments))],
        None,
    );
    for key in [
        "window",
        "incidents",
        "blast_radius",
        "client_errors",
        "skipped_lines",
        "input",
    ] {
        assert!(r.get(key).is_some(), "top level lacks {key}");
    }
    for inc in r["incidents"].as_array().unwrap() {
        for key in [
            "id",
            "upstream",
            "code",
            "class",
            "codes",
            "start",
            "end",
            "recovered_at",
            "critical",
            "requests",
            "requests_total",
            "share",
            "routes",
            "latency_ms",
            "breaker",
            "retries",
            "story",
            "first_actions",
            "samples",
        ] {
            assert!(inc.get(key).is_some(), "incident lacks {key}: {inc:#}");
        }
        assert!(inc["story"].as_array().unwrap().iter().all(Value::is_string));
        assert!(!inc["first_actions"].as_array().unwrap().is_empty());
    }
}

#[test]
fn an_outage_still_going_on_is_ongoing() {
    let mut g = Gen::new();
    for s in 0..100 {
        g.checkout(T0 + s * 1000, s < 70, 0);
    }
    // A latency alert during an outage that never ends (this once overflowed).
    g.web.push(
        json!({"ts": ts(T0 + 90_000), "level": "warn", "kind": "latency", "msg": "payments is slow.",
               "upstream": "payments", "ratio": 40.0, "recent_ms": 2000.0, "baseline_ms": 5.0})
        .to_string(),
    );
    let (r, _) = explain(&[("web.log", lines(&g.web))], None);
    let inc = &r["incidents"][0];
    assert_eq!(inc["end"], Value::Null, "{inc:#}");
    assert_eq!(inc["recovered_at"], Value::Null);
    let brief = {
        let mut ex = Explainer::new(None, outrigger_explain::DEFAULT_GAP_MS);
        ex.read("web.log", &lines(&g.web)[..]);
        outrigger_explain::render::brief(&ex.finish().0)
    };
    assert!(
        brief.starts_with("# Incident brief: payments upstream_timeout since 2026-12-06 14:01:12 UTC (ongoing)"),
        "{brief}"
    );
    assert!(brief.contains("Is it still failing now?"));
}

#[test]
fn the_log_rate_limit_does_not_hide_an_outage() {
    let mut g = Gen::new();
    for s in 0..30 {
        g.checkout(T0 + s * 1000, s < 10, 0);
    }
    // 1,000 more timeouts were not written, only summarised.
    g.web.push(
        json!({"ts": ts(T0 + 20_000), "level": "warn", "kind": "suppressed",
               "msg": "Suppressed 1000 similar access lines in the last 1s: upstream_timeout on route checkout.",
               "suppressed": 1000, "of_kind": "access", "key": "upstream_timeout on route checkout"})
        .to_string(),
    );
    let (r, _) = explain(&[("web.log", lines(&g.web))], None);
    assert_eq!(r["incidents"][0]["requests"], 1020);
}

/// Whatever the bytes, explaining never panics: lines of the story with random bytes
/// overwritten, cut, or spliced together.
#[test]
fn mangled_lines_never_panic() {
    let g = story();
    fastrand::seed(11);
    let mut input = Vec::new();
    for l in g.web.iter().chain(g.payments.iter()).take(3000) {
        let mut b = l.clone().into_bytes();
        match fastrand::u8(0..4) {
            0 => {
                for _ in 0..3 {
                    let i = fastrand::usize(0..b.len());
                    b[i] = fastrand::u8(..);
                }
            }
            1 => b.truncate(fastrand::usize(0..b.len())),
            2 => {
                let i = fastrand::usize(0..b.len());
                b.splice(
                    i..i,
                    br#""ts":"9999-12-31T23:59:59.999Z","duration_ms":1e308,"status":65535,"#
                        .iter()
                        .copied(),
                );
            }
            _ => {}
        }
        input.extend_from_slice(&b);
        input.push(b'\n');
    }
    let mut ex = Explainer::new(Some("req-5"), outrigger_explain::DEFAULT_GAP_MS);
    ex.read("mangled.log", &input[..]);
    let (report, journey) = ex.finish();
    let _ = outrigger_explain::render::text(&report);
    let _ = outrigger_explain::render::brief(&report);
    let _ = outrigger_explain::render::json(&report);
    let _ = journey.unwrap().text();
    assert!(report.skipped_lines > 0);
}
