//! Route matching: the first route whose every condition holds wins.
//!
//! Routes are narrowed by path before their conditions are checked, so a table of a
//! thousand routes costs about what one of ten does: routes with an exact `path` sit in a
//! hash map, routes with a `path_prefix` in a byte trie of their prefixes, and only the rest
//! (regex-only, or no path rule) are tried on every request. Candidates are tried in config
//! order, lowest first, so the result is the same as walking the list.

use std::collections::HashMap;

use http::{HeaderMap, Method, Uri};

use outrigger_config::Route;

/// The routes of one config, in order.
pub struct Router<R> {
    routes: Vec<(Route, Vec<usize>, R)>,
    index: PathIndex,
}

/// The parts of a request that routes match on.
pub struct Request<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI as received.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// What the router looks at, taken from a request once.
pub struct RouteQuery<'a> {
    /// The listener the request came in on (index into the config's listeners).
    pub listener: usize,
    /// Host without port, as sent (any case).
    pub host: Option<&'a str>,
    /// The port of the authority, when one was given.
    pub port: Option<u16>,
    /// An HTTP/1.1 absolute-form request (an app using outrigger as `HTTP_PROXY`).
    pub absolute_form: bool,
    /// Where the client's connection was going: its original destination when it was
    /// redirected to the listener, else the listener's own address.
    pub destination: Option<std::net::SocketAddr>,
    /// The connection was redirected to an outbound listener (transparent mode): only a
    /// route that names where it goes (`destination` or `host`) may take it, so a catch-all
    /// route meant for `HTTP_PROXY` calls never swallows every call the app makes.
    pub redirected_outbound: bool,
}

impl<R> Router<R> {
    /// A router over `routes`, each with the listener indexes it may serve (empty: all) and
    /// the runtime data `R` the caller attaches.
    pub fn new(routes: Vec<(Route, Vec<usize>, R)>) -> Self {
        let index = PathIndex::new(routes.iter().map(|(route, _, _)| route));
        Router { routes, index }
    }

    /// The first route that matches, with its data.
    pub fn find(&self, req: &Request<'_>, q: &RouteQuery<'_>) -> Option<(&Route, &R)> {
        let path = req.uri.path();
        // The lowest index that matches so far; each candidate list is in config order, so
        // a list is left at its first match or at the first index past the best.
        let mut best = usize::MAX;
        let mut try_list = |list: &[usize]| {
            for &i in list {
                if i >= best {
                    return;
                }
                if let Some((route, listeners, _)) = self.routes.get(i)
                    && (listeners.is_empty() || listeners.contains(&q.listener))
                    && matches(route, req, q)
                {
                    best = i;
                    return;
                }
            }
        };
        try_list(&self.index.always);
        if let Some(list) = self.index.exact.get(path) {
            try_list(list);
        }
        self.index.prefixes.walk(path.as_bytes(), &mut try_list);
        self.routes.get(best).map(|(route, _, data)| (route, data))
    }

    /// When no route matched: the methods of the routes that match everything but the
    /// method (empty when none does, i.e. the answer is 404, not 405).
    pub fn allowed_methods(&self, req: &Request<'_>, q: &RouteQuery<'_>) -> Vec<Method> {
        let mut allowed: Vec<Method> = Vec::new();
        for (route, listeners, _) in &self.routes {
            let on_listener = listeners.is_empty() || listeners.contains(&q.listener);
            if on_listener && !route.matcher.methods.is_empty() && matches_except_method(route, req, q) {
                for m in &route.matcher.methods {
                    if !allowed.contains(m) {
                        allowed.push(m.clone());
                    }
                }
            }
        }
        allowed
    }

