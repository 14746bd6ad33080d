//! Reading a file into [`Config`]: every section, every default, every problem at once.

use std::collections::HashMap;
use std::path::PathBuf;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::decode::{
    Cx, Fields, boolean, byte_size, duration, int_in, list_of, non_empty_string, non_negative, one_of, percent,
    positive_duration, ratio, socket_addr, string, suggest,
};
use crate::schema::*;
use crate::yaml::{Node, Pos, Value};

const TOP: &[&str] = &[
    "listeners",
    "drain",
    "admin",
    "upstreams",
    "routes",
    "errors",
    "telemetry",
];

/// Decodes and validates a parsed document. Problems go to `cx`.
pub(crate) fn config(cx: &mut Cx, root: &Node) -> Config {
    let f = cx.fields(root, "", TOP);

    let listeners = match f.node("listeners") {
        Some(n) => cx
            .list(n, "listeners")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| listener(cx, n, &format!("listeners[{i}]")))
            .collect(),
        None => Vec::new(),
    };
    if listeners.is_empty() && !has_errors_under(cx, "listeners") {
        cx.error(
            f.node("listeners").map_or(f.pos, |n| n.pos),
            "listeners",
            "no listeners: outrigger would accept no traffic",
            "add one: `listeners: [{name: inbound, address: 0.0.0.0:15001}]`",
        );
    }

    let drain = f
        .opt(cx, "drain", |cx, n, p| {
            let d = cx.fields(n, p, &["delay", "timeout"]);
            let def = Drain::default();
            Some(Drain {
                delay: d.or(cx, "delay", def.delay, duration),
                timeout: d.or(cx, "timeout", def.timeout, duration),
            })
        })
        .unwrap_or_default();

    let admin = f
        .opt(cx, "admin", |cx, n, p| {
            let a = cx.fields(n, p, &["address", "debug_from"]);
            Some(Admin {
                address: a.or(cx, "address", Admin::default().address, socket_addr),
                debug_from: a.or(cx, "debug_from", Admin::loopback(), list_of(cidr)),
            })
        })
        .unwrap_or_default();

    let mut upstreams = Vec::new();
    let mut upstream_names: Vec<(String, Pos)> = Vec::new();
    if let Some(n) = f.node("upstreams") {
        match &n.value {
            Value::Map(entries) => {
                for (key, node) in entries {
                    upstream_names.push((key.name.clone(), key.pos));
                    if let Some(u) = upstream(cx, &key.name, node, &format!("upstreams.{}", key.name)) {
                        upstreams.push(u);
                    }
                }
            }
            Value::Null => {}
            _ => cx.error(
                n.pos,
                "upstreams",
                "expected a mapping of upstream names to settings",
                "write `upstreams:` then `  app: {endpoints: [127.0.0.1:8080]}`",
            ),
        }
    }

    let mut routes = Vec::new();
    let mut route_nodes = Vec::new();
    if let Some(n) = f.node("routes") {
        for (i, rn) in cx.list(n, "routes").iter().enumerate() {
            if let Some(r) = route(cx, rn, &format!("routes[{i}]")) {
                routes.push(r);
                route_nodes.push(rn);
            }
        }
    }
    if routes.is_empty() && !has_errors_under(cx, "routes") {
        cx.error(
            f.node("routes").map_or(f.pos, |n| n.pos),
            "routes",
            "no routes: every request would get 404 route_not_found",
            "add one: `routes: [{name: default, match: {path_prefix: /}, upstream: app}]`",
        );
    }

    let errors = f.opt(cx, "errors", errors_section).unwrap_or_default();
    let telemetry = f.opt(cx, "telemetry", telemetry_section).unwrap_or_default();

    cross_check(cx, &listeners, &admin, &f, &upstream_names, &routes, &route_nodes);

    Config {
        listeners,
        drain,
        admin,
        upstreams,
        routes,
        errors,
        telemetry,
    }
}

fn has_errors_under(cx: &Cx, path: &str) -> bool {
    cx.diagnostics.iter().any(|d| d.path.starts_with(path))
}

