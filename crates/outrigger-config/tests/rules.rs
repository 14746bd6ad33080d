//! One test per validation rule: each feeds a small file with one kind of mistake and
//! asserts the *whole* list of problems reported (position, path, message, fix).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use outrigger_config::{ConfigError, from_yaml};

const BASE_LISTENERS: &str = "listeners: [{name: inbound, address: 127.0.0.1:15001}]\n";
const BASE_UPSTREAMS: &str = "upstreams:\n  app:\n    endpoints: [127.0.0.1:8080]\n";
const BASE_ROUTES: &str = "routes:\n  - name: default\n    match: {path_prefix: /}\n    upstream: app\n";

fn env(name: &str) -> Option<String> {
    match name {
        "PORT" => Some("9090".into()),
        "SVC" => Some("payments".into()),
        _ => None,
    }
}

/// Every problem as `line:col path: message | fix`.
fn problems(yaml: &str) -> Vec<String> {
    match from_yaml(yaml, "t.yaml", &env) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(d)) => d
            .iter()
            .map(|d| format!("{}:{} {}: {} | {}", d.pos.line, d.pos.column, d.path, d.message, d.fix))
            .collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn one(yaml: &str) -> String {
    let p = problems(yaml);
    assert_eq!(p.len(), 1, "expected exactly one problem, got {p:#?}");
    p.into_iter().next().unwrap()
}

fn with_route(route_lines: &str) -> String {
    format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - name: r\n    upstream: app\n    match: {{path_prefix: /}}\n{route_lines}"
    )
}

#[test]
fn the_base_file_is_valid() {
    assert_eq!(
        problems(&format!("{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}")),
        Vec::<String>::new()
    );
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let p = one("listeners: [\n");
    assert!(p.starts_with("1:12 : unclosed bracket"), "{p}");
}

#[test]
fn duplicate_keys_are_errors() {
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}admin: {{address: 127.0.0.1:1}}\nadmin: {{address: 127.0.0.1:2}}\n"
    ));
    assert!(p.starts_with("10:1 : duplicate key `admin`"), "{p}");
}

#[test]
fn unknown_fields_get_a_did_you_mean() {
    let p = one(&with_route("    timout: 2s\n"));
    assert_eq!(
        p,
        "9:5 routes[0]: unknown field `timout` | did you mean `timeout`? (known fields: name, match, upstream, listener, max_body_bytes, critical, timeout, body_idle_timeout, retry, fallback, fault, allow, stale_if_error)"
    );
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}telemetri: {{}}\n"
    ));
    assert!(
        p.starts_with("9:1 : unknown field `telemetri` | did you mean `telemetry`?"),
        "{p}"
    );
}

#[test]
fn missing_required_fields_name_the_field_and_an_example() {
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - name: r\n    match: {{path_prefix: /}}\n"
    ));
    assert_eq!(
        p,
        "6:5 routes[0]: missing required field `upstream` | add `upstream: app`"
    );
}

#[test]
fn wrong_types_are_errors() {
    let p = one(&with_route("    retry: 3\n"));
    assert!(
        p.starts_with("9:12 routes[0].retry: expected a mapping (key: value pairs), found a whole number"),
        "{p}"
    );
    let p = one(&with_route("    critical: yes please\n"));
    assert!(p.starts_with("9:15 routes[0].critical: expected true or false"), "{p}");
}

#[test]
fn bad_durations_are_errors() {
    assert!(one(&with_route("    timeout: 2x\n")).starts_with("9:14 routes[0].timeout: invalid duration `2x`"));
    assert_eq!(
        one(&with_route("    timeout: 2\n")),
        "9:14 routes[0].timeout: duration `2` has no unit | write `2s` or `2ms`"
    );
    assert!(one(&with_route("    timeout: 0s\n")).starts_with("9:14 routes[0].timeout: must be more than zero"));
}