    /// Whether a route on `listener` claims a redirected connection to `destination`: one
    /// whose `destination` matches it, or (`outbound` false) one without a `destination`.
    /// On an outbound listener only a named destination claims one, so the app's calls to
    /// destinations no route names keep going where they were going.
    pub fn serves_destination(&self, listener: usize, destination: std::net::SocketAddr, outbound: bool) -> bool {
        self.routes.iter().any(|(route, listeners, _)| {
            (listeners.is_empty() || listeners.contains(&listener))
                && match route.matcher.destination {
                    Some(d) => d.matches(destination),
                    None => !outbound,
                }
        })
    }

    /// Every route, in order.
    pub fn routes(&self) -> impl Iterator<Item = (&Route, &R)> {
        self.routes.iter().map(|(r, _, d)| (r, d))
    }
}

/// Which routes a path can match at all, by their path rule.
struct PathIndex {
    /// Routes with an exact `path`, by that path.
    exact: HashMap<String, Vec<usize>>,
    /// Routes with a `path_prefix` (and no exact `path`).
    prefixes: PrefixTrie,
    /// Routes with neither: a regex or no path rule. Tried on every request.
    always: Vec<usize>,
}

impl PathIndex {
    fn new<'a>(routes: impl Iterator<Item = &'a Route>) -> Self {
        let mut index = PathIndex {
            exact: HashMap::new(),
            prefixes: PrefixTrie::default(),
            always: Vec::new(),
        };
        for (i, route) in routes.enumerate() {
            let m = &route.matcher;
            match (&m.path, &m.path_prefix) {
                (Some(path), _) => index.exact.entry(path.clone()).or_default().push(i),
                (None, Some(prefix)) => index.prefixes.insert(prefix.as_bytes(), i),
                (None, None) => index.always.push(i),
            }
        }
        index
    }
}

/// A byte trie of path prefixes; each node lists the routes whose prefix ends there.
#[derive(Default)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    /// Children by next byte, sorted by that byte.
    next: Vec<(u8, usize)>,
    /// Routes whose prefix is the path to this node, in config order.
    routes: Vec<usize>,
}

impl PrefixTrie {
    /// Built once per config; `at` is always a node index this function made.
    fn insert(&mut self, prefix: &[u8], route: usize) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0;
        for &b in prefix {
            at = match self.nodes[at].next.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(pos) => self.nodes[at].next[pos].1,
                Err(pos) => {
                    let child = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].next.insert(pos, (b, child));
                    child
                }
            };
        }
        self.nodes[at].routes.push(route);
    }

    /// Calls `visit` with the routes of every prefix of `path`, shortest first.
    fn walk(&self, path: &[u8], visit: &mut impl FnMut(&[usize])) {
        let Some(mut node) = self.nodes.first() else { return };
        visit(&node.routes);
        for b in path {
            let Ok(pos) = node.next.binary_search_by_key(b, |&(k, _)| k) else {
                return;
            };
            let Some(next) = node.next.get(pos).and_then(|&(_, c)| self.nodes.get(c)) else {
                return;
            };
            node = next;
            visit(&node.routes);
        }
    }
}

fn matches(route: &Route, req: &Request<'_>, q: &RouteQuery<'_>) -> bool {
    let m = &route.matcher;
    (m.methods.is_empty() || m.methods.contains(req.method)) && matches_except_method(route, req, q)
}

fn matches_except_method(route: &Route, req: &Request<'_>, q: &RouteQuery<'_>) -> bool {
    let m = &route.matcher;
    if (m.destination.is_some() || q.redirected_outbound) && !destination_allows(route, q) {
        return false;
    }
    // Proxy-style requests name their destination; only a route that names that host may
    // take them, so outrigger never becomes an open proxy.
    match (&m.host, q.host) {
        (Some(hm), Some(host)) if hm.matches(host, q.port) => {}
        (Some(_), _) => return false,
        (None, _) if q.absolute_form => return false,
        (None, _) => {}
    }
    let path = req.uri.path();
    if m.path.as_deref().is_some_and(|p| p != path) {
        return false;
    }
    if m.path_prefix.as_deref().is_some_and(|p| !path.starts_with(p)) {
        return false;
    }
    if m.path_regex.as_ref().is_some_and(|r| !r.is_match(path)) {
        return false;
    }
    m.headers
        .iter()
        .all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value))
}

