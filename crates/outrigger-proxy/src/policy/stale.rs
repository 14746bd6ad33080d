//! Stale-if-error (RFC 5861 in spirit): a route's last good answer to each GET, kept in a
//! memory-bounded store and served, marked `outrigger-fallback: stale` and with its `Age`,
//! when the upstream fails for an upstream-class reason.
//!
//! Kept: answers 200, 203 and 204 to GETs without `Range`, whose `Cache-Control` allows a
//! shared cache to keep and reuse them without revalidating (no `no-store`, `private`,
//! `no-cache`, `must-revalidate`, `proxy-revalidate`), without `Set-Cookie` and not
//! `Vary: *`. Requests with `Authorization` or `Cookie` are neither kept nor answered from
//! the store unless the route says `key_by_credentials`; then each credential has its own
//! entries (keyed by a SHA-256 of the values, never the values). One answer per URL; with
//! `Vary`, it is served only to a request whose varying headers are the same. The least
//! recently used answers make room; nothing is kept longer than `max_age`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, COOKIE, HOST, HeaderMap, HeaderName, HeaderValue, RANGE, SET_COOKIE,
    VARY,
};
use http::request::Parts;
use http::{Method, StatusCode};
use prometheus::{IntCounter, IntGauge};

use outrigger_config::StaleIfError;

/// Bytes counted for each kept answer besides its head and body (the map entry, the
/// recency index, the allocations' own headers).
const ENTRY_OVERHEAD: u64 = 256;

/// A route's store.
pub(crate) struct StaleStore {
    config: StaleIfError,
    /// `outrigger_stale_served_total{route}`.
    pub(crate) served: IntCounter,
    /// `outrigger_stale_bytes{route}`.
    held: IntGauge,
    inner: Mutex<Lru>,
}

/// The answers, and their order of use.
#[derive(Default)]
struct Lru {
    entries: HashMap<Box<[u8]>, Kept>,
    /// Each entry's last use, oldest first.
    recency: BTreeMap<u64, Box<[u8]>>,
    tick: u64,
    bytes: u64,
}

struct Kept {
    tick: u64,
    size: u64,
    stored_at: Instant,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The request's values of the headers the answer varies on.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
}

/// An answer served from the store.
pub(crate) struct Stale {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// How old it is (its `Age`).
    pub(crate) age: Duration,
}

/// The key a request's answer is kept under.
pub(crate) struct Lookup {
    key: Box<[u8]>,
}

impl StaleStore {
    pub(crate) fn new(config: StaleIfError, served: IntCounter, held: IntGauge) -> Self {
        held.set(0);
        StaleStore {
            config,
            served,
            held,
            inner: Mutex::new(Lru::default()),
        }
    }

    /// The settings it was made with (a reload keeps a store whose settings did not change).
    pub(crate) fn config(&self) -> &StaleIfError {
        &self.config
    }

    /// How many answers are kept, and the bytes they take.
    pub(crate) fn held(&self) -> (usize, u64) {
        let lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (lru.entries.len(), lru.bytes)
    }

