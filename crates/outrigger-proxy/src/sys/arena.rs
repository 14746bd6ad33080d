//! Small byte copies that outlive the buffer they came from — request ids, upstream response
//! heads, short body chunks — carved out of a per-thread chunk instead of one allocation
//! each.
//!
//! Every request made three such copies, each a `malloc` and a `free`, and the first slice
//! of each another `malloc` for the shared header the `bytes` crate puts in front of a
//! buffer once it is shared. With 50 requests in flight glibc's per-thread cache runs dry
//! and those calls cost about 1,000 instructions per request (`benches/instructions.sh` with
//! `h1c50`). A carved copy costs a reference-count increment, and its drop a decrement.
//!
//! A chunk is freed when its last copy is dropped, so one long-lived copy (the id of a
//! request that streams for an hour) keeps at most one chunk alive: `CHUNK` bytes.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Size of a chunk. Small enough that a copy kept alive pins little; large enough that a
/// chunk serves dozens of requests.
const CHUNK: usize = 4096;

/// Larger copies get their own allocation: they are rare, and would use up chunks fast.
const MAX_CARVED: usize = 1024;

thread_local! {
    static CURRENT: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `src` copied into a `Bytes` of its own (which may share a chunk with other copies).
pub(crate) fn copy(src: &[u8]) -> Bytes {
    if src.len() > MAX_CARVED || src.is_empty() {
        return Bytes::copy_from_slice(src);
    }
    CURRENT
        .try_with(|current| {
            let mut chunk = current.borrow_mut();
            if chunk.capacity() < src.len() {
                // Takes the chunk back if every copy from it is gone; otherwise they keep it
                // and this thread starts a new one.
                chunk.reserve(CHUNK);
            }
            chunk.extend_from_slice(src);
            chunk.split().freeze()
        })
        // Only while the thread is being torn down.
        .unwrap_or_else(|_| Bytes::copy_from_slice(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_equal_to_their_source_and_independent_of_each_other() {
        let copies: Vec<(Vec<u8>, Bytes)> = (0..5_000usize)
            .map(|i| {
                let src: Vec<u8> = (0..(i % 300)).map(|j| (i + j) as u8).collect();
                let copy = copy(&src);
                (src, copy)
            })
            .collect();
        for (src, copy) in &copies {
            assert_eq!(&copy[..], &src[..]);
        }
    }

    fn room_left() -> usize {
        CURRENT.with(|c| c.borrow().capacity())
    }

    #[test]
    fn small_copies_are_carved_from_the_chunk_and_large_ones_are_not() {
        let _fresh = copy(&[0u8; 200]); // a chunk with room for the next copies
        let before = room_left();
        let a = copy(b"first");
        let b = copy(b"second");
        assert_eq!(room_left(), before - a.len() - b.len());
        assert_eq!(
            a.as_ptr() as usize + a.len(),
            b.as_ptr() as usize,
            "adjacent in one chunk"
        );

        let big = vec![7u8; MAX_CARVED + 1];
        let c = copy(&big);
        assert_eq!(&c[..], &big[..]);
        assert_eq!(
            room_left(),
            before - a.len() - b.len(),
            "a large copy leaves the chunk alone"
        );
    }

    #[test]
    fn a_chunk_whose_copies_are_all_gone_is_used_again() {
        // A thread of its own, so its first copy starts a chunk.
        std::thread::spawn(|| {
            let first = copy(&[1u8; 100]);
            let start = first.as_ptr() as usize;
            drop(first);
            while room_left() >= 100 {
                drop(copy(&[2u8; 100]));
            }
            let again = copy(&[3u8; 100]);
            assert_eq!(again.as_ptr() as usize, start, "the same memory, not a new chunk");
            let kept = copy(&[4u8; 100]);
            while room_left() >= 100 {
                drop(copy(&[5u8; 100]));
            }
            let moved_on = copy(&[6u8; 100]);
            assert_ne!(
                moved_on.as_ptr() as usize,
                start,
                "a chunk with a live copy is left to it"
            );
            assert_eq!(&kept[..], &[4u8; 100]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn copies_outlive_the_thread_and_the_chunk_they_came_from() {
        let kept = std::thread::spawn(|| {
            let first = copy(b"kept across threads");
            // Use up several chunks so the first one is no longer the thread's own.
            for _ in 0..(3 * CHUNK / 100) {
                drop(copy(&[1u8; 100]));
            }
            first
        })
        .join()
        .unwrap();
        assert_eq!(&kept[..], b"kept across threads");
    }
}