#[test]
fn bad_listen_addresses_are_errors() {
    let p = one(&format!(
        "listeners: [{{name: inbound, address: \":15001\"}}]\n{BASE_UPSTREAMS}{BASE_ROUTES}"
    ));
    assert_eq!(
        p,
        "1:38 listeners[0].address: invalid address `:15001` | write the IP too: `0.0.0.0:15001` for every interface or `127.0.0.1:15001` for loopback"
    );
}

#[test]
fn bad_endpoints_are_errors() {
    let p = problems(&format!(
        "{BASE_LISTENERS}upstreams:\n  app:\n    endpoints: [\"http://a:1\", \"a\", \"a:0\", \"bad host:80\"]\n{BASE_ROUTES}"
    ));
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p[0].contains("has a scheme"), "{}", p[0]);
    assert!(p[1].contains("has no port"), "{}", p[1]);
    assert!(p[2].contains("invalid port `0`"), "{}", p[2]);
    assert!(p[3].contains("invalid host `bad host`"), "{}", p[3]);
}

#[test]
fn bad_regexes_are_errors() {
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{path_regex: \"/a(\"}}}}\n"
    ));
    assert!(
        p.contains("routes[0].match.path_regex: invalid regex `/a(`: unclosed group"),
        "{p}"
    );
}

#[test]
fn percentages_and_ratios_are_range_checked() {
    let p = one(&with_route("    fault: {abort: {percent: 150}}\n"));
    assert!(
        p.contains("routes[0].fault.abort.percent: 150 is not a percentage | use a value from 0 to 100"),
        "{p}"
    );
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}telemetry: {{tracing: {{sample_ratio: 2}}}}\n"
    ));
    assert!(p.contains("telemetry.tracing.sample_ratio: 2 is not a ratio"), "{p}");
}

#[test]
fn numeric_ranges_are_checked() {
    assert!(
        one(&with_route("    retry: {attempts: 0}\n"))
            .contains("routes[0].retry.attempts: 0 is out of range | use a value from 1 to 10")
    );
    assert!(
        one(&with_route("    fallback: {status: 42}\n"))
            .contains("routes[0].fallback.status: 42 is out of range | use a value from 100 to 599")
    );
    let p = one(&format!(
        "{BASE_LISTENERS}upstreams:\n  app:\n    endpoints: [127.0.0.1:1]\n    circuit_breaker: {{open_for: 10s, max_open_for: 5s}}\n{BASE_ROUTES}"
    ));
    assert!(p.contains("max_open_for (5s) is shorter than open_for (10s)"), "{p}");
    let p = one(&with_route("    timeout: 1s\n    retry: {per_try_timeout: 2s}\n"));
    assert!(
        p.contains("per_try_timeout (2s) is longer than the route timeout (1s)"),
        "{p}"
    );
}

#[test]
fn a_route_naming_a_missing_upstream_is_an_error() {
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, match: {{path_prefix: /}}, upstream: apps}}\n"
    ));
    assert_eq!(
        p,
        "6:50 routes[0].upstream: upstream `apps` is not defined | did you mean `app`? (defined upstreams: app)"
    );
}

#[test]
fn a_route_naming_a_missing_listener_is_an_error() {
    let p = one(&with_route("    listener: outbund\n"));
    assert!(
        p.starts_with(
            "9:15 routes[0].listener: listener `outbund` is not defined | use one of the listeners (inbound)"
        ),
        "{p}"
    );
}

