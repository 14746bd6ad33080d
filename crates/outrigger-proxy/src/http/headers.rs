//! Header rules at the proxy boundary: request ids, hop-by-hop removal (RFC 9110 §7.6.1)
//! and forwarding headers (`X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`).

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{CONNECTION, HeaderMap, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};

/// `x-request-id`: kept when sane, generated otherwise, echoed on every response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `x-outrigger-fault`: a request's own fault, when its route allows that (`fault`).
pub const FAULT_HEADER: &str = "x-outrigger-fault";
/// `x-forwarded-client-cert`: the client's identity, set only by outrigger on mTLS listeners;
/// a client's own is removed on every listener before anything reads the request.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// `grpc-timeout`: a gRPC request's deadline.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

thread_local! {
    /// Request header maps a finished request left behind, cleared, for the next upstream
    /// response head: the map hyper hands us with a request came from its cache of our last
    /// response's map, so passing each request's map on to the next response closes the loop
    /// and no request allocates a map (two allocations and two frees each before).
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };

    /// Each worker thread's UUID v7 counter: ids a thread makes are ordered even within one
    /// millisecond, without `Uuid::now_v7`'s process-wide mutex on every request.
    static ID_CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
}

/// Which of the fields the proxy looks up by name a request carries, from one pass over its
/// names. Most requests carry few of them, and a lookup costs 80-100 instructions whether it
/// finds the field or not (a miss on a non-standard name hashes the whole name): skipping
/// the misses saves more than the pass costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// `x-request-id`.
    pub request_id: bool,
    /// `traceparent`.
    pub traceparent: bool,
    /// `tracestate`.
    pub tracestate: bool,
    /// `b3` or any `x-b3-*`.
    pub b3: bool,
    /// The fault-injection header (`x-outrigger-fault`).
    pub fault: bool,
    /// `x-forwarded-for`, `x-forwarded-proto` or `forwarded`.
    pub forwarding: bool,
    /// `host`.
    pub host: bool,
    /// `accept` (read for HTML error pages).
    pub accept: bool,
    /// `content-type` (read to tell gRPC).
    pub content_type: bool,
    /// `upgrade`.
    pub upgrade: bool,
    /// `x-forwarded-client-cert` (always removed: only outrigger sets it).
    pub client_cert: bool,
}

/// One pass over the request's field names (see [`Carried`]).
pub fn carried(headers: &HeaderMap) -> Carried {
    let mut c = Carried::default();
    for name in headers.keys() {
        match name.as_str() {
            "x-request-id" => c.request_id = true,
            "traceparent" => c.traceparent = true,
            "tracestate" => c.tracestate = true,
            FAULT_HEADER => c.fault = true,
            "x-forwarded-for" | "x-forwarded-proto" | "forwarded" => c.forwarding = true,
            "host" => c.host = true,
            "accept" => c.accept = true,
            "content-type" => c.content_type = true,
            "upgrade" => c.upgrade = true,
            "x-forwarded-client-cert" => c.client_cert = true,
            n if n == "b3" || n.starts_with("x-b3-") => c.b3 = true,
            _ => {}
        }
    }
    c
}

/// The request id for this request: the inbound `x-request-id` if it is 1–128 characters
/// of `[A-Za-z0-9._-]`, otherwise a new UUID v7 (time-ordered, so ids sort by arrival;
/// within one millisecond, among the ids of one worker thread).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    request_id_of(headers, carried(headers), std::time::Instant::now())
}

/// [`request_id`], when the request's fields have been scanned already and the request's
/// arrival read off the clock: a new id's timestamp is that instant on the wall clock.
pub fn request_id_of(headers: &HeaderMap, carried: Carried, arrived: std::time::Instant) -> HeaderValue {
    if carried.request_id
        && let Some(v) = headers.get(X_REQUEST_ID)
    {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return v.clone();
        }
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    // Not `Timestamp::now`: it goes through a u128 of nanoseconds and divides it back (about
    // 150 instructions), panics on a clock set before 1970, and reads the clock again.
    let since_epoch = crate::sys::clock::wall_since_epoch(arrived);
    let id = ID_CONTEXT
        .with(|context| {
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                context,
                since_epoch.as_secs(),
                since_epoch.subsec_nanos(),
            ))
        })
        .hyphenated()
        .encode_lower(&mut buf);
    // A hyphenated UUID is always a valid header value. Carved, not allocated: see `arena`.
    HeaderValue::from_maybe_shared(crate::sys::arena::copy(id.as_bytes()))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// How many spare maps a thread keeps, and how large a map may be to be kept (a request with