/// Names, references and addresses that must agree across sections.
fn cross_check(
    cx: &mut Cx,
    listeners: &[Listener],
    admin: &Admin,
    top: &Fields<'_>,
    upstreams: &[(String, Pos)],
    routes: &[Route],
    route_nodes: &[&Node],
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if let Some(first) = seen.insert(&l.name, i) {
            let pos = list_item_pos(top.node("listeners"), i);
            cx.error(
                pos,
                &format!("listeners[{i}].name"),
                format!("listener name `{}` is already used by listeners[{first}]", l.name),
                "give each listener its own name",
            );
        }
    }
    let mut addrs: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        let pos = list_item_pos(top.node("listeners"), i);
        if l.address.port() != 0 {
            if let Some(first) = addrs.insert(l.address, i) {
                cx.error(
                    pos,
                    &format!("listeners[{i}].address"),
                    format!("address {} is already used by listeners[{first}]", l.address),
                    "give each listener its own port",
                );
            }
            if l.address == admin.address {
                cx.error(
                    pos,
                    &format!("listeners[{i}].address"),
                    format!("address {} is also the admin address", l.address),
                    "move the admin listener (`admin.address`) or this listener to another port",
                );
            }
        }
    }

    let mut route_names: HashMap<&str, usize> = HashMap::new();
    for (i, (r, node)) in routes.iter().zip(route_nodes).enumerate() {
        let path = format!("routes[{i}]");
        let field_pos = |key: &str| match &node.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == key)
                .map_or(node.pos, |(_, v)| v.pos),
            _ => node.pos,
        };
        if let Some(first) = route_names.insert(&r.name, i) {
            cx.error(
                field_pos("name"),
                &format!("{path}.name"),
                format!("route name `{}` is already used by routes[{first}]", r.name),
                "give each route its own name (it is the `http_route` metric label)",
            );
        }
        if !upstreams.iter().any(|(n, _)| *n == r.upstream) {
            let names: Vec<&str> = upstreams.iter().map(|(n, _)| n.as_str()).collect();
            let fix = match suggest(&r.upstream, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? (defined upstreams: {})", names.join(", ")),
                None if names.is_empty() => format!(
                    "define it under `upstreams:` (`{}: {{endpoints: [127.0.0.1:8080]}}`)",
                    r.upstream
                ),
                None => format!(
                    "use one of the defined upstreams ({}) or define `{}` under `upstreams:`",
                    names.join(", "),
                    r.upstream
                ),
            };
            cx.error(
                field_pos("upstream"),
                &format!("{path}.upstream"),
                format!("upstream `{}` is not defined", r.upstream),
                fix,
            );
        }
        if let Some(l) = &r.listener
            && !listeners.iter().any(|x| x.name == *l)
        {
            let names: Vec<&str> = listeners.iter().map(|x| x.name.as_str()).collect();
            let fix = match suggest(l, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? (listeners: {})", names.join(", ")),
                None => format!(
                    "use one of the listeners ({}) or remove `listener:` to serve on all",
                    names.join(", ")
                ),
            };
            cx.error(
                field_pos("listener"),
                &format!("{path}.listener"),
                format!("listener `{l}` is not defined"),
                fix,
            );
        }
        // An identity can only be checked where clients must present a certificate: `allow`
        // on a route a plain or server-only TLS listener reaches would admit nobody there (or,
        // worse, be read as a guard that is not one).
        if r.allow.is_some() {
            let open: Vec<&str> = listeners
                .iter()
                .filter(|l| r.listener.as_ref().is_none_or(|only| *only == l.name))
                .filter(|l| l.tls.as_ref().is_none_or(|t| t.client_ca.is_none()))
                .map(|l| l.name.as_str())
                .collect();
            if !open.is_empty() {
                cx.error(
                    field_pos("allow"),
                    &format!("{path}.allow"),
                    format!(
                        "route `{}` checks client identities, but listener{} `{}` can reach it without asking for a client certificate",
                        r.name,
                        if open.len() == 1 { "" } else { "s" },
                        open.join("`, `")
                    ),
                    "set `tls.client_ca` on that listener (mTLS), or bind the route to an mTLS listener with `listener:`",
                );
            }
        }
    }
}

fn list_item_pos(list: Option<&Node>, i: usize) -> Pos {
    match list.map(|n| &n.value) {
        Some(Value::Seq(items)) => items.get(i).map_or_else(Pos::default, |n| n.pos),
        _ => Pos::default(),
    }
}

fn name(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = non_empty_string(cx, node, path)?;
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Some(s)
    } else {
        cx.error(
            node.pos,
            path,
            format!("name `{s}` has characters other than letters, digits, `_`, `-`, `.`"),
            "use a short name such as `checkout` or `payments-v2` (it appears in metric labels)",
        );
        None
    }
}

/// `10.0.0.0/8`, `fd00::/8`, or one address (`10.1.2.3` = `/32`).
fn cidr(cx: &mut Cx, node: &Node, path: &str) -> Option<ipnet::IpNet> {
    let s = string(cx, node, path)?;
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Some(ipnet::IpNet::from(ip));
    }
    cx.error(
        node.pos,
        path,
        format!("`{s}` is not an address range"),
        "write a CIDR such as `10.0.0.0/8` or `fd00::/8`, or one address",
    );
    None
}

fn path_buf(cx: &mut Cx, node: &Node, path: &str) -> Option<PathBuf> {
    non_empty_string(cx, node, path).map(PathBuf::from)
}

