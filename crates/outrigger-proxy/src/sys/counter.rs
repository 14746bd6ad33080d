//! A slot in a shared counter, given back when dropped: a request counted against its
//! listener's `max_in_flight` for as long as its record lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One unit of `count`, held until dropped.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot for a unit already added to `count`.
    pub(crate) fn taken(count: Arc<AtomicUsize>) -> Slot {
        Slot(count)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