/// hundreds of fields should not leave its map behind for good).
const SPARE_MAPS_KEPT: usize = 8;
const SPARE_MAP_MAX_CAPACITY: usize = 64;

/// An empty header map, reused when a finished request left one ([`recycle_map`]).
pub(crate) fn spare_map(fields: usize) -> HeaderMap {
    SPARE_MAPS
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| HeaderMap::with_capacity(fields))
}

/// Keeps `map`, cleared, for [`spare_map`].
pub(crate) fn recycle_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_MAX_CAPACITY {
        return;
    }
    map.clear();
    let _ = SPARE_MAPS.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_MAPS_KEPT {
            spare.push(map);
        }
    });
}

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether a `Connection` header lists `token` (lower-case; matched in any case).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| list_items(v.as_bytes()).any(|t| is_named(t, token.as_bytes())))
}

/// Whether `raw` is `lower` (lower-case letters and `-`) in any case, for the bytes of a field
/// name or value as httparse and `http` accept them, which never include CR: a byte OR 0x20
/// is a lower-case letter only when it is that letter in either case, and `-` only when it
/// is `-` or CR. Branch-free, unlike `eq_ignore_ascii_case` (eight instructions a byte).
pub(crate) fn is_named(raw: &[u8], lower: &[u8]) -> bool {
    raw.len() == lower.len() && raw.iter().zip(lower).fold(0u8, |diff, (r, l)| diff | ((r | 0x20) ^ l)) == 0
}