/// A route's `destination` rule, and the rule that a connection redirected to an outbound
/// listener is only taken by a route that names where it goes. Out of line: most routes and
/// requests have neither.
#[inline(never)]
fn destination_allows(route: &Route, q: &RouteQuery<'_>) -> bool {
    let m = &route.matcher;
    match &m.destination {
        Some(d) => q.destination.is_some_and(|dst| d.matches(dst)),
        None => !(q.redirected_outbound && m.host.is_none()),
    }
}

/// Splits an authority (`host`, `host:port`, `[v6]:port`) into host and port.
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority, None),
        };
    }
    // On bytes: the `str` searches (`rsplit_once`, `contains`) check char boundaries that an
    // ASCII authority does not need.
    let bytes = authority.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        Some(at) if !bytes[..at].contains(&b':') => (&authority[..at], authority[at + 1..].parse().ok()),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml_routes: &str) -> outrigger_config::Config {
        let text = format!(
            "listeners: [{{name: a, address: 127.0.0.1:0}}, {{name: b, role: outbound, address: 127.0.0.1:0}}]\nupstreams: {{u: {{endpoints: [127.0.0.1:1]}}}}\nroutes:\n{yaml_routes}"
        );
        outrigger_config::from_yaml(&text, "t.yaml", &|_| None).unwrap()
    }

    fn router(yaml_routes: &str) -> Router<()> {
        let c = config(yaml_routes);
        Router::new(
            c.routes
                .iter()
                .map(|r| {
                    let ls = r
                        .listener
                        .as_ref()
                        .map(|l| vec![c.listeners.iter().position(|x| &x.name == l).unwrap()])
                        .unwrap_or_default();
                    (r.clone(), ls, ())
                })
                .collect(),
        )
    }

    fn find<'r>(
        r: &'r Router<()>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        listener: usize,
    ) -> Option<&'r str> {
        find_to(r, method, uri, headers, listener, None)
    }

    fn find_to<'r>(
        r: &'r Router<()>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        listener: usize,
        destination: Option<&str>,
    ) -> Option<&'r str> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let absolute_form = parts.uri.authority().is_some();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| parts.headers.get("host").map(|h| h.to_str().unwrap().to_owned()));
        let (host, port) = authority
            .as_deref()
            .map(split_authority)
            .map_or((None, None), |(h, p)| (Some(h), p));
        r.find(
            &Request {
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
            },
            &RouteQuery {
                listener,
                host,
                port,
                absolute_form,
                destination: destination.map(|d| d.parse().unwrap()),
                redirected_outbound: false,
            },
        )
        .map(|(route, _)| route.name.as_str())
    }

    #[test]
    fn destination_rules_match_the_original_destination_by_range_and_port() {
        let r = router(
            "  - {name: tls-range, match: {destination: \"10.0.0.0/8:443\"}, upstream: u}\n\
             \x20 - {name: one-host, match: {destination: \"192.168.1.7:80\", host: api}, upstream: u}\n\
             \x20 - {name: v6, match: {destination: \"[fd00::/8]:8080\"}, upstream: u}\n\
             \x20 - {name: any-8080, match: {destination: \":8080\"}, upstream: u, listener: b}\n",
        );
        let get =
            |dst: Option<&str>, host: &str, listener: usize| find_to(&r, "GET", "/", &[("host", host)], listener, dst);
        assert_eq!(get(Some("10.3.4.5:443"), "x", 0), Some("tls-range"));
        assert_eq!(get(Some("11.3.4.5:443"), "x", 0), None);
        assert_eq!(get(Some("10.3.4.5:444"), "x", 0), None);
        assert_eq!(get(Some("192.168.1.7:80"), "api", 0), Some("one-host"));
        assert_eq!(get(Some("192.168.1.7:80"), "web", 0), None);
        assert_eq!(get(Some("192.168.1.8:80"), "api", 0), None);
        assert_eq!(get(Some("[fd00::1]:8080"), "x", 0), Some("v6"));
        // An IPv4 address carried in IPv6 is an IPv4 destination.
        assert_eq!(get(Some("[::ffff:10.1.1.1]:443"), "x", 0), Some("tls-range"));
        assert_eq!(get(Some("[fe80::1]:8080"), "x", 1), Some("any-8080"));
        assert_eq!(get(Some("[fe80::1]:8080"), "x", 0), None);
        // A request whose connection's destination is unknown never takes a destination route.
        assert_eq!(get(None, "x", 0), None);
        assert!(r.serves_destination(0, "10.9.9.9:443".parse().unwrap(), false));
        assert!(!r.serves_destination(0, "10.9.9.9:8080".parse().unwrap(), false));
        assert!(r.serves_destination(1, "10.9.9.9:8080".parse().unwrap(), true));
        assert!(!r.serves_destination(1, "10.9.9.9:9090".parse().unwrap(), true));
    }

    #[test]
    fn first_match_wins_across_path_method_header_and_host_rules() {
        let r = router(
            "  - {name: exact, match: {path: /health}, upstream: u}\n\
             \x20 - {name: post, match: {path_prefix: /orders, methods: [POST]}, upstream: u}\n\
             \x20 - {name: canary, match: {path_prefix: /orders, headers: {x-canary: \"yes\"}}, upstream: u}\n\
             \x20 - {name: regex, match: {path_regex: \"/items/[0-9]+\"}, upstream: u}\n\
             \x20 - {name: host, match: {host: \"*.example.com\", path_prefix: /}, upstream: u}\n\
             \x20 - {name: only-b, match: {path_prefix: /b}, upstream: u, listener: b}\n\
             \x20 - {name: rest, match: {path_prefix: /}, upstream: u}\n",
        );
        assert_eq!(find(&r, "GET", "/health", &[], 0), Some("exact"));
        assert_eq!(find(&r, "GET", "/health/x", &[], 0), Some("rest"));
        assert_eq!(find(&r, "POST", "/orders/1", &[], 0), Some("post"));
        assert_eq!(find(&r, "GET", "/orders/1", &[("x-canary", "yes")], 0), Some("canary"));
        assert_eq!(find(&r, "GET", "/orders/1", &[("x-canary", "no")], 0), Some("rest"));
        assert_eq!(find(&r, "GET", "/items/42", &[], 0), Some("regex"));
        assert_eq!(
            find(&r, "GET", "/items/42/x", &[], 0),
            Some("rest"),
            "regex must match the whole path"
        );
        assert_eq!(
            find(&r, "GET", "/", &[("host", "API.example.com:8080")], 0),
            Some("host")
        );
        assert_eq!(find(&r, "GET", "/", &[("host", "example.com")], 0), Some("rest"));
        assert_eq!(find(&r, "GET", "/b", &[], 1), Some("only-b"));
        assert_eq!(find(&r, "GET", "/b", &[], 0), Some("rest"));
    }

    #[test]
    fn absolute_form_needs_a_route_that_names_the_host() {
        let r = router(
            "  - {name: pay, match: {host: payments.internal, path_prefix: /}, upstream: u}\n  - {name: rest, match: {path_prefix: /}, upstream: u}\n",
        );
        assert_eq!(find(&r, "GET", "http://payments.internal/x", &[], 1), Some("pay"));
        assert_eq!(find(&r, "GET", "http://evil.example/x", &[], 1), None);
    }

    /// The definition the index must agree with: the first route, in order, that matches.
    fn find_linear<'r>(r: &'r Router<()>, req: &Request<'_>, q: &RouteQuery<'_>) -> Option<&'r str> {
        r.routes
            .iter()
            .find(|(route, ls, _)| (ls.is_empty() || ls.contains(&q.listener)) && matches(route, req, q))
            .map(|(route, _, _)| route.name.as_str())
    }

    const PATHS: [&str; 8] = ["/", "/a", "/a/", "/ab", "/a/b", "/b", "/abc", "/a/b/c"];
    const REGEXES: [&str; 3] = ["/a.*", "/[ab]+", "/a/b"];

    fn route_yaml(i: usize, rule: (u8, usize, usize), method: u8, header: bool, on_b: bool) -> String {
        let (kind, p, q) = rule;
        let path_rule = match kind {
            0 => String::new(),
            1 => format!("path: \"{}\", ", PATHS[p]),
            2 => format!("path_prefix: \"{}\", ", PATHS[p]),
            3 => format!("path_regex: \"{}\", ", REGEXES[p % REGEXES.len()]),
            4 => format!("path: \"{}\", path_prefix: \"{}\", ", PATHS[p], PATHS[q]),
            _ => format!(
                "path_prefix: \"{}\", path_regex: \"{}\", ",
                PATHS[p],
                REGEXES[q % REGEXES.len()]
            ),
        };
        let methods = ["", "methods: [GET], ", "methods: [POST], "][usize::from(method % 3)];
        let headers = if header { "headers: {x-k: \"v\"}, " } else { "" };
        let listener = if on_b { ", listener: b" } else { "" };
        format!("  - {{name: r{i}, match: {{{path_rule}{methods}{headers}}}, upstream: u{listener}}}\n")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the table, the indexed router picks the route the list walk picks.
        #[test]
        fn the_index_picks_what_walking_the_list_picks(
            routes in proptest::collection::vec(
                ((0u8..6, 0usize..8, 0usize..8), 0u8..3, proptest::bool::ANY, proptest::bool::ANY),
                1..12,
            ),
            requests in proptest::collection::vec(
                (0usize..12, proptest::bool::ANY, proptest::bool::ANY, 0usize..2),
                1..16,
            ),
        ) {
            let yaml: String = routes
                .iter()
                .enumerate()
                .map(|(i, &(rule, m, h, b))| route_yaml(i, rule, m, h, b))
                .collect();
            let text = format!(
                "listeners: [{{name: a, address: 127.0.0.1:0}}, {{name: b, role: outbound, address: 127.0.0.1:0}}]\nupstreams: {{u: {{endpoints: [127.0.0.1:1]}}}}\nroutes:\n{yaml}"
            );
            let Ok(c) = outrigger_config::from_yaml(&text, "t.yaml", &|_| None) else {
                // A combination the config loader refuses is not a table the router sees.
                return Ok(());
            };
            let r = Router::new(
                c.routes
                    .iter()
                    .map(|route| {
                        let ls = route.listener.as_ref().map(|_| vec![1]).unwrap_or_default();
                        (route.clone(), ls, ())
                    })
                    .collect(),
            );
            let extra = ["/c", "/ab/c", "/a/bc", "/bb"];
            for (p, post, header, listener) in requests {
                let path = PATHS.get(p).copied().unwrap_or_else(|| extra[p % extra.len()]);
                let mut b = http::Request::builder().method(if post { "POST" } else { "GET" }).uri(path);
                if header {
                    b = b.header("x-k", "v");
                }
                let (parts, ()) = b.body(()).unwrap().into_parts();
                let req = Request { method: &parts.method, uri: &parts.uri, headers: &parts.headers };
                let q = RouteQuery { listener, host: Some("svc"), port: None, absolute_form: false, destination: None, redirected_outbound: false };
                let indexed = r.find(&req, &q).map(|(route, _)| route.name.as_str());
                proptest::prop_assert_eq!(indexed, find_linear(&r, &req, &q), "path {} in\n{}", path, yaml);
            }
        }
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("a.b:80"), ("a.b", Some(80)));
        assert_eq!(split_authority("a.b"), ("a.b", None));
        assert_eq!(split_authority("[::1]:8080"), ("::1", Some(8080)));
    }
}