fn listener(cx: &mut Cx, node: &Node, path: &str) -> Option<Listener> {
    let f = cx.fields(node, path, &["name", "role", "address", "tls", "limits", "unmatched"]);
    let name_v = f.req(cx, "name", "inbound", name);
    let role = f.or(cx, "role", Role::Inbound, |cx, n, p| {
        one_of(&["inbound", "outbound"])(cx, n, p).map(|w| if w == "outbound" { Role::Outbound } else { Role::Inbound })
    });
    let address = f.req(cx, "address", "0.0.0.0:15001", socket_addr);
    let tls = f.opt(cx, "tls", |cx, n, p| {
        let t = cx.fields(n, p, &["cert", "key", "client_ca"]);
        let cert = t.req(cx, "cert", "/etc/outrigger/tls/tls.crt", path_buf);
        let key = t.req(cx, "key", "/etc/outrigger/tls/tls.key", path_buf);
        let client_ca = t.opt(cx, "client_ca", path_buf);
        Some(ListenerTls {
            cert: cert?,
            key: key?,
            client_ca,
        })
    });
    let limits = f
        .opt(cx, "limits", |cx, n, p| {
            let l = cx.fields(
                n,
                p,
                &[
                    "max_header_bytes",
                    "header_read_timeout",
                    "idle_timeout",
                    "max_in_flight",
                ],
            );
            let d = ListenerLimits::default();
            Some(ListenerLimits {
                max_header_bytes: l.or(
                    cx,
                    "max_header_bytes",
                    d.max_header_bytes,
                    int_in(1024, 1 << 24, " bytes"),
                ),
                header_read_timeout: l.or(cx, "header_read_timeout", d.header_read_timeout, positive_duration),
                idle_timeout: l.or(cx, "idle_timeout", d.idle_timeout, positive_duration),
                max_in_flight: l.or(cx, "max_in_flight", d.max_in_flight, int_in(1, 10_000_000, "")),
            })
        })
        .unwrap_or_default();
    let unmatched = f.or(cx, "unmatched", Unmatched::default_for(role), |cx, n, p| {
        one_of(&["passthrough", "refuse"])(cx, n, p).map(|w| {
            if w == "refuse" {
                Unmatched::Refuse
            } else {
                Unmatched::Passthrough
            }
        })
    });
    Some(Listener {
        name: name_v?,
        role,
        address: address?,
        tls,
        limits,
        unmatched,
    })
}

fn endpoint(cx: &mut Cx, node: &Node, path: &str) -> Option<Endpoint> {
    let s = string(cx, node, path)?;
    let s = s.trim();
    const FIX: &str =
        "write `host:port`, e.g. `127.0.0.1:8080`, `payments.default.svc.cluster.local:80` or `[::1]:8080`";
    if s.contains("://") {
        cx.error(
            node.pos,
            path,
            format!("endpoint `{s}` has a scheme"),
            format!("{FIX}; set TLS with `tls:` and the HTTP version with `protocol:`"),
        );
        return None;
    }
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p),
            _ => {
                cx.error(node.pos, path, format!("invalid endpoint `{s}`"), FIX);
                return None;
            }
        },
        None => match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p),
            _ => {
                cx.error(node.pos, path, format!("endpoint `{s}` has no port"), FIX);
                return None;
            }
        },
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if !valid_host {
        cx.error(node.pos, path, format!("invalid host `{host}` in endpoint `{s}`"), FIX);
        return None;
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Some(Endpoint {
            host: host.to_owned(),
            port: p,
        }),
        _ => {
            cx.error(
                node.pos,
                path,
                format!("invalid port `{port}` in endpoint `{s}`"),
                "use a port from 1 to 65535",
            );
            None
        }
    }
}