#[test]
fn names_and_addresses_must_be_unique() {
    let yaml = format!(
        "listeners: [{{name: a, address: 127.0.0.1:1}}, {{name: a, address: 127.0.0.1:1}}]\nadmin: {{address: 127.0.0.1:1}}\n{BASE_UPSTREAMS}routes:\n  - {{name: r, match: {{path: /}}, upstream: app}}\n  - {{name: r, match: {{path: /x}}, upstream: app}}\n"
    );
    let p = problems(&yaml);
    assert!(
        p.iter()
            .any(|l| l.contains("listener name `a` is already used by listeners[0]")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains("address 127.0.0.1:1 is already used by listeners[0]")),
        "{p:#?}"
    );
    assert!(p.iter().any(|l| l.contains("is also the admin address")), "{p:#?}");
    assert!(
        p.iter()
            .any(|l| l.contains("route name `r` is already used by routes[0]")),
        "{p:#?}"
    );
}

#[test]
fn environment_variables_expand_and_unset_ones_are_errors() {
    let yaml = format!(
        "listeners: [{{name: inbound, address: \"127.0.0.1:${{PORT}}\"}}]\n{BASE_UPSTREAMS}{BASE_ROUTES}telemetry: {{service_name: \"${{SVC}}-${{ZONE:-eu1}}\"}}\n"
    );
    let c = from_yaml(&yaml, "t.yaml", &env).unwrap();
    assert_eq!(c.listeners[0].address.port(), 9090);
    assert_eq!(c.telemetry.service_name, "payments-eu1");
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}telemetry: {{service_name: \"${{POD_NAME}}\"}}\n"
    ));
    assert!(
        p.contains("environment variable `POD_NAME` is not set | set POD_NAME in the environment, or give a default"),
        "{p}"
    );
}

#[test]
fn closed_word_sets_suggest_the_closest_word() {
    let p = one(&format!(
        "{BASE_LISTENERS}upstreams:\n  app:\n    endpoints: [127.0.0.1:1]\n    protocol: htp2\n{BASE_ROUTES}"
    ));
    assert!(
        p.contains("upstreams.app.protocol: unknown value `htp2` | did you mean `http2`?"),
        "{p}"
    );
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{methods: [GTE]}}}}\n"
    ));
    assert!(p.contains("unknown HTTP method `GTE` | did you mean `GET`?"), "{p}");
    let p = one(&with_route("    retry: {on: [conect_failure]}\n"));
    assert!(p.contains("did you mean `connect_failure`?"), "{p}");
}

#[test]
fn empty_sections_are_errors() {
    let p = problems(
        "listeners: []
upstreams:
  app: {endpoints: []}
routes: []
",
    );
    assert!(p.iter().any(|l| l.contains("no listeners")), "{p:#?}");
    assert!(p.iter().any(|l| l.contains("no endpoints")), "{p:#?}");
    assert!(p.iter().any(|l| l.contains("no routes")), "{p:#?}");
}

#[test]
fn match_rules_are_checked() {
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{path_prefix: checkout}}}}\n"
    ));
    assert!(p.contains("`checkout` is not a request path"), "{p}");
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{path: /a, path_prefix: /b}}}}\n"
    ));
    assert!(
        p.contains("more than one of `path`, `path_prefix`, `path_regex`"),
        "{p}"
    );
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{headers: {{\"bad header\": x}}}}}}\n"
    ));
    assert!(p.contains("`bad header` is not a valid header name"), "{p}");
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{host: \"a b.com\"}}}}\n"
    ));
    assert!(p.contains("invalid host `a b.com`"), "{p}");
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let yaml = format!(
        "{BASE_LISTENERS}upstreams:\n  app:\n    endpoints: [127.0.0.1:8080]\n    conect_timeout: 1s\nroutes:\n  - name: r\n    match: {{path_prefix: /}}\n    upstream: nope\n    timeout: 2x\n"
    );
    let p = problems(&yaml);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p[0].starts_with("5:5 upstreams.app: unknown field `conect_timeout`"),
        "{}",
        p[0]
    );
    assert!(
        p[1].starts_with("9:15 routes[0].upstream: upstream `nope` is not defined"),
        "{}",
        p[1]
    );
    assert!(
        p[2].starts_with("10:14 routes[0].timeout: invalid duration `2x`"),
        "{}",
        p[2]
    );
}

