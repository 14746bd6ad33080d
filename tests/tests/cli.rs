//! The command line, run as a user would: exit codes, `check` output, errors with positions.

use outrigger_tests::{run_cli, temp_file};

fn repo_file(rel: &str) -> String {
    format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `check` on `file`, expects exit 1 and nothing on stdout, and each of `errors`
/// (`line:col: path: message`) reported at that position in `file`. Returns stderr.
fn check_refuses(file: &std::path::Path, errors: &[&str]) -> String {
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    for e in errors {
        assert!(
            err.contains(&format!("{}:{e}", file.display())),
            "missing `{e}` in:\n{err}"
        );
    }
    err
}

#[test]
fn check_accepts_every_shipped_config_and_prints_routes() {
    for file in ["config/outrigger.yaml", "config/minimal.yaml"] {
        let (code, out, err) = run_cli(&["check", "-c", &repo_file(file)]);
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains("is valid"), "{out}");
        assert!(
            out.contains("LISTENER") && out.contains("ROUTE") && out.contains("127.0.0.1:8080"),
            "{out}"
        );
    }
}

#[test]
fn check_reports_a_typo_a_dangling_upstream_and_a_bad_duration_at_once() {
    let file = temp_file(
        "bad.yaml",
        "listeners:\n  - name: inbound\n    address: 127.0.0.1:15001\nupstreams:\n  app:\n    endpoints: [127.0.0.1:8080]\nroutes:\n  - name: default\n    match: {path_prefix: /}\n    upstream: payments\n    timout: 2s\n    timeout: 5parsecs\n",
    );
    let err = check_refuses(
        &file,
        &[
            "10:15: routes[0].upstream: upstream `payments` is not defined",
            "11:5: routes[0]: unknown field `timout`",
            "12:14: routes[0].timeout: invalid duration `5parsecs`",
        ],
    );
    assert!(err.contains("did you mean `timeout`?"), "{err}");
    assert!(err.contains("3 errors in"), "{err}");
}