fn upstream(cx: &mut Cx, upstream_name: &str, node: &Node, path: &str) -> Option<Upstream> {
    let f = cx.fields(
        node,
        path,
        &[
            "endpoints",
            "protocol",
            "connect_timeout",
            "resolve_every",
            "tls",
            "pool",
            "circuit_breaker",
            "outlier_detection",
        ],
    );
    let valid_name = name(
        cx,
        &Node {
            value: Value::Str(upstream_name.to_owned()),
            pos: node.pos,
        },
        path,
    );
    let endpoints = f.req(cx, "endpoints", "[127.0.0.1:8080]", list_of(endpoint));
    if let Some(eps) = &endpoints
        && eps.is_empty()
        && !has_errors_under(cx, &f.child_path("endpoints"))
    {
        cx.error(
            f.node("endpoints").map_or(f.pos, |n| n.pos),
            &f.child_path("endpoints"),
            "no endpoints",
            "list at least one `host:port`",
        );
    }
    let protocol = f.or(cx, "protocol", Protocol::Http1, |cx, n, p| {
        one_of(&["http1", "http2", "auto"])(cx, n, p).map(|w| match w {
            "http2" => Protocol::Http2,
            "auto" => Protocol::Auto,
            _ => Protocol::Http1,
        })
    });
    let connect_timeout = f.or(
        cx,
        "connect_timeout",
        std::time::Duration::from_secs(1),
        positive_duration,
    );
    let resolve_every = f.or(
        cx,
        "resolve_every",
        std::time::Duration::from_secs(5),
        positive_duration,
    );
    let tls = f.opt(cx, "tls", |cx, n, p| {
        let t = cx.fields(n, p, &["server_name", "ca", "cert", "key"]);
        let tls = UpstreamTls {
            server_name: t.opt(cx, "server_name", non_empty_string),
            ca: t.opt(cx, "ca", path_buf),
            cert: t.opt(cx, "cert", path_buf),
            key: t.opt(cx, "key", path_buf),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            cx.error(
                n.pos,
                p,
                "a client certificate needs both `cert` and `key`",
                "set both `cert` and `key`, or neither",
            );
        }
        Some(tls)
    });
    let pool = f
        .opt(cx, "pool", |cx, n, p| {
            let pf = cx.fields(n, p, &["idle_timeout", "max_idle_per_endpoint"]);
            let d = Pool::default();
            Some(Pool {
                idle_timeout: pf.or(cx, "idle_timeout", d.idle_timeout, positive_duration),
                max_idle_per_endpoint: pf.or(
                    cx,
                    "max_idle_per_endpoint",
                    d.max_idle_per_endpoint,
                    int_in(0, 100_000, ""),
                ),
            })
        })
        .unwrap_or_default();
    let circuit_breaker = f.opt(cx, "circuit_breaker", circuit_breaker).unwrap_or_default();
    let outlier_detection = f
        .opt(cx, "outlier_detection", |cx, n, p| {
            let o = cx.fields(n, p, &["consecutive_failures", "eject_for", "max_ejected_percent"]);
            let d = OutlierDetection::default();
            Some(OutlierDetection {
                consecutive_failures: o.or(
                    cx,
                    "consecutive_failures",
                    d.consecutive_failures,
                    int_in(1, 1_000_000, ""),
                ),
                eject_for: o.or(cx, "eject_for", d.eject_for, positive_duration),
                max_ejected_percent: o.or(cx, "max_ejected_percent", d.max_ejected_percent, percent),
            })
        })
        .unwrap_or_default();
    crate::lint::upstream(cx, &f, &pool, &circuit_breaker);
    Some(Upstream {
        name: valid_name?,
        endpoints: endpoints?,
        protocol,
        connect_timeout,
        resolve_every,
        tls,
        pool,
        circuit_breaker,
        outlier_detection,
    })
}

fn circuit_breaker(cx: &mut Cx, n: &Node, p: &str) -> Option<CircuitBreaker> {
    let f = cx.fields(
        n,
        p,
        &[
            "consecutive_failures",
            "failure_rate",
            "window",
            "min_requests",
            "open_for",
            "max_open_for",
            "half_open_probes",
            "slow_call",
            "max_in_flight",
            "trip_on_5xx",
        ],
    );
    let d = CircuitBreaker::default();
    let cb = CircuitBreaker {
        consecutive_failures: f.or(
            cx,
            "consecutive_failures",
            d.consecutive_failures,
            int_in(1, 1_000_000, ""),
        ),
        failure_rate: f.or(cx, "failure_rate", d.failure_rate, ratio),
        window: f.or(cx, "window", d.window, positive_duration),
        min_requests: f.or(cx, "min_requests", d.min_requests, int_in(1, 1_000_000_000, "")),
        open_for: f.or(cx, "open_for", d.open_for, positive_duration),
        max_open_for: f.or(cx, "max_open_for", d.max_open_for, positive_duration),
        half_open_probes: f.or(cx, "half_open_probes", d.half_open_probes, int_in(1, 10_000, "")),
        slow_call: f.opt(cx, "slow_call", |cx, n, p| {
            let s = cx.fields(n, p, &["duration", "rate"]);
            let duration = s.req(cx, "duration", "1s", positive_duration);
            let rate = s.req(cx, "rate", "0.8", ratio);
            Some(SlowCall {
                duration: duration?,
                rate: rate?,
            })
        }),
        max_in_flight: f.or(cx, "max_in_flight", d.max_in_flight, int_in(1, 10_000_000, "")),
        trip_on_5xx: f.or(cx, "trip_on_5xx", d.trip_on_5xx, boolean),
    };
    if cb.max_open_for < cb.open_for {
        let pos = f.node("max_open_for").map_or(n.pos, |x| x.pos);
        cx.error(
            pos,
            &f.child_path("max_open_for"),
            format!(
                "max_open_for ({:?}) is shorter than open_for ({:?})",
                cb.max_open_for, cb.open_for
            ),
            "make max_open_for at least open_for (the open period doubles up to it)",
        );
    }
    Some(cb)
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"];

fn method(cx: &mut Cx, node: &Node, path: &str) -> Option<Method> {
    let s = string(cx, node, path)?;
    let upper = s.to_ascii_uppercase();
    if upper == "CONNECT" {
        // Sent on as a plain request it would reach the upstream as `CONNECT /`: refused
        // here rather than accepted and not done.
        cx.error(
            node.pos,
            path,
            "CONNECT is not supported: outrigger forwards HTTP requests and does not open tunnels".to_owned(),
            "remove CONNECT from `methods`; tunnel at the network layer instead",
        );
        return None;
    }
    if METHODS.contains(&upper.as_str()) {
        return Method::from_bytes(upper.as_bytes()).ok();
    }
    let fix = match suggest(&upper, METHODS.iter().copied()) {
        Some(m) => format!("did you mean `{m}`?"),
        None => format!("use one of: {}", METHODS.join(", ")),
    };
    cx.error(node.pos, path, format!("unknown HTTP method `{s}`"), fix);
    None
}

fn url_path(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    if !s.starts_with('/')
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        cx.error(
            node.pos,
            path,
            format!("`{s}` is not a request path"),
            "write a path starting with `/`, without query or spaces, e.g. `/checkout`",
        );
        return None;
    }
    Some(s)
}

