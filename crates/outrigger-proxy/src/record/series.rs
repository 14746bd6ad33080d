//! Metric children resolved once, not per request.
//!
//! `HistogramVec::with_label_values` hashes every label value on each call. The labels of the
//! request-duration histograms are the route (or upstream), fixed per route, and the method
//! and status, a handful of combinations in practice: each combination is looked up once and
//! kept, keyed by one integer. Failures (with an error code) are rare and go the long way.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use http::Method;
use prometheus::{Histogram, HistogramVec};

/// `"100"` … `"999"`: status labels without formatting a number per request.
static STATUS_LABELS: LazyLock<Vec<String>> = LazyLock::new(|| (0..1000).map(|s| s.to_string()).collect());

/// The status as a metric label (`""` for none).
pub(crate) fn status_label(status: Option<u16>) -> &'static str {
    match status {
        Some(s) if (100..1000).contains(&s) => STATUS_LABELS[usize::from(s)].as_str(),
        _ => "",
    }
}

/// The method as a bounded label: standard methods by name, others `_OTHER`.
pub(crate) fn method_label(m: &Method) -> (&'static str, u8) {
    match *m {
        Method::GET => ("GET", 0),
        Method::HEAD => ("HEAD", 1),
        Method::POST => ("POST", 2),
        Method::PUT => ("PUT", 3),
        Method::DELETE => ("DELETE", 4),
        Method::PATCH => ("PATCH", 5),
        Method::OPTIONS => ("OPTIONS", 6),
        Method::TRACE => ("TRACE", 7),
        Method::CONNECT => ("CONNECT", 8),
        _ => ("_OTHER", 9),
    }
}

/// The successful-request series of one route or upstream, by method and status.
pub(crate) struct SuccessSeries {
    vec: HistogramVec,
    name: String,
    /// Empty labels after method and status (`error_type`, and `error_class` for servers).
    blanks: usize,
    /// By `method index << 16 | status`. foldhash: the default SipHash of this one integer
    /// cost more than the rest of the lookup, twice per request.
    cache: RwLock<HashMap<u32, Histogram, foldhash::fast::FixedState>>,
}

impl SuccessSeries {
    /// Series of `vec` whose first label is `name`, then method and status, then `blanks`
    /// empty labels.
    pub(crate) fn new(vec: HistogramVec, name: &str, blanks: usize) -> Self {
        SuccessSeries {
            vec,
            name: name.to_owned(),
            blanks,
            cache: RwLock::new(HashMap::default()),
        }
    }

    /// Requests observed so far through this series (for the live explanation's traffic).
    pub(crate) fn count(&self) -> u64 {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|h| h.get_sample_count())
            .sum()
    }

    /// The histogram for `method` and `status`.
    pub(crate) fn get(&self, method: &Method, status: Option<u16>) -> Histogram {
        let (m, mi) = method_label(method);
        let key = u32::from(mi) << 16 | u32::from(status.unwrap_or(0));
        if let Some(h) = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return h.clone();
        }
        let mut labels = [""; 5];
        labels[0] = &self.name;
        labels[1] = m;
        labels[2] = status_label(status);
        let h = self.vec.with_label_values(&labels[..3 + self.blanks]);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h.clone());
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_series_are_the_labelled_children() {
        let vec = HistogramVec::new(prometheus::HistogramOpts::new("t", "t"), &["r", "m", "s", "e"]).unwrap();
        let s = SuccessSeries::new(vec.clone(), "api", 1);
        s.get(&Method::GET, Some(200)).observe(1.0);
        s.get(&Method::GET, Some(200)).observe(1.0);
        s.get(&Method::from_bytes(b"PURGE").unwrap(), Some(204)).observe(1.0);
        assert_eq!(vec.with_label_values(&["api", "GET", "200", ""]).get_sample_count(), 2);
        assert_eq!(
            vec.with_label_values(&["api", "_OTHER", "204", ""]).get_sample_count(),
            1
        );
        assert_eq!(status_label(Some(503)), "503");
        assert_eq!(status_label(None), "");
    }
}