#[test]
fn shipped_configs_are_valid() {
    for file in ["outrigger.yaml", "minimal.yaml"] {
        let path = format!("{}/../../config/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = from_yaml(&text, &path, &|_| None) {
            panic!("{e}");
        }
    }
}

#[test]
fn defaults_fill_every_optional_setting() {
    let c = from_yaml(
        &format!("{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}"),
        "t.yaml",
        &env,
    )
    .unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.limits.max_header_bytes, 65536);
    assert_eq!(l.limits.header_read_timeout.as_secs(), 10);
    assert_eq!(l.limits.idle_timeout.as_secs(), 60);
    assert_eq!(c.routes[0].timeout.as_secs(), 15);
    assert_eq!(c.upstreams[0].connect_timeout.as_secs(), 1);
    assert_eq!(c.upstreams[0].circuit_breaker.consecutive_failures, 5);
    assert_eq!(c.admin.address.to_string(), "0.0.0.0:15090");
    assert_eq!(c.drain.timeout.as_secs(), 30);
    assert!(c.errors.normalize_upstream_5xx);
    assert!(c.telemetry.logs.redact_headers.contains(&"authorization".to_owned()));
}

#[test]
fn latency_inflation_windows_and_ratio_must_make_sense() {
    let base = format!("{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}");
    assert_eq!(
        one(&format!(
            "{base}telemetry:\n  latency_inflation: {{baseline: 10s, recent: 30s}}\n"
        )),
        "10:22 telemetry.latency_inflation: `recent` (30s) is not shorter than `baseline` (10s): the ratio would always be about 1 \
         | make `baseline` much longer than `recent`, e.g. baseline: 10m, recent: 10s"
    );
    let p = one(&format!(
        "{base}telemetry:\n  latency_inflation: {{alert_ratio: 0.5}}\n"
    ));
    assert!(
        p.contains("alert_ratio 0.5 would warn while the upstream is as fast as usual"),
        "{p}"
    );
    assert_eq!(
        problems(&format!(
            "{base}telemetry:\n  latency_inflation: {{baseline: 30m, recent: 5s, alert_ratio: 0}}\n"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn body_idle_timeout_defaults_to_the_route_timeout_and_connect_is_refused() {
    let c = from_yaml(&with_route("    timeout: 3s\n"), "t.yaml", &env)
        .ok()
        .unwrap();
    assert_eq!(c.routes[0].body_idle_timeout, std::time::Duration::from_secs(3));
    let c = from_yaml(&with_route("    body_idle_timeout: 5m\n"), "t.yaml", &env)
        .ok()
        .unwrap();
    assert_eq!(c.routes[0].body_idle_timeout, std::time::Duration::from_secs(300));
    let p = one(&with_route("    body_idle_timeout: 0s\n"));
    assert!(p.contains("body_idle_timeout"), "{p}");
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{path_prefix: /, methods: [GET, connect]}}}}\n"
    ));
    assert!(
        p.contains("CONNECT is not supported") && p.contains("remove CONNECT"),
        "{p}"
    );
}

/// `tls:` sections are read into the config (outrigger enforces them; their files are
/// loaded by `check` and `run`); a client certificate needs both halves.
#[test]
fn tls_sections_are_read_and_half_a_client_certificate_is_refused() {
    let c = from_yaml(
        &format!(
            "listeners:\n  - name: inbound\n    address: 127.0.0.1:1\n    tls: {{cert: /c.pem, key: /k.pem, client_ca: /ca.pem}}\n{BASE_UPSTREAMS}{BASE_ROUTES}"
        ),
        "t.yaml",
        &env,
    )
    .ok()
    .unwrap();
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.client_ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
    let upstream = problems(&format!(
        "{BASE_LISTENERS}upstreams:\n  app:\n    endpoints: [127.0.0.1:8080]\n    tls: {{server_name: app.internal, cert: /c.pem}}\n{BASE_ROUTES}"
    ));
    assert_eq!(upstream.len(), 1, "{upstream:#?}");
    assert!(upstream[0].contains("needs both `cert` and `key`"), "{upstream:#?}");
}