fn regex(cx: &mut Cx, node: &Node, path: &str) -> Option<Regex> {
    let s = string(cx, node, path)?;
    // Anchored so that the regex must match the whole path, as users expect of a path rule.
    match Regex::new(&format!("^(?:{s})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            let detail = e.to_string();
            let last = detail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid")
                .trim();
            let last = last.strip_prefix("error: ").unwrap_or(last);
            cx.error(
                node.pos,
                path,
                format!("invalid regex `{s}`: {last}"),
                "fix the pattern (Rust regex syntax; it must match the whole path)",
            );
            None
        }
    }
}

fn host_match(cx: &mut Cx, node: &Node, path: &str) -> Option<HostMatch> {
    let s = string(cx, node, path)?.to_ascii_lowercase();
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse::<u16>() {
            Ok(port) => (h.to_owned(), Some(port)),
            Err(_) => {
                cx.error(
                    node.pos,
                    path,
                    format!("invalid port in host `{s}`"),
                    "write `host` or `host:port`, e.g. `api.example.com` or `*.example.com:8080`",
                );
                return None;
            }
        },
        _ => (s.clone(), None),
    };
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    if bare.is_empty()
        || !bare
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        cx.error(
            node.pos,
            path,
            format!("invalid host `{s}`"),
            "write a host name such as `api.example.com`; `*.` may start it to match any subdomain",
        );
        return None;
    }
    Some(HostMatch { host, port })
}

fn headers(cx: &mut Cx, node: &Node, path: &str) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let Value::Map(entries) = &node.value else {
        cx.error(
            node.pos,
            path,
            "expected a mapping of header names to values",
            "write `headers: {x-canary: \"true\"}`",
        );
        return None;
    };
    let mut out = Vec::new();
    for (key, value) in entries {
        let p = format!("{path}.{}", key.name);
        let name = match HeaderName::from_bytes(key.name.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                cx.error(
                    key.pos,
                    &p,
                    format!("`{}` is not a valid header name", key.name),
                    "use letters, digits and `-`",
                );
                None
            }
        };
        let val = string(cx, value, &p).and_then(|v| match HeaderValue::from_str(&v) {
            Ok(h) => Some(h),
            Err(_) => {
                cx.error(
                    value.pos,
                    &p,
                    "not a valid header value",
                    "use visible ASCII characters",
                );
                None
            }
        });
        if let (Some(n), Some(v)) = (name, val) {
            out.push((n, v));
        }
    }
    Some(out)
}

fn route_match(cx: &mut Cx, n: &Node, p: &str) -> Option<RouteMatch> {
    let f = cx.fields(
        n,
        p,
        &[
            "path",
            "path_prefix",
            "path_regex",
            "host",
            "methods",
            "headers",
            "destination",
        ],
    );
    let m = RouteMatch {
        path: f.opt(cx, "path", url_path),
        path_prefix: f.opt(cx, "path_prefix", url_path),
        path_regex: f.opt(cx, "path_regex", regex),
        host: f.opt(cx, "host", host_match),
        methods: f.or(cx, "methods", Vec::new(), list_of(method)),
        headers: f.or(cx, "headers", Vec::new(), headers),
        destination: f.opt(cx, "destination", destination),
    };
    let path_rules = ["path", "path_prefix", "path_regex"]
        .iter()
        .filter(|k| f.node(k).is_some())
        .count();
    if path_rules > 1 {
        cx.error(
            n.pos,
            p,
            "more than one of `path`, `path_prefix`, `path_regex`",
            "keep one path rule per route; add another route for another path",
        );
    }
    Some(m)
}