/// The elements of a comma-separated field value (`Connection`, `Content-Length`,
/// `Transfer-Encoding`), trimmed; empty ones included. On bytes: the tokens that matter are
/// ASCII, and checking that a value is text first cost more than the rest (it runs on every
/// upstream response).
pub(crate) fn list_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Proxy-Connection`,
/// `Keep-Alive`, `TE` (except `te: trailers`, which gRPC needs end to end),
/// `Transfer-Encoding`, and `Upgrade` unless this proxy is performing the upgrade — in which
/// case `Connection: upgrade` is put back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // One pass over the names (cheap comparisons for standard headers) says which of these
    // are present; only those are removed. Most requests carry none, most responses only
    // `Connection: keep-alive`.
    let mut present = Present::default();
    for k in headers.keys() {
        if k == CONNECTION {
            present.connection = true;
        } else if k == KEEP_ALIVE || k == TRANSFER_ENCODING || k == UPGRADE || k == PROXY_CONNECTION {
            present.other = true;
        } else if k == TE {
            present.te = true;
        }
    }
    if present.connection {
        // Usually `Connection: keep-alive`: no list to build then.
        let mut named: Vec<HeaderName> = Vec::new();
        for token in headers
            .get_all(CONNECTION)
            .iter()
            .filter(|v| v.to_str().is_ok())
            .flat_map(|v| list_items(v.as_bytes()))
        {
            if is_named(token, b"keep-alive") || is_named(token, b"close") {
                continue; // Keep-Alive is removed below; `close` names no header.
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
        for name in named {
            if !(upgrading && name == UPGRADE) && name != TE {
                headers.remove(&name);
            }
        }
        headers.remove(CONNECTION);
    }
    if present.other {
        headers.remove(PROXY_CONNECTION);
        headers.remove(KEEP_ALIVE);
        headers.remove(TRANSFER_ENCODING);
        if !upgrading {
            headers.remove(UPGRADE);
        }
    }
    if present.te {
        let te_trailers = headers
            .get_all(TE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        headers.remove(TE);
        if te_trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrading {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Which hop-by-hop headers a message carries.
#[derive(Default)]
struct Present {
    connection: bool,
    te: bool,
    /// `Keep-Alive`, `Transfer-Encoding`, `Upgrade`, `Proxy-Connection`.
    other: bool,
}

/// A client connection's forwarding header values, made once per connection so that a request
/// without forwarding headers of its own costs no allocation.
#[derive(Clone, Debug)]
pub struct Forwarding {
    pub(crate) proto: &'static str,
    /// The peer, as an `X-Forwarded-For` element.
    pub(crate) xff: Option<HeaderValue>,
    /// `for=<peer>;proto=<proto>`, as a `Forwarded` element (RFC 7239: IPv6 quoted and bracketed).
    pub(crate) forwarded: Option<HeaderValue>,
}

impl Forwarding {
    /// The values for a connection from `peer` over `proto`.
    pub fn new(peer: IpAddr, proto: &'static str) -> Self {
        let element = match peer {
            IpAddr::V4(_) => format!("for={peer};proto={proto}"),
            IpAddr::V6(_) => format!("for=\"[{peer}]\";proto={proto}"),
        };
        Forwarding {
            proto,
            xff: HeaderValue::from_str(&peer.to_string()).ok(),
            forwarded: HeaderValue::from_str(&element).ok(),
        }
    }
}

/// `item` appended to the list `prior` (`a, b`); `prior` unchanged if the result would not
/// be a valid field value.
pub(crate) fn append_to_list(prior: Option<HeaderValue>, item: &HeaderValue) -> HeaderValue {
    let Some(prior) = prior.filter(|p| !p.is_empty()) else {
        return item.clone();
    };
    let mut v = Vec::with_capacity(prior.len() + 2 + item.len());
    v.extend_from_slice(prior.as_bytes());
    v.extend_from_slice(b", ");
    v.extend_from_slice(item.as_bytes());
    HeaderValue::from_bytes(&v).unwrap_or(prior)
}

/// Whether every `%` in `path` starts a valid escape (`%` and two hex digits).
pub fn valid_percent_encoding(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// What a byte may be in a `Host` value: 0 never, 1 a plain name byte, 2 `:`, 3 one that
/// needs the careful check (`[`, `]`). `%` is never allowed: RFC 3986 lets a registered name
/// hold percent-escapes, but `http::uri::Authority` (what an HTTP/2 upstream's `:authority`
/// is parsed with) refuses them outside brackets, and no real host needs one.
const HOST_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            1
        } else {
            match b {
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => 1,
                b':' => 2,
                b'[' | b']' => 3,
                _ => 0,
            }
        };
        i += 1;
    }
    table
};

/// Whether `value` is a `Host` value (RFC 9110 §7.2: `uri-host [ ":" port ]`): a
/// registered name (unreserved, sub-delims; no percent-escapes), an IPv4 address or a bracketed
/// IPv6 literal, and an optional port of up to five digits. No userinfo, path or spaces.
/// Empty is allowed (RFC 9112 §3.2: a target without an authority). At least as strict as
/// `http::uri::Authority` (tested against it). Runs on every request: one pass over a table
/// for the usual `name[:port]`.
pub fn valid_authority(value: &[u8]) -> bool {
    // The usual `name[:port]`: one tight scan to the first byte that is not a name byte,
    // which must be the port's colon. Brackets, escapes and anything odd go the careful way.
    match value.iter().position(|&b| HOST_BYTES[usize::from(b)] != 1) {
        None => true,
        Some(i) if value[i] == b':' && valid_port(i, value) => true,
        Some(_) => valid_authority_carefully(value),
    }
}

/// A non-empty name before the colon at `colon`, and one to five digits after it.
fn valid_port(colon: usize, value: &[u8]) -> bool {
    let port = &value[colon + 1..];
    colon > 0 && (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit)
}

/// [`valid_authority`] for values with brackets or several colons.
fn valid_authority_carefully(value: &[u8]) -> bool {
    let (host, colon) = match value.iter().rposition(|&b| b == b':') {
        // A colon inside a bracketed literal is not a port separator.
        Some(i) if !value[i..].contains(&b']') => (&value[..i], Some(i)),
        _ => (value, None),
    };
    if colon.is_some_and(|i| !valid_port(i, value)) {
        return false;
    }
    match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        _ => host.iter().all(|&b| HOST_BYTES[usize::from(b)] == 1),
    }
}

/// Whether a field may travel in a trailer section (RFC 9110 §6.5.1): not one that frames
/// the message, routes it, authenticates it, modifies the request or controls the response,
/// nor one this proxy sets or reads as the caller's identity or trace. A trailer arrives
/// after the request was routed and checked, so such a field there could only mislead the
/// peer (a `host` or `authorization` merged in late).
fn may_be_trailer(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "content-encoding"
            | "content-type"
            | "content-range"
            | "trailer"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "upgrade"
            | "host"
            | "expect"
            | "max-forwards"
            | "range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "if-range"
            | "cache-control"
            | "pragma"
            | "authorization"
            | "proxy-authorization"
            | "www-authenticate"
            | "proxy-authenticate"
            | "cookie"
            | "set-cookie"
            | "age"
            | "expires"
            | "date"
            | "location"
            | "retry-after"
            | "vary"
            | "x-request-id"
            | "traceparent"
            | "tracestate"
            | "b3"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "forwarded"
            | "x-forwarded-client-cert"
            | "x-real-ip"
            | "grpc-timeout"
            | "outrigger-error"
            | "outrigger-fallback"
            | FAULT_HEADER
    ) && !name.as_str().starts_with("x-b3-")
}

/// Removes from a trailer section every field that may not be a trailer ([`may_be_trailer`]);
/// gRPC's `grpc-status` and `grpc-message` and other application fields pass.
pub(crate) fn strip_trailers(trailers: &mut HeaderMap) {
    if trailers.keys().all(may_be_trailer) {
        return;
    }
    let all = std::mem::take(trailers);
    let mut current = None;
    for (name, value) in all {
        if let Some(name) = name {
            current = may_be_trailer(&name).then_some(name);
        }
        if let Some(name) = &current {
            trailers.append(name.clone(), value);
        }
    }
}

/// The size of the request head as a client sent it: request line and header lines.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    line + headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// Takes the fields that may not be trailers out of a trailers frame
/// ([`strip_trailers`]); data frames pass as they are.
pub(crate) fn strip_frame_trailers(frame: &mut http_body::Frame<bytes::Bytes>) {
    if let Some(trailers) = frame.trailers_mut() {
        crate::http::headers::strip_trailers(trailers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_in_any_case_and_nothing_else() {
        // Every byte a head can hold (all but CR) at every position of every name or token
        // matched this way.
        let bytes: Vec<u8> = (0u8..=255).filter(|b| *b != b'\r').collect();
        for lower in [
            &b"close"[..],
            b"connection",
            b"keep-alive",
            b"content-length",
            b"transfer-encoding",
            b"chunked",
            b"upgrade",
            b"date",
            b"server",
            b"content-type",
            b"cache-control",
        ] {
            assert!(is_named(&lower.to_ascii_uppercase(), lower));
            for at in 0..lower.len() {
                for &b in &bytes {
                    let mut raw = lower.to_vec();
                    raw[at] = b;
                    assert_eq!(is_named(&raw, lower), raw.eq_ignore_ascii_case(lower), "{raw:?}");
                }
            }
        }
    }

    #[test]
    fn spare_maps_come_back_empty_and_large_or_surplus_ones_are_let_go() {
        std::thread::spawn(|| {
            assert_eq!(spare_map(4).len(), 0, "nothing recycled yet: a new map");
            let mut used = HeaderMap::new();
            used.insert(X_REQUEST_ID, HeaderValue::from_static("a"));
            used.append("x-many", HeaderValue::from_static("1"));
            used.append("x-many", HeaderValue::from_static("2"));
            let capacity = used.capacity();
            recycle_map(used);
            let again = spare_map(4);
            assert!(again.is_empty() && again.get("x-many").is_none());
            assert_eq!(again.capacity(), capacity, "the same allocation");

            let mut big = HeaderMap::new();
            for i in 0..(SPARE_MAP_MAX_CAPACITY + 1) {
                big.insert(
                    HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            recycle_map(big);
            assert_eq!(spare_map(0).capacity(), 0, "a map above the limit is not kept");

            for _ in 0..(SPARE_MAPS_KEPT + 3) {
                recycle_map(HeaderMap::with_capacity(4));
            }
            let kept = std::iter::from_fn(|| Some(spare_map(0)))
                .take_while(|m| m.capacity() > 0)
                .count();
            assert_eq!(kept, SPARE_MAPS_KEPT);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn new_request_ids_are_unique_and_ordered_within_a_thread() {
        let ids: Vec<String> = (0..5000)
            .map(|_| request_id(&HeaderMap::new()).to_str().unwrap().to_owned())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        let other = std::thread::spawn(|| request_id(&HeaderMap::new())).join().unwrap();
        assert!(!ids.iter().any(|id| id == other.to_str().unwrap()));
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(request_id(&h), "abc-123_x.y");
        for bad in ["has space", "semi;colon", ""] {
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = request_id(&h);
            assert_eq!(id.len(), 36, "{bad:?} -> {id:?}");
            assert_eq!(
                uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap().get_version_num(),
                7
            );
        }
        h.insert(X_REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(request_id(&h).len(), 36);
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(PROXY_CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-keep"]);
        assert_eq!(h[TE], "trailers");
    }

    #[test]
    fn each_hop_by_hop_header_is_removed_on_its_own_too() {
        for (name, value) in [
            (KEEP_ALIVE, "timeout=5"),
            (TRANSFER_ENCODING, "chunked"),
            (UPGRADE, "h2c"),
            (PROXY_CONNECTION, "keep-alive"),
            (TE, "gzip"),
            (CONNECTION, "close"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static(value));
            h.insert("x-keep", HeaderValue::from_static("yes"));
            strip_hop_by_hop(&mut h, false);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-keep"], "{name} was kept");
        }
        let mut plain = HeaderMap::new();
        plain.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn upgrades_keep_upgrade_and_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
    }

    #[test]
    fn percent_escapes_must_be_complete() {
        assert!(valid_percent_encoding("/a%20b/%2F"));
        assert!(!valid_percent_encoding("/a%2"));
        assert!(!valid_percent_encoding("/a%zz"));
        assert!(!valid_percent_encoding("/%"));
        assert!(valid_percent_encoding("/plain"));
    }

    #[test]
    fn host_values_are_authorities_without_userinfo() {
        for good in [
            "",
            "example.com",
            "example.com:8080",
            "a-b.c_d~e",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]:65535",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "user@example.com",
            "example.com/path",
            "example.com?q",
            "exa mple.com",
            "example.com:",
            ":80",
            "example.com:80:80",
            "example.com:123456",
            "example.com:8o",
            "[::1",
            "::1]",
            "[]",
            "[g::1]",
            "ex%4",
            "ex%zz.com",
            // The `http` crate refuses percent-escapes in a host (proptest found `%ff`).
            "ex%41mple.com",
            "%ff",
            "[fe80::1%25eth0]",
            "a\tb",
            "\"quoted\"",
            "example.com#frag",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// What passes as a `Host` also parses as an authority for `http` (the parser the
        /// upstream request's URI goes through), without userinfo: at least as strict.
        #[test]
        fn a_valid_host_is_an_authority_for_the_http_crate(
            bytes in proptest::collection::vec(proptest::sample::select(
                b"aZ09-._~!$&'()*+,;=:[]@%/?# \t\"<>{}|\\^`fF".to_vec()), 1..24),
        ) {
            if valid_authority(&bytes) {
                let parsed = http::uri::Authority::try_from(&bytes[..]);
                proptest::prop_assert!(parsed.is_ok(), "{:?}", String::from_utf8_lossy(&bytes));
                proptest::prop_assert!(!bytes.contains(&b'@'));
            }
        }
    }

    #[test]
    fn trailers_lose_framing_routing_auth_and_proxy_fields_only() {
        let mut t = HeaderMap::new();
        for (name, value) in [
            ("grpc-status", "0"),
            ("host", "payments.internal"),
            ("x-sum", "1"),
            ("content-length", "5"),
            ("authorization", "Bearer x"),
            ("x-sum", "2"),
            ("x-b3-traceid", "1"),
            ("transfer-encoding", "chunked"),
            ("grpc-message", "ok"),
        ] {
            t.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_trailers(&mut t);
        let kept: Vec<(&str, &str)> = t.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(
            kept,
            [
                ("grpc-status", "0"),
                ("x-sum", "1"),
                ("x-sum", "2"),
                ("grpc-message", "ok")
            ]
        );
        let mut clean = HeaderMap::new();
        clean.insert("grpc-status", HeaderValue::from_static("0"));
        strip_trailers(&mut clean);
        assert_eq!(clean.len(), 1);
    }
}
