//! Fault injection for outage rehearsals: a route's configured delay and abort, and, when
//! the route allows it, a per-request fault asked for with `x-outrigger-fault`.

use std::time::Duration;

use http::HeaderMap;

use outrigger_config::Fault;

/// The request header that asks for a fault: `abort=503`, `delay=500ms`, or both
/// separated by a comma.
pub(crate) use crate::http::headers::FAULT_HEADER;

/// The faults chosen for one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Chosen {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer this status instead of calling the upstream.
    pub abort: Option<u16>,
}

impl Chosen {
    /// A short description for logs: `delay=500ms`, `abort=503`.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.delay {
            parts.push(format!("delay={}", outrigger_resilience::humanize(d)));
        }
        if let Some(s) = self.abort {
            parts.push(format!("abort={s}"));
        }
        parts.join(",")
    }
}

/// Rolls the route's dice and reads the request's header. `Err` when the header is
/// allowed but malformed.
/// `draw` gives uniform numbers in `[0, 1)` (the caller's random source, so a test can
/// fix it): one per configured fault.
pub(crate) fn choose(
    fault: &Fault,
    headers: &HeaderMap,
    mut draw: impl FnMut() -> f64,
) -> Result<Chosen, &'static str> {
    let mut roll = |percent: f64| percent > 0.0 && draw() * 100.0 < percent;
    let mut chosen = Chosen {
        delay: fault.delay.as_ref().filter(|d| roll(d.percent)).map(|d| d.duration),
        abort: fault.abort.as_ref().filter(|a| roll(a.percent)).map(|a| a.status),
    };
    if fault.allow_header
        && let Some(v) = headers.get(FAULT_HEADER)
    {
        let text = v.to_str().map_err(|_| "the x-outrigger-fault header is not text")?;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some(("abort", s)) => {
                    let status = s.parse::<u16>().ok().filter(|s| (100..=599).contains(s));
                    chosen.abort = Some(status.ok_or("x-outrigger-fault abort= needs an HTTP status such as 503")?);
                }
                Some(("delay", d)) => {
                    chosen.delay = Some(
                        humantime::parse_duration(d)
                            .map_err(|_| "x-outrigger-fault delay= needs a duration such as 500ms")?,
                    );
                }
                _ => return Err("x-outrigger-fault takes abort=<status> and/or delay=<duration>"),
            }
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::{FaultAbort, FaultDelay};

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(FAULT_HEADER, v.parse().unwrap());
        h
    }

    #[test]
    fn a_fault_strikes_when_the_draw_is_under_its_percentage() {
        let half = Fault {
            abort: Some(FaultAbort {
                percent: 50.0,
                status: 503,
            }),
            delay: Some(FaultDelay {
                percent: 10.0,
                duration: Duration::from_secs(1),
            }),
            allow_header: false,
        };
        let mut draws = [0.05, 0.49].into_iter();
        let chosen = choose(&half, &HeaderMap::new(), || draws.next().unwrap()).unwrap();
        assert_eq!(chosen.delay, Some(Duration::from_secs(1)));
        assert_eq!(chosen.abort, Some(503));
        let mut draws = [0.10, 0.50].into_iter();
        let chosen = choose(&half, &HeaderMap::new(), || draws.next().unwrap()).unwrap();
        assert_eq!(chosen, Chosen::default());
    }

    #[test]
    fn percentages_of_zero_and_hundred_are_exact() {
        let always = Fault {
            abort: Some(FaultAbort {
                percent: 100.0,
                status: 503,
            }),
            delay: Some(FaultDelay {
                percent: 0.0,
                duration: Duration::from_secs(1),
            }),
            allow_header: false,
        };
        for _ in 0..1000 {
            assert_eq!(
                choose(&always, &HeaderMap::new(), fastrand::f64).unwrap(),
                Chosen {
                    delay: None,
                    abort: Some(503)
                }
            );
        }
    }

    #[test]
    fn the_header_is_honoured_only_when_allowed_and_must_be_well_formed() {
        let off = Fault::default();
        assert_eq!(
            choose(&off, &headers("abort=500"), fastrand::f64).unwrap(),
            Chosen::default()
        );
        let on = Fault {
            allow_header: true,
            ..Fault::default()
        };
        assert_eq!(
            choose(&on, &headers("abort=500, delay=20ms"), fastrand::f64).unwrap(),
            Chosen {
                delay: Some(Duration::from_millis(20)),
                abort: Some(500)
            }
        );
        assert!(choose(&on, &headers("abort=9000"), fastrand::f64).is_err());
        assert!(choose(&on, &headers("explode"), fastrand::f64).is_err());
    }
}