/// `10.0.0.0/8:443`, `[fd00::/8]:443`, `10.1.2.3:80` or `:8080`.
fn destination(cx: &mut Cx, node: &Node, path: &str) -> Option<DestinationMatch> {
    let s = string(cx, node, path)?;
    let s = s.trim();
    let parsed = s.rsplit_once(':').and_then(|(range, port)| {
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        if range.is_empty() {
            return Some(DestinationMatch { net: None, port });
        }
        let range = match range.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']')?,
            // An IPv6 range must be bracketed, or its last group would read as the port.
            None if range.contains(':') => return None,
            None => range,
        };
        let net = match range.parse::<ipnet::IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => ipnet::IpNet::from(range.parse::<std::net::IpAddr>().ok()?),
        };
        Some(DestinationMatch { net: Some(net), port })
    });
    if parsed.is_none() {
        cx.error(
            node.pos,
            path,
            format!("`{s}` is not a destination"),
            "write an address range and a port, such as `10.0.0.0/8:443`, `[fd00::/8]:443` or `10.1.2.3:80`, or only a port: `:8080`",
        );
    }
    parsed
}

fn status(cx: &mut Cx, node: &Node, path: &str) -> Option<u16> {
    int_in::<u16>(100, 599, " (an HTTP status)")(cx, node, path)
}

fn route(cx: &mut Cx, node: &Node, path: &str) -> Option<Route> {
    let f = cx.fields(
        node,
        path,
        &[
            "name",
            "match",
            "upstream",
            "listener",
            "max_body_bytes",
            "critical",
            "timeout",
            "body_idle_timeout",
            "retry",
            "fallback",
            "fault",
            "allow",
            "stale_if_error",
        ],
    );
    let name_v = f.req(cx, "name", "default", name);
    let matcher = f.req(cx, "match", "{path_prefix: /}", route_match);
    let upstream = f.req(cx, "upstream", "app", non_empty_string);
    let listener = f.opt(cx, "listener", non_empty_string);
    let max_body_bytes = f.opt(cx, "max_body_bytes", int_in(0, i128::from(i64::MAX), " bytes"));
    let critical = f.or(cx, "critical", false, boolean);
    let timeout = f.or(cx, "timeout", std::time::Duration::from_secs(15), positive_duration);
    let body_idle_timeout = f.or(cx, "body_idle_timeout", timeout, positive_duration);
    let retry = f.opt(cx, "retry", retry);
    if let (Some(r), Some(node)) = (&retry, f.node("retry"))
        && let Some(pt) = r.per_try_timeout
        && pt > timeout
    {
        cx.error(
            node.pos,
            &f.child_path("retry.per_try_timeout"),
            format!("per_try_timeout ({pt:?}) is longer than the route timeout ({timeout:?})"),
            "make per_try_timeout shorter than `timeout`, or drop it",
        );
    }
    let fallback = f.opt(cx, "fallback", |cx, n, p| {
        let fb = cx.fields(n, p, &["status", "content_type", "body"]);
        Some(Fallback {
            status: fb.or(cx, "status", 503, status),
            content_type: fb.or(cx, "content_type", "application/json".to_owned(), non_empty_string),
            body: fb.or(cx, "body", String::new(), string),
        })
    });
    let fault = f.opt(cx, "fault", |cx, n, p| {
        let ff = cx.fields(n, p, &["delay", "abort", "allow_header"]);
        Some(Fault {
            delay: ff.opt(cx, "delay", |cx, n, p| {
                let d = cx.fields(n, p, &["percent", "duration"]);
                let percent = d.req(cx, "percent", "10", percent);
                let duration = d.req(cx, "duration", "1s", duration);
                Some(FaultDelay {
                    percent: percent?,
                    duration: duration?,
                })
            }),
            abort: ff.opt(cx, "abort", |cx, n, p| {
                let a = cx.fields(n, p, &["percent", "status"]);
                let percent = a.req(cx, "percent", "10", percent);
                let status = a.or(cx, "status", 503, status);
                Some(FaultAbort {
                    percent: percent?,
                    status,
                })
            }),
            allow_header: ff.or(cx, "allow_header", false, boolean),
        })
    });
    let allow = f.opt(cx, "allow", allow);
    let stale_if_error = f.opt(cx, "stale_if_error", |cx, n, p| {
        let st = cx.fields(n, p, &["max_age", "max_bytes", "key_by_credentials"]);
        let max_age = st.req(cx, "max_age", "5m", positive_duration);
        let max_bytes = st.req(cx, "max_bytes", "16MiB", byte_size(64 * 1024, 1 << 34));
        Some(StaleIfError {
            max_age: max_age?,
            max_bytes: max_bytes?,
            key_by_credentials: st.or(cx, "key_by_credentials", false, boolean),
        })
    });
    crate::lint::route(cx, &f, timeout, retry.as_ref(), fallback.is_some(), critical);
    Some(Route {
        name: name_v?,
        matcher: matcher?,
        upstream: upstream?,
        listener,
        max_body_bytes: max_body_bytes.map(|b: i64| b.unsigned_abs()),
        critical,
        timeout,
        body_idle_timeout,
        retry,
        fallback,
        fault,
        allow,
        stale_if_error,
    })
}