/// `allow` lists identities (exact, or a prefix ending in `*`), never none, and only on routes
/// that no listener without `client_ca` reaches.
#[test]
fn allow_needs_identities_and_an_mtls_listener() {
    let mtls = "listeners:\n  - name: inbound\n    address: 127.0.0.1:1\n    tls: {cert: /c.pem, key: /k.pem, client_ca: /ca.pem}\n  - {name: plain, address: 127.0.0.1:2}\n";
    let route = |allow: &str, listener: &str| {
        format!(
            "{mtls}{BASE_UPSTREAMS}routes:\n  - {{name: r, upstream: app, match: {{path_prefix: /}}{listener}, allow: {allow}}}\n"
        )
    };
    let c = from_yaml(
        &route(
            "{identities: [spiffe://a/b, \"spiffe://ops/*\"]}",
            ", listener: inbound",
        ),
        "t.yaml",
        &env,
    )
    .ok()
    .unwrap();
    let allow = c.routes[0].allow.as_ref().unwrap();
    assert!(allow.admits("spiffe://a/b") && allow.admits("spiffe://ops/x"));
    assert!(!allow.admits("spiffe://a/bc") && !allow.admits("spiffe://op"));
    let p = one(&route("{identities: []}", ", listener: inbound"));
    assert!(p.contains("no caller could use this route"), "{p}");
    let p = one(&route("{identities: [\"spiffe://*/x\"]}", ", listener: inbound"));
    assert!(p.contains("has a `*` before its end"), "{p}");
    let p = one(&route("{identities: [spiffe://a/b]}", ""));
    assert!(
        p.contains("listener `plain` can reach it without asking for a client certificate"),
        "{p}"
    );
}

/// `admin.debug_from` takes CIDRs or single addresses; anything else is refused with its
/// position. Without it, loopback only.
#[test]
fn debug_from_takes_address_ranges() {
    let c = from_yaml(
        &format!("{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}admin: {{debug_from: [10.0.0.0/8, 192.168.1.7, \"fd00::/8\"]}}\n"),
        "t.yaml",
        &env,
    )
    .ok()
    .unwrap();
    assert!(c.admin.may_debug("10.2.3.4".parse().unwrap()));
    assert!(c.admin.may_debug("192.168.1.7".parse().unwrap()));
    assert!(c.admin.may_debug("fd00::1".parse().unwrap()));
    assert!(c.admin.may_debug("::ffff:10.9.9.9".parse().unwrap()), "IPv4 in IPv6");
    assert!(
        !c.admin.may_debug("127.0.0.1".parse().unwrap()),
        "the list replaces the default"
    );
    let c = from_yaml(
        &format!("{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}"),
        "t.yaml",
        &env,
    )
    .ok()
    .unwrap();
    assert!(c.admin.may_debug("127.0.0.1".parse().unwrap()) && c.admin.may_debug("::1".parse().unwrap()));
    assert!(!c.admin.may_debug("10.0.0.1".parse().unwrap()));
    let p = one(&format!(
        "{BASE_LISTENERS}{BASE_UPSTREAMS}{BASE_ROUTES}admin: {{debug_from: [10.0.0.0/33]}}\n"
    ));
    assert!(
        p.contains("admin.debug_from[0]") && p.contains("is not an address range"),
        "{p}"
    );
}