#[test]
fn missing_config_file_exits_1_and_says_which() {
    let (code, _, err) = run_cli(&["check", "-c", "/definitely/not/here.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read config file /definitely/not/here.yaml"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["run", "-c", "/definitely/not/here.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("outrigger did not start"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_help_and_version_exit_0() {
    assert_eq!(run_cli(&["frobnicate"]).0, 2);
    assert_eq!(run_cli(&["run", "--no-such-flag"]).0, 2);
    assert_eq!(run_cli(&["run", "--workers", "0"]).0, 2);
    assert_eq!(run_cli(&["check"]).0, 2, "check needs -c");
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Examples:") && out.contains("outrigger run"), "{out}");
    assert_eq!(run_cli(&["init-iptables", "--dry-run", "--remove"]).0, 2);
    assert_eq!(run_cli(&["init-iptables", "--iptables", "ebtables"]).0, 2);
    assert_eq!(
        run_cli(&["init-iptables", "--exclude-outbound-cidrs", "10.0.0.0/33"]).0,
        2
    );
    let (code, out, _) = run_cli(&["init-iptables", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Examples:") && out.contains("--dry-run"), "{out}");
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("outrigger 0."), "{out}");
}

#[test]
fn check_warns_about_contradictory_settings_and_deny_warnings_fails() {
    let file = temp_file(
        "lint.yaml",
        "listeners: [{name: inbound, address: 127.0.0.1:15001}]\n\
         upstreams:\n  app:\n    endpoints: [127.0.0.1:8080]\n    pool: {idle_timeout: 90s}\n    circuit_breaker: {min_requests: 5000, window: 10s}\n\
         routes:\n  - name: checkout\n    match: {path_prefix: /}\n    upstream: app\n    timeout: 2s\n\
         \x20   retry: {attempts: 3, per_try_timeout: 700ms, idempotent_only: false}\n\
         \x20   fallback: {body: busy}\n",
    );
    let f = file.to_str().unwrap();
    let (code, out, err) = run_cli(&["check", "-c", f]);
    assert_eq!(code, 0, "warnings alone do not fail: {err}");
    assert!(out.contains("is valid (5 warnings above)"), "{out}");
    assert!(
        err.contains(&format!(
            "warning: {f}:5:11: upstreams.app.pool.idle_timeout: pool.idle_timeout 90s is longer than"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("warning: {f}:6:22: upstreams.app.circuit_breaker.min_requests: the failure-rate rule needs 5000 calls within 10s (500 per second)")), "{err}");
    assert!(
        err.contains(&format!("warning: {f}:12:12: routes[0].retry: 3 attempts × per_try_timeout 700ms + 2 × backoff up to 250ms = 2.6s exceeds the route timeout of 2s")),
        "{err}"
    );
    assert!(
        err.contains("fix: raise the route `timeout` to 2.6s or lower `attempts` / `per_try_timeout`"),
        "{err}"
    );
    assert!(
        err.contains("`idempotent_only: false` retries POST and PATCH too"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "warning: {f}:13:15: routes[0].fallback: a fallback on a route that is not `critical`"
        )),
        "{err}"
    );

    let (code, out, err) = run_cli(&["check", "-c", f, "--deny-warnings"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("5 warnings in") && err.contains("(--deny-warnings)"),
        "{err}"
    );
}

#[test]
fn shipped_configs_have_no_warnings() {
    for file in ["config/outrigger.yaml", "config/minimal.yaml"] {
        let (code, _, err) = run_cli(&["check", "-c", &repo_file(file), "--deny-warnings"]);
        assert_eq!(code, 0, "{file}: {err}");
    }
}

#[test]
fn pretty_logs_are_for_people() {
    use std::io::{BufRead, BufReader};
    let file = temp_file(
        "pretty.yaml",
        &outrigger_tests::config(&[outrigger_testkit::refused_addr()], outrigger_tests::DEFAULT_ROUTE),
    );
    let mut child = std::process::Command::new(outrigger_tests::binary())
        .args(["run", "-c", file.to_str().unwrap(), "--log-format", "pretty"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("outrigger is ready."))
        .expect("a ready line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready.contains(" INFO  lifecycle outrigger is ready.  routes=1  upstreams=1"),
        "{ready}"
    );
    assert!(!ready.starts_with('{'), "{ready}");
    assert_eq!(
        run_cli(&["run", "--log-format", "xml"]).0,
        2,
        "unknown formats are usage errors"
    );
}

#[test]
fn a_duration_too_long_to_mean_anything_is_refused_with_its_position() {
    // "No timeout" written as an absurd one used to overflow the clock at start-up.
    let file = temp_file(
        "huge.yaml",
        "listeners:\n  - {name: inbound, address: 127.0.0.1:15001}\nupstreams:\n  app: {endpoints: [127.0.0.1:8080]}\nroutes:\n  - name: default\n    match: {path_prefix: /}\n    upstream: app\n    timeout: 18446744073709551615s\n    retry: {attempts: 3, per_try_timeout: 500000000000y}\n",
    );
    let err = check_refuses(
        &file,
        &[
            "9:14: routes[0].timeout: duration `18446744073709551615s` is longer than 10 years",
            "10:43: routes[0].retry.per_try_timeout: duration `500000000000y` is longer than 10 years",
        ],
    );
    assert!(err.contains("fix: give a real bound"), "{err}");
    assert!(err.contains("2 errors in"), "{err}");
}

/// A `tls:` section whose files are not there stops both `check` and `run` with the path and
/// the reason: a listener that was asked to encrypt must never start serving plain text.
#[test]
fn tls_files_that_cannot_be_read_stop_check_and_run() {
    let yaml = "listeners:\n  - name: inbound\n    address: 127.0.0.1:0\n    tls:\n      cert: /nonexistent/tls.crt\n      key: /nonexistent/tls.key\n\
                upstreams:\n  app:\n    endpoints: [127.0.0.1:8080]\n\
                routes:\n  - {name: default, match: {path_prefix: /}, upstream: app}\n";
    let file = temp_file("tls.yaml", yaml);
    let wanted = "listener 'inbound': `tls.cert` (/nonexistent/tls.crt): cannot read it";
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1, "check must refuse it: {out}{err}");
    assert!(err.contains(wanted), "{err}");
    let (code, out, err) = run_cli(&["run", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 1, "run must refuse it too: {out}{err}");
    assert!(err.contains(wanted), "{err}");
}