/// `allow: { identities: [...] }`: each an identity, or a prefix ending in `*`.
fn allow(cx: &mut Cx, n: &Node, p: &str) -> Option<Allow> {
    let f = cx.fields(n, p, &["identities"]);
    let identities: Vec<String> = f.req(
        cx,
        "identities",
        "[spiffe://cluster.local/ns/shop/sa/web]",
        list_of(non_empty_string),
    )?;
    if identities.is_empty() {
        cx.error(
            n.pos,
            p,
            "`allow.identities` is empty: no caller could use this route",
            "list the identities that may call it, e.g. `spiffe://cluster.local/ns/shop/sa/web`, or remove `allow`",
        );
        return None;
    }
    for (i, id) in identities.iter().enumerate() {
        if id.trim_end_matches('*').contains('*') {
            cx.error(
                n.pos,
                &format!("{p}.identities[{i}]"),
                format!("`{id}` has a `*` before its end"),
                "a `*` may only end an identity, as a prefix match: `spiffe://cluster.local/ns/ops/*`",
            );
        }
    }
    Some(Allow { identities })
}

fn retry(cx: &mut Cx, n: &Node, p: &str) -> Option<Retry> {
    let f = cx.fields(
        n,
        p,
        &[
            "attempts",
            "per_try_timeout",
            "on",
            "retriable_status",
            "idempotent_only",
            "replay_buffer_bytes",
            "backoff",
            "budget",
        ],
    );
    let backoff = f
        .opt(cx, "backoff", |cx, n, p| {
            let b = cx.fields(n, p, &["base", "max"]);
            let d = Backoff::default();
            let backoff = Backoff {
                base: b.or(cx, "base", d.base, positive_duration),
                max: b.or(cx, "max", d.max, positive_duration),
            };
            if backoff.max < backoff.base {
                cx.error(
                    n.pos,
                    p,
                    format!("backoff max ({:?}) is below base ({:?})", backoff.max, backoff.base),
                    "make `max` at least `base`",
                );
            }
            Some(backoff)
        })
        .unwrap_or_default();
    let budget = f
        .opt(cx, "budget", |cx, n, p| {
            let b = cx.fields(n, p, &["ratio", "min_per_second"]);
            let d = RetryBudget::default();
            Some(RetryBudget {
                ratio: b.or(cx, "ratio", d.ratio, ratio),
                min_per_second: b.or(cx, "min_per_second", d.min_per_second, non_negative),
            })
        })
        .unwrap_or_default();
    Some(Retry {
        attempts: f.or(cx, "attempts", 2, int_in(1, 10, " tries, including the first")),
        per_try_timeout: f.opt(cx, "per_try_timeout", positive_duration),
        on: f.or(
            cx,
            "on",
            vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Unavailable],
            list_of(|cx, n, p| one_of(&RetryOn::WORDS)(cx, n, p).and_then(RetryOn::parse)),
        ),
        retriable_status: f.or(cx, "retriable_status", Vec::new(), list_of(status)),
        idempotent_only: f.or(cx, "idempotent_only", true, boolean),
        replay_buffer_bytes: f.or(cx, "replay_buffer_bytes", 64 * 1024, int_in(0, 64 << 20, " bytes")),
        backoff,
        budget,
    })
}

fn errors_section(cx: &mut Cx, n: &Node, p: &str) -> Option<Errors> {
    let f = cx.fields(n, p, &["normalize_upstream_5xx", "type_base"]);
    let d = Errors::default();
    Some(Errors {
        normalize_upstream_5xx: f.or(cx, "normalize_upstream_5xx", d.normalize_upstream_5xx, boolean),
        type_base: f.or(cx, "type_base", d.type_base, string),
    })
}

