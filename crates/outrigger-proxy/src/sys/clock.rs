//! Wall-clock time for a monotonic instant the request path has read already.
//!
//! A clock read is a vDSO `clock_gettime` of about 20 ns on the VMs we measure on (the
//! time-stamp counter read behind it alone is 9 ns), as much as a few hundred instructions.
//! A request needs the monotonic clock for its durations anyway; the wall-clock stamps it
//! needs too (the request id's UUID v7 timestamp, span start and end) are derived from those
//! instants through a per-thread anchor — one monotonic/wall pair — renewed every second,
//! so a step of the system clock shows within a second, and between renewals the stamps
//! follow the monotonic clock (which NTP slews by at most 0.05 %).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

/// How long an anchor serves before the wall clock is read again.
const RENEW: Duration = Duration::from_secs(1);

thread_local! {
    static ANCHOR: Cell<Option<Anchor>> = const { Cell::new(None) };
}

#[derive(Clone, Copy)]
struct Anchor {
    mono: Instant,
    /// The wall clock at `mono`, since the Unix epoch.
    wall: Duration,
}

impl Anchor {
    fn now() -> Anchor {
        Anchor {
            mono: Instant::now(),
            // A clock set before 1970 reads as the epoch rather than failing the request.
            wall: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// `at` on the wall clock, if `at` is within [`RENEW`] of the anchor.
    fn wall_at(self, at: Instant) -> Option<Duration> {
        match at.checked_duration_since(self.mono) {
            Some(after) if after < RENEW => Some(self.wall.saturating_add(after)),
            Some(_) => None,
            None => {
                let before = self.mono.duration_since(at);
                (before < RENEW).then(|| self.wall.saturating_sub(before))
            }
        }
    }
}

/// The wall-clock time (since the Unix epoch) at `at`, a monotonic instant in the past or
/// the present.
pub(crate) fn wall_since_epoch(at: Instant) -> Duration {
    ANCHOR.with(|anchor| {
        if let Some(wall) = anchor.get().and_then(|a| a.wall_at(at)) {
            return wall;
        }
        let fresh = Anchor::now();
        anchor.set(Some(fresh));
        // `at` is not after the fresh anchor; further back than [`RENEW`] it is still
        // placed by the monotonic clock's distance, the best there is.
        fresh.wall.saturating_sub(fresh.mono.saturating_duration_since(at))
    })
}

/// [`wall_since_epoch`] as a [`SystemTime`].
pub(crate) fn wall_at(at: Instant) -> SystemTime {
    // `+` would panic past the platform's last representable time; no real clock gets there.
    SystemTime::UNIX_EPOCH
        .checked_add(wall_since_epoch(at))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_now() -> Duration {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap()
    }

    /// Within a few milliseconds of the system clock read beside it (the reads are not
    /// simultaneous, and a loaded machine may pause the thread between them).
    fn assert_close(derived: Duration, system: Duration) {
        let diff = derived.abs_diff(system);
        assert!(
            diff < Duration::from_millis(50),
            "derived {derived:?} vs system {system:?}"
        );
    }

    #[test]
    fn instants_read_as_the_system_clock_reads() {
        std::thread::spawn(|| {
            let before = system_now();
            let derived = wall_since_epoch(Instant::now());
            let after = system_now();
            assert!(derived + Duration::from_millis(50) >= before && derived <= after + Duration::from_millis(50));
            // Later instants, served by the same anchor, move with the monotonic clock.
            let first = Instant::now();
            std::thread::sleep(Duration::from_millis(20));
            let second = Instant::now();
            let (a, b) = (wall_since_epoch(first), wall_since_epoch(second));
            assert!((b - a).abs_diff(second - first) < Duration::from_millis(50));
            assert_close(b, system_now());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn instants_before_the_anchor_and_past_its_renewal_are_placed_right() {
        std::thread::spawn(|| {
            let old = Instant::now();
            let old_wall = system_now();
            // An anchor made after `old`, then `old` asked for: placed before the anchor.
            std::thread::sleep(Duration::from_millis(5));
            let _ = wall_since_epoch(Instant::now());
            assert_close(wall_since_epoch(old), old_wall);
            // Past the renewal: a fresh anchor, and still the right time.
            std::thread::sleep(RENEW + Duration::from_millis(10));
            let late = Instant::now();
            assert_close(wall_since_epoch(late), system_now());
            // An instant older than the renewal period, asked for after it.
            assert_close(wall_since_epoch(old), old_wall);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_anchor_is_renewed_after_its_period() {
        let anchor = Anchor {
            mono: Instant::now(),
            wall: Duration::from_secs(1_000),
        };
        assert_eq!(
            anchor.wall_at(anchor.mono + Duration::from_millis(999)),
            Some(Duration::from_millis(1_000_999))
        );
        assert_eq!(anchor.wall_at(anchor.mono + RENEW), None);
        if let Some(earlier) = anchor.mono.checked_sub(Duration::from_millis(10)) {
            assert_eq!(anchor.wall_at(earlier), Some(Duration::from_millis(999_990)));
        }
    }
}