#[test]
fn transparent_mode_settings_are_checked() {
    // Destinations: a range and a port, one address, only a port, IPv6 in brackets.
    let ok = with_route("").replace(
        "match: {path_prefix: /}",
        "match: {path_prefix: /, destination: \"10.0.0.0/8:443\"}",
    );
    let c = from_yaml(&ok, "t.yaml", &env).unwrap();
    assert_eq!(c.routes[0].matcher.destination.unwrap().to_string(), "10.0.0.0/8:443");
    for (written, shown) in [
        ("10.1.2.3:80", "10.1.2.3/32:80"),
        (":8080", ":8080"),
        ("[fd00::/8]:443", "[fd00::/8]:443"),
        ("10.9.9.9/8:1", "10.0.0.0/8:1"),
    ] {
        let y = with_route("").replace(
            "match: {path_prefix: /}",
            &format!("match: {{destination: \"{written}\"}}"),
        );
        let c = from_yaml(&y, "t.yaml", &env).unwrap();
        assert_eq!(c.routes[0].matcher.destination.unwrap().to_string(), shown);
    }
    for bad in [
        "10.0.0.0/8",
        "fd00::/8:443",
        "10.0.0.0/8:0",
        "10.0.0.0/33:80",
        "host:80",
        ":http",
    ] {
        let y = with_route("").replace("match: {path_prefix: /}", &format!("match: {{destination: \"{bad}\"}}"));
        let p = one(&y);
        assert!(
            p.starts_with(&format!(
                "8:26 routes[0].match.destination: `{bad}` is not a destination | write an address range and a port"
            )),
            "{p}"
        );
    }
    // `unmatched`: the role's default, or one of two words.
    let y = "listeners: [{name: a, address: 0.0.0.0:1}, {name: b, role: outbound, address: 127.0.0.1:2}, {name: c, role: outbound, address: 127.0.0.1:3, unmatched: refuse}]\n";
    let c = from_yaml(&format!("{y}{BASE_UPSTREAMS}{BASE_ROUTES}"), "t.yaml", &env).unwrap();
    let words: Vec<&str> = c.listeners.iter().map(|l| l.unmatched.as_str()).collect();
    assert_eq!(words, ["refuse", "passthrough", "refuse"]);
    let p = one(&format!(
        "listeners: [{{name: a, address: 0.0.0.0:1, unmatched: pass}}]\n{BASE_UPSTREAMS}{BASE_ROUTES}"
    ));
    assert_eq!(
        p,
        "1:54 listeners[0].unmatched: unknown value `pass` | did you mean `passthrough`? (one of: passthrough, refuse)"
    );
}

#[test]
fn stale_if_error_settings_are_checked() {
    let c = from_yaml(
        &with_route("    stale_if_error: {max_age: 5m, max_bytes: 16MiB}\n"),
        "t.yaml",
        &env,
    )
    .unwrap();
    let s = c.routes[0].stale_if_error.as_ref().unwrap();
    assert_eq!(
        (s.max_age.as_secs(), s.max_bytes, s.key_by_credentials),
        (300, 16 << 20, false)
    );
    let c = from_yaml(
        &with_route("    stale_if_error: {max_age: 30s, max_bytes: 1048576, key_by_credentials: true}\n"),
        "t.yaml",
        &env,
    )
    .unwrap();
    assert_eq!(c.routes[0].stale_if_error.as_ref().unwrap().max_bytes, 1 << 20);
    assert_eq!(
        one(&with_route("    stale_if_error: {max_age: 5m, max_bytes: lots}\n")),
        "9:46 routes[0].stale_if_error.max_bytes: `lots` is not a size in bytes | write a size such as `16MiB`, `512KiB` or `1048576`"
    );
    assert_eq!(
        one(&with_route("    stale_if_error: {max_age: 5m, max_bytes: 1KiB}\n")),
        "9:46 routes[0].stale_if_error.max_bytes: 1024 bytes is out of range | use a size from 64.0 KiB to 16.0 GiB"
    );
    assert_eq!(
        one(&with_route("    stale_if_error: {max_bytes: 1MiB}\n")),
        "9:21 routes[0].stale_if_error: missing required field `max_age` | add `max_age: 5m`"
    );
}