fn telemetry_section(cx: &mut Cx, n: &Node, p: &str) -> Option<Telemetry> {
    let f = cx.fields(n, p, &["service_name", "tracing", "logs", "latency_inflation"]);
    let d = Telemetry::default();
    let tracing = f
        .opt(cx, "tracing", |cx, n, p| {
            let t = cx.fields(n, p, &["otlp_endpoint", "otlp_protocol", "sample_ratio", "propagate"]);
            let d = Tracing::default();
            Some(Tracing {
                otlp_endpoint: t.opt(cx, "otlp_endpoint", |cx, n, p| {
                    let s = non_empty_string(cx, n, p)?;
                    match s.parse::<http::Uri>() {
                        Ok(u) if u.scheme().is_some() && u.authority().is_some() => Some(u),
                        _ => {
                            cx.error(
                                n.pos,
                                p,
                                format!("invalid OTLP endpoint `{s}`"),
                                "write a URL such as `http://127.0.0.1:4317`",
                            );
                            None
                        }
                    }
                }),
                otlp_protocol: t.or(cx, "otlp_protocol", d.otlp_protocol, |cx, n, p| {
                    one_of(&["grpc", "http/protobuf"])(cx, n, p).map(|w| {
                        if w == "grpc" {
                            OtlpProtocol::Grpc
                        } else {
                            OtlpProtocol::HttpProtobuf
                        }
                    })
                }),
                sample_ratio: t.or(cx, "sample_ratio", d.sample_ratio, ratio),
                propagate: t.or(
                    cx,
                    "propagate",
                    d.propagate,
                    list_of(|cx, n, p| {
                        one_of(&["tracecontext", "b3"])(cx, n, p).map(|w| {
                            if w == "b3" {
                                Propagation::B3
                            } else {
                                Propagation::TraceContext
                            }
                        })
                    }),
                ),
            })
        })
        .unwrap_or_default();
    let logs = f
        .opt(cx, "logs", |cx, n, p| {
            let l = cx.fields(
                n,
                p,
                &[
                    "level",
                    "access_log",
                    "access_sample_ratio",
                    "rate_limit",
                    "redact_headers",
                    "redact_query_params",
                ],
            );
            let d = Logs::default();
            Some(Logs {
                level: l.or(cx, "level", d.level, |cx, n, p| {
                    one_of(&["trace", "debug", "info", "warn", "error"])(cx, n, p).map(|w| match w {
                        "trace" => LogLevel::Trace,
                        "debug" => LogLevel::Debug,
                        "warn" => LogLevel::Warn,
                        "error" => LogLevel::Error,
                        _ => LogLevel::Info,
                    })
                }),
                access_log: l.or(cx, "access_log", d.access_log, boolean),
                access_sample_ratio: l.or(cx, "access_sample_ratio", d.access_sample_ratio, ratio),
                rate_limit: l
                    .opt(cx, "rate_limit", |cx, n, p| {
                        let r = cx.fields(n, p, &["per_second", "burst"]);
                        let d = RateLimit::default();
                        Some(RateLimit {
                            per_second: r.or(cx, "per_second", d.per_second, non_negative),
                            burst: r.or(cx, "burst", d.burst, int_in(1, 1_000_000, "")),
                        })
                    })
                    .unwrap_or_default(),
                redact_headers: l.or(
                    cx,
                    "redact_headers",
                    d.redact_headers,
                    list_of(|cx, n, p| non_empty_string(cx, n, p).map(|s| s.to_ascii_lowercase())),
                ),
                redact_query_params: l.or(
                    cx,
                    "redact_query_params",
                    d.redact_query_params,
                    list_of(non_empty_string),
                ),
            })
        })
        .unwrap_or_default();
    let latency_inflation = f
        .opt(cx, "latency_inflation", |cx, n, p| {
            let l = cx.fields(n, p, &["baseline", "recent", "alert_ratio"]);
            let d = LatencyInflation::default();
            let li = LatencyInflation {
                baseline: l.or(cx, "baseline", d.baseline, positive_duration),
                recent: l.or(cx, "recent", d.recent, positive_duration),
                alert_ratio: l.or(cx, "alert_ratio", d.alert_ratio, non_negative),
            };
            if li.recent >= li.baseline {
                cx.error(
                    n.pos,
                    p,
                    format!(
                        "`recent` ({}) is not shorter than `baseline` ({}): the ratio would always be about 1",
                        crate::lint::human(li.recent),
                        crate::lint::human(li.baseline)
                    ),
                    "make `baseline` much longer than `recent`, e.g. baseline: 10m, recent: 10s",
                );
            }
            if li.alert_ratio > 0.0 && li.alert_ratio <= 1.0 {
                cx.error(
                    n.pos,
                    p,
                    format!(
                        "alert_ratio {} would warn while the upstream is as fast as usual",
                        li.alert_ratio
                    ),
                    "use a ratio above 1 (2 warns at twice as slow), or 0 to never warn",
                );
            }
            Some(li)
        })
        .unwrap_or_default();
    Some(Telemetry {
        service_name: f.or(cx, "service_name", d.service_name, non_empty_string),
        tracing,
        logs,
        latency_inflation,
    })
}