    /// The key of the upstream request `parts` (after the rewrite: its `Host` is the routed
    /// authority), when its answer may be kept or served at all.
    pub(crate) fn lookup(&self, parts: &Parts) -> Option<Lookup> {
        if parts.method != Method::GET || parts.headers.contains_key(RANGE) {
            return None;
        }
        let credentials = [AUTHORIZATION, COOKIE].iter().any(|h| parts.headers.contains_key(h));
        if credentials && !self.config.key_by_credentials {
            return None;
        }
        let authority = parts
            .headers
            .get(HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()))
            .unwrap_or_default();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes();
        let mut key = Vec::with_capacity(authority.len() + target.len() + 33);
        key.extend_from_slice(authority);
        key.push(b' ');
        key.extend_from_slice(target);
        if credentials {
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            for h in [AUTHORIZATION, COOKIE] {
                for v in parts.headers.get_all(&h) {
                    digest.update(h.as_str().as_bytes());
                    digest.update(b"\0");
                    digest.update(v.as_bytes());
                    digest.update(b"\0");
                }
            }
            key.push(b' ');
            key.extend_from_slice(digest.finish().as_ref());
        }
        Some(Lookup {
            key: key.into_boxed_slice(),
        })
    }

    /// The kept answer for this request, if it is young enough and the request's varying
    /// headers match; counted as served.
    pub(crate) fn serve(&self, lookup: &Lookup, request: &HeaderMap) -> Option<Stale> {
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let kept = lru.entries.get(&lookup.key)?;
        let age = now.saturating_duration_since(kept.stored_at);
        if age > self.config.max_age {
            lru.remove(&lookup.key);
            self.held.set(i64::try_from(lru.bytes).unwrap_or(i64::MAX));
            return None;
        }
        if !kept
            .vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
        {
            return None;
        }
        let stale = Stale {
            status: kept.status,
            headers: kept.headers.clone(),
            body: kept.body.clone(),
            age,
        };
        lru.touch(&lookup.key);
        drop(lru);
        self.served.inc();
        Some(stale)
    }

    /// Starts keeping the upstream's answer to the request, when it may be kept: the body is
    /// copied as it streams to the client and kept when it has ended whole.
    pub(crate) fn tee(
        self: &Arc<Self>,
        lookup: Lookup,
        request: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Box<Tee>> {
        if !matches!(status.as_u16(), 200 | 203 | 204) || headers.contains_key(SET_COOKIE) {
            return None;
        }
        let forbids = |h: &HeaderMap| {
            h.get_all(CACHE_CONTROL).iter().any(|v| {
                v.to_str().unwrap_or("no-store").split(',').any(|d| {
                    let d = d.trim();
                    let name = d.split('=').next().unwrap_or(d).trim();
                    ["no-store", "private", "no-cache", "must-revalidate", "proxy-revalidate"]
                        .iter()
                        .any(|f| name.eq_ignore_ascii_case(f))
                })
            })
        };
        if forbids(headers)
            || request
                .get_all(CACHE_CONTROL)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-store"))
        {
            return None;
        }
        let max = self.config.max_entry_bytes();
        if headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max)
        {
            return None;
        }
        let mut vary = Vec::new();
        for v in headers.get_all(VARY) {
            for name in v.to_str().ok()?.split(',') {
                let name = name.trim();
                if name == "*" {
                    return None;
                }
                if name.is_empty() {
                    continue;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let value = request.get(&name).cloned();
                vary.push((name, value));
            }
        }
        let mut kept_headers = headers.clone();
        crate::http::headers::strip_hop_by_hop(&mut kept_headers, false);
        kept_headers.remove(http::header::AGE);
        Some(Box::new(Tee {
            store: self.clone(),
            key: lookup.key,
            status,
            headers: kept_headers,
            vary,
            body: BytesMut::new(),
            limit: max,
        }))
    }

    fn keep(&self, tee: Tee) {
        let body = tee.body.freeze();
        let head: usize = tee.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        let size = ENTRY_OVERHEAD + tee.key.len() as u64 * 2 + head as u64 + body.len() as u64;
        if size > self.config.max_entry_bytes() {
            return;
        }
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lru.remove(&tee.key);
        while lru.bytes + size > self.config.max_bytes {
            if !lru.evict_oldest() {
                break;
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.recency.insert(tick, tee.key.clone());
        lru.bytes += size;
        lru.entries.insert(
            tee.key,
            Kept {
                tick,
                size,
                stored_at: Instant::now(),
                status: tee.status,
                headers: tee.headers,
                body,
                vary: tee.vary,
            },
        );
        self.held.set(i64::try_from(lru.bytes).unwrap_or(i64::MAX));
    }
}

impl Lru {
    fn remove(&mut self, key: &[u8]) {
        if let Some(k) = self.entries.remove(key) {
            self.recency.remove(&k.tick);
            self.bytes -= k.size;
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.recency.pop_first() else {
            return false;
        };
        if let Some(k) = self.entries.remove(&key) {
            self.bytes -= k.size;
        }
        true
    }

    fn touch(&mut self, key: &[u8]) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(k) = self.entries.get_mut(key) {
            if let Some(key) = self.recency.remove(&k.tick) {
                self.recency.insert(tick, key);
            }
            k.tick = tick;
        }
    }
}

/// An answer being copied as it streams to the client.
pub(crate) struct Tee {
    store: Arc<StaleStore>,
    key: Box<[u8]>,
    status: StatusCode,
    headers: HeaderMap,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    body: BytesMut,
    limit: u64,
}

impl Tee {
    /// A chunk went to the client. False: the answer is too large to keep (drop the tee).
    pub(crate) fn push(&mut self, chunk: &Bytes) -> bool {
        if self.body.len() as u64 + chunk.len() as u64 > self.limit {
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }

    /// The body ended whole: keep the answer.
    pub(crate) fn keep(self) {
        let store = self.store.clone();
        store.keep(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: u64, credentials: bool) -> Arc<StaleStore> {
        Arc::new(StaleStore::new(
            StaleIfError {
                max_age: Duration::from_secs(60),
                max_bytes,
                key_by_credentials: credentials,
            },
            IntCounter::new("t", "t").unwrap(),
            IntGauge::new("g", "g").unwrap(),
        ))
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get(uri).header("host", "api");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn keep(s: &Arc<StaleStore>, p: &Parts, headers: &[(&str, &str)], body: &[u8]) -> bool {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let Some(l) = s.lookup(p) else { return false };
        let Some(mut tee) = s.tee(l, &p.headers, StatusCode::OK, &h) else {
            return false;
        };
        if !tee.push(&Bytes::copy_from_slice(body)) {
            return false;
        }
        (*tee).keep();
        true
    }

    fn served(s: &StaleStore, p: &Parts) -> Option<Bytes> {
        s.serve(&s.lookup(p)?, &p.headers).map(|st| st.body)
    }

    #[test]
    fn kept_answers_are_served_and_what_must_not_be_kept_is_not() {
        let s = store(1 << 20, false);
        let p = parts("/a?x=1", &[]);
        assert!(keep(&s, &p, &[("cache-control", "max-age=5")], b"one"));
        assert_eq!(served(&s, &p).as_deref(), Some(&b"one"[..]));
        assert_eq!(served(&s, &parts("/a?x=2", &[])), None);
        for cc in [
            "no-store",
            "private",
            "no-cache",
            "must-revalidate",
            "max-age=0, Private",
        ] {
            assert!(!keep(&s, &parts("/b", &[]), &[("cache-control", cc)], b"x"), "{cc}");
        }
        assert!(!keep(&s, &parts("/b", &[]), &[("set-cookie", "a=b")], b"x"));
        assert!(!keep(&s, &parts("/b", &[]), &[("vary", "*")], b"x"));
        assert!(!keep(&s, &parts("/b", &[("range", "bytes=0-1")]), &[], b"x"));
        assert!(!keep(&s, &parts("/b", &[("authorization", "Bearer t")]), &[], b"x"));
        assert!(!keep(&s, &parts("/b", &[("cookie", "s=1")]), &[], b"x"));
        // A kept answer is not served to a request with credentials either.
        assert_eq!(served(&s, &parts("/a?x=1", &[("authorization", "Bearer t")])), None);
    }

    #[test]
    fn vary_and_credentials_keep_answers_apart() {
        let s = store(1 << 20, true);
        let gz = parts("/v", &[("accept-encoding", "gzip")]);
        assert!(keep(&s, &gz, &[("vary", "Accept-Encoding")], b"gzipped"));
        assert_eq!(served(&s, &gz).as_deref(), Some(&b"gzipped"[..]));
        assert_eq!(served(&s, &parts("/v", &[])), None);
        assert_eq!(served(&s, &parts("/v", &[("accept-encoding", "br")])), None);
        let alice = parts("/me", &[("authorization", "Bearer alice")]);
        assert!(keep(&s, &alice, &[], b"alice"));
        assert_eq!(served(&s, &alice).as_deref(), Some(&b"alice"[..]));
        assert_eq!(served(&s, &parts("/me", &[("authorization", "Bearer bob")])), None);
        assert_eq!(served(&s, &parts("/me", &[])), None);
    }

    #[test]
    fn the_memory_bound_holds_and_the_least_recently_used_go_first() {
        let s = store(64 * 1024, false);
        let body = vec![b'x'; 1000];
        for i in 0..1000 {
            assert!(keep(&s, &parts(&format!("/item/{i}"), &[]), &[], &body));
            assert!(s.inner.lock().unwrap().bytes <= 64 * 1024);
        }
        let lru = s.inner.lock().unwrap();
        assert!(
            lru.entries.len() > 40 && lru.entries.len() < 64,
            "{}",
            lru.entries.len()
        );
        assert_eq!(lru.entries.len(), lru.recency.len());
        assert_eq!(lru.bytes, lru.entries.values().map(|k| k.size).sum::<u64>());
        drop(lru);
        assert!(served(&s, &parts("/item/999", &[])).is_some());
        assert!(served(&s, &parts("/item/1", &[])).is_none());
        // The oldest still kept, used again, outlives the next oldest.
        let oldest = (0..1000)
            .find(|i| {
                s.inner
                    .lock()
                    .unwrap()
                    .entries
                    .contains_key(format!("api /item/{i}").as_bytes())
            })
            .unwrap();
        assert!(served(&s, &parts(&format!("/item/{oldest}"), &[])).is_some());
        assert!(keep(&s, &parts("/item/new", &[]), &[], &body));
        assert!(served(&s, &parts(&format!("/item/{oldest}"), &[])).is_some());
        assert!(served(&s, &parts(&format!("/item/{}", oldest + 1), &[])).is_none());
        // Too large for an eighth of the store: never kept.
        assert!(!keep(&s, &parts("/big", &[]), &[], &vec![b'x'; 9000]));
    }
}
