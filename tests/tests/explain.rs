//! `outrigger explain`, `/debug/explain` and `outrigger demo` against real proxies: the logs
//! are what a running outrigger wrote, the journeys cross two real proxies, the demo runs
//! as a user runs it (plain lines, and its live view in a real terminal under tmux).

use std::time::{Duration, Instant};

use outrigger_testkit::{Mode, Upstream, refused_addr};
use outrigger_tests::*;
use serde_json::Value;

const CRITICAL_ROUTE: &str =
    "  - {name: checkout, match: {path_prefix: /checkout}, upstream: app, timeout: 2s, critical: true}\n";

/// A proxy in front of a refused upstream: its own log, explained from a file and from stdin.
#[tokio::test]
async fn a_real_outage_is_explained_from_the_proxys_log() {
    let nowhere = refused_addr();
    let proxy = Outrigger::start(&config(&[nowhere], CRITICAL_ROUTE));
    for _ in 0..12 {
        let r = get(&proxy.url("/checkout/pay")).await;
        assert_eq!(r.status, 503);
    }
    let _ = get(&proxy.url("/elsewhere")).await; // no route: a caller's mistake
    proxy
        .wait_for_log(|l| l["kind"] == "access" && l["code"] == "route_not_found")
        .await;
    let log = temp_file("proxy.log", &(proxy.raw_lines().join("\n") + "\n"));

    let (code, out, err) = run_cli(&["explain", "--format", "json", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let inc = &r["incidents"][0];
    assert_eq!(inc["upstream"], "app", "{r:#}");
    assert_eq!(inc["code"], "upstream_connect_failed");
    assert_eq!(inc["class"], "upstream");
    assert_eq!(inc["critical"], true);
    assert_eq!(inc["requests"], 12);
    assert_eq!(inc["routes"][0]["route"], "checkout");
    assert!(inc["end"].is_null(), "the log ends while it fails: ongoing");
    assert!(
        inc["first_actions"][0].as_str().unwrap().contains(&nowhere.to_string()),
        "{:#}",
        inc["first_actions"]
    );
    assert_eq!(r["client_errors"][0]["code"], "route_not_found");
    assert_eq!(r["skipped_lines"], 0);

    // The same from stdin, as text.
    let out = std::process::Command::new(binary())
        .args(["explain", "-"])
        .stdin(std::fs::File::open(&log).unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("#1 app: upstream_connect_failed"), "{text}");
    assert!(text.contains("app started refusing connections at"), "{text}");
    assert!(
        text.contains("Callers' mistakes, not an outage: 1 requests: 1 route_not_found (404) on route (no route)"),
        "{text}"
    );

    // A missing file: exit 1, named.
    let (code, _, err) = run_cli(&["explain", "/nonexistent/outrigger.log"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent/outrigger.log"), "{err}");
    // Nothing of ours: exit 0, said so, counted.
    let junk = temp_file("junk.log", "hello\nworld\n{\"level\":\"info\"}\n");
    let (code, out, _) = run_cli(&["explain", junk.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("No incidents") && out.contains("Skipped 3 lines"), "{out}");
}

/// A request through two proxies: their two logs give one journey, the second proxy's hop
/// nested under the first proxy's attempt (linked by span ids, not by time).
#[tokio::test]
async fn a_journey_crosses_two_real_proxies() {
    let app = Upstream::start(Mode::Ok).await;
    let inner = Outrigger::start(&config(&[app.addr()], DEFAULT_ROUTE));
    let outer = Outrigger::start(&config(&[inner.inbound()], DEFAULT_ROUTE));
    let r = get(&outer.url("/orders/7")).await;
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").to_owned();
    outer.access_log(&id).await;
    inner.access_log(&id).await;
    let a = temp_file("outer.log", &(outer.raw_lines().join("\n") + "\n"));
    let b = temp_file("inner.log", &(inner.raw_lines().join("\n") + "\n"));
    let (code, out, err) = run_cli(&["explain", "--trace", &id, b.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("Journey of {id}: 2 hops in 2 logs")), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let outer_at = lines.iter().position(|l| l.contains("outer.log")).unwrap();
    let inner_at = lines.iter().position(|l| l.contains("inner.log")).unwrap();
    assert!(outer_at < inner_at, "{out}");
    assert!(
        lines[inner_at].starts_with("    "),
        "the inner hop is nested under the attempt:\n{out}"
    );
    assert!(out.contains("Where the time went at the first hop"), "{out}");
    let (_, json, _) = run_cli(&[
        "explain",
        "--format",
        "json",
        "--trace",
        &id,
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let j: Value = serde_json::from_str(&json).unwrap();
    let nested = j["hops"][0]["attempts"][0]["hops"][0]["log"].as_str().unwrap_or("");
    assert!(nested.ends_with("inner.log"), "{j:#}");
}

/// `/debug/explain`: the live process explains its recent failures (JSON, and text).
#[tokio::test]
async fn the_live_process_explains_its_recent_failures() {
    let up = Upstream::start(Mode::Ok).await;
    let nowhere = refused_addr();
    let yaml = config(&[up.addr()], DEFAULT_ROUTE).replace(
        "upstreams:\n",
        &format!("upstreams:\n  broken:\n    endpoints: [{nowhere}]\n"),
    );
    let yaml = yaml.replace(
        "routes:\n",
        "routes:\n  - {name: pay, match: {path_prefix: /pay}, upstream: broken, timeout: 2s, critical: true}\n",
    );
    let proxy = Outrigger::start(&yaml);
    for _ in 0..8 {
        assert_eq!(get(&proxy.url("/pay")).await.status, 503);
        assert_eq!(get(&proxy.url("/ok")).await.status, 200);
    }
    // The traffic lines come once a second: wait until the explanation has them.
    let deadline = Instant::now() + PATIENCE;
    let r = loop {
        let (status, body) = proxy.admin_get("/debug/explain").await;
        assert_eq!(status, 200, "{body}");
        let r: Value = serde_json::from_str(&body).unwrap();
        let ok_seen = r["blast_radius"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["route"] == "default" && x["requests"].as_u64() >= Some(8));
        if ok_seen || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let inc = &r["incidents"][0];
    assert_eq!(inc["upstream"], "broken", "{r:#}");
    assert_eq!(inc["code"], "upstream_connect_failed");
    assert_eq!(inc["requests"], 8);
    assert_eq!(inc["critical"], true);
    assert_eq!(r["input"]["sources"][0]["name"], "live");
    let (status, text) = proxy.admin_get("/debug/explain?format=text").await;
    assert_eq!(status, 200);
    assert!(text.contains("#1 broken: upstream_connect_failed"), "{text}");
}

/// `outrigger demo --duration 20s --no-tty`: the story happens for real and the closing
/// explanation names the slowdown, the breaker opening and the recovery.
#[test]
fn the_demo_tells_its_story() {
    let (code, out, err) = run_cli(&["demo", "--duration", "20s", "--no-tty"]);
    assert_eq!(code, 0, "{err}\n{out}");
    for phase in ["phase=Healthy", "phase=Slow", "phase=Failing", "phase=Recovering"] {
        assert!(out.contains(phase), "{phase} missing:\n{out}");
    }
    assert!(
        out.contains("payments=open"),
        "the live lines show the open breaker:\n{out}"
    );
    let explained = out.split("\noutrigger explain ").nth(1).unwrap_or("");
    assert!(explained.contains("#1 payments: upstream_timeout"), "{out}");
    assert!(explained.contains("payments slowed down"), "{out}");
    assert!(explained.contains("The breaker opened at"), "{out}");
    assert!(explained.contains("The breaker closed at"), "{out}");
    assert!(explained.contains("It recovered"), "{out}");
    assert!(explained.contains("got the fallback"), "{out}");
    assert!(
        explained.contains("payload_too_large (413)"),
        "callers' mistakes kept apart:\n{out}"
    );
}

/// The live view in a real terminal: tmux runs the demo, capture-pane reads the screen.
/// It is redrawn in place (one header on screen, however long it runs). Skipped where tmux
/// is missing unless OUTRIGGER_REQUIRE_TMUX=1 (CI).
#[test]
fn the_demo_live_view_redraws_in_a_real_terminal() {
    if std::process::Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var("OUTRIGGER_REQUIRE_TMUX").is_err(),
            "tmux is required here"
        );
        eprintln!("SKIPPED: tmux is not installed");
        return;
    }
    let session = format!("outrigger-demo-{}", std::process::id());
    let socket = format!("outrigger-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .unwrap()
    };
    let cmd = format!("{} demo --duration 20s; sleep 120", binary().display());
    let started = tmux(&["new-session", "-d", "-s", &session, "-x", "200", "-y", "100", &cmd]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
    let deadline = Instant::now() + PATIENCE * 2;
    let mut during = String::new();
    let mut seen_failing = false;
    while Instant::now() < deadline {
        let s = screen();
        if s.contains("3/4 payments hangs") && s.contains("open") {
            seen_failing = true;
            during = s.clone();
        }
        if s.contains("Blast radius") {
            during = if during.is_empty() { s.clone() } else { during };
            let end = s;
            assert!(seen_failing, "the view never showed the open breaker:\n{end}");
            assert_eq!(
                end.matches("UPSTREAM    BREAKER").count(),
                1,
                "redrawn in place:\n{end}"
            );
            assert!(end.contains("The breaker opened at"), "{end}");
            tmux(&["kill-server"]);
            assert!(during.contains("requests/s") && during.contains("[#"), "{during}");
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let last = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-S", "-", "-t", &session]).stdout).into_owned();
    tmux(&["kill-server"]);
    panic!("the demo did not finish in its terminal:\n{last}");
}

/// Each new subcommand's help is its own, with examples; bad values are usage errors (2).
#[test]
fn explain_and_demo_help_and_usage_errors() {
    let (code, out, _) = run_cli(&["explain", "--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Explain the failures"), "{out}");
    assert!(out.contains("Examples:") && out.contains("--trace"), "{out}");
    let (code, out, _) = run_cli(&["demo", "--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("The whole product in one command"), "{out}");
    assert!(out.contains("Loopback only"), "{out}");
    let (code, _, err) = run_cli(&["demo", "--duration", "5s"]);
    assert_eq!(code, 2);
    assert!(err.contains("the demo needs between 20s and 1h"), "{err}");
    let (code, _, err) = run_cli(&["explain", "--format", "xml"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values: text, json, brief"), "{err}");
}
