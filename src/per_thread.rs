//! Per-thread slots: what every request writes is kept apart per thread, so
//! that two cores never write one cache line on the hit path.
//!
//! A thread takes a slot index the first time it asks ([`slot`]), round
//! robin over [`slots`] (twice the CPUs, a power of two, at most 64). With
//! no more busy threads than slots each has its own; beyond that, threads
//! share a slot, which stays correct (every slot is safe to share) and only
//! costs contention.
//!
//! - [`PerThread`]: one value per slot, each on its own cache lines; the
//!   reader (a metrics scrape) walks them all.
//! - [`Handles`]: reference-counted handles to one shared value, one
//!   handle allocation per slot. Cloning an `Arc` writes its count, which
//!   every core shares; cloning a [`Handle`] writes only the count of the
//!   thread's own slot.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// A value alone on its cache lines (128 bytes: two lines, as adjacent-line
/// prefetchers pull pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// How many slots there are: twice the CPUs this process may use, rounded
/// up to a power of two, between 4 and 64.
pub fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus * 2).next_power_of_two().clamp(4, 64)
    })
}

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Gives the calling thread slot `index` (modulo [`slots`]): the server's
/// worker `i` takes slot `i`, so workers never share one however many
/// other threads came first.
pub fn claim(index: usize) {
    SLOT.with(|s| s.set(index & (slots() - 1)));
}

/// This thread's slot index, in `0..slots()`.
pub fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SLOT.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) & (slots() - 1);
            s.set(i);
        }
        i
    })
}

/// One `T` per slot.
#[derive(Debug)]
pub struct PerThread<T> {
    slots: Box<[Padded<T>]>,
}

impl<T: Default> Default for PerThread<T> {
    fn default() -> Self {
        Self {
            slots: (0..slots()).map(|_| Padded(T::default())).collect(),
        }
    }
}

impl<T> PerThread<T> {
    /// The calling thread's value.
    pub fn local(&self) -> &T {
        // In bounds: slot() < slots() == self.slots.len().
        &self.slots[slot() % self.slots.len()]
    }

    /// Every slot's value (for summing).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }
}

/// Handles to one shared `T`, one per slot; cheap to clone (the set is
/// shared).
#[derive(Debug)]
pub struct Handles<T> {
    shared: Arc<T>,
    slots: Arc<[Handle<T>]>,
}

impl<T> Clone for Handles<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            slots: self.slots.clone(),
        }
    }
}

impl<T> Handles<T> {
    /// Handles to `value`.
    pub fn new(value: Arc<T>) -> Self {
        let slots = (0..slots())
            .map(|_| Handle(Arc::new(Padded(value.clone()))))
            .collect();
        Self {
            shared: value,
            slots,
        }
    }

    /// A handle for the calling thread: its clone writes only this slot's
    /// count.
    pub fn local(&self) -> Handle<T> {
        self.slots[slot() % self.slots.len()].clone()
    }

    /// The value itself.
    pub fn shared(&self) -> &Arc<T> {
        &self.shared
    }
}

impl<T> Deref for Handles<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.shared
    }
}

/// A reference to a shared `T` whose count lives in one slot.
#[derive(Debug)]
pub struct Handle<T>(Arc<Padded<Arc<T>>>);

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Deref for Handle<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0 .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_slot_and_slots_are_in_range() {
        let n = slots();
        assert!(n.is_power_of_two() && (4..=64).contains(&n));
        let mut seen: Vec<usize> = (0..n)
            .map(|_| std::thread::spawn(slot).join().unwrap())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        // Other tests' threads take slots too, so the n threads above need
        // not get all n; but a thread keeps its slot.
        assert!(seen.iter().all(|&s| s < n));
        assert_eq!(slot(), slot());
        let claimed = std::thread::spawn(move || {
            claim(n + 1);
            slot()
        });
        assert_eq!(claimed.join().unwrap(), 1);
    }

    #[test]
    fn handles_reach_one_value_through_separate_counts() {
        let h = Handles::new(Arc::new(7u32));
        let a = h.local();
        let b = std::thread::spawn({
            let h = h.clone();
            move || *h.local()
        })
        .join()
        .unwrap();
        assert_eq!((*a, b, *h), (7, 7, 7));
        // One count per slot, plus the shared one.
        assert_eq!(Arc::strong_count(h.shared()), slots() + 1);
    }

    #[test]
    fn padded_values_do_not_share_lines() {
        let p: PerThread<u64> = PerThread::default();
        let v: Vec<usize> = p.iter().map(|x| x as *const u64 as usize).collect();
        assert!(v.windows(2).all(|w| w[1] - w[0] >= 128));
    }
}
