//! A GPU routine chosen once for the whole process (as burn's own kernel
//! choices are), with counts of the problems it ran and declined: what
//! [`crate::gpu_matmul`] and [`crate::gpu_attention`] both keep.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Whether this build can choose a routine other than the default: it needs
/// the `gpu-routines` feature, and a fused tensor is not a CubeTensor.
pub(crate) const CAN_CHOOSE: bool = cfg!(all(feature = "gpu-routines", not(feature = "fusion")));

/// One of `all` (the first is the default), stored as its index.
pub(crate) struct RoutineChoice<T: 'static> {
    all: &'static [T],
    index: AtomicU8,
    ran: AtomicUsize,
    declined: AtomicUsize,
}

impl<T: Copy + PartialEq> RoutineChoice<T> {
    pub(crate) const fn new(all: &'static [T]) -> Self {
        Self { all, index: AtomicU8::new(0), ran: AtomicUsize::new(0), declined: AtomicUsize::new(0) }
    }

    /// Whether [`Self::set`] would take `routine`: the default, or any in a
    /// build that can choose ([`CAN_CHOOSE`]).
    pub(crate) fn can_set(&self, routine: T) -> bool {
        CAN_CHOOSE || routine == self.all[0]
    }

    /// Choose `routine`; `false` (and nothing changes) when it is not the
    /// default and this build cannot choose ([`CAN_CHOOSE`]).
    pub(crate) fn set(&self, routine: T) -> bool {
        if !self.can_set(routine) {
            return false;
        }
        let index = self.all.iter().position(|r| *r == routine).expect("listed");
        self.index.store(index as u8, Ordering::Relaxed);
        true
    }

    pub(crate) fn get(&self) -> T {
        self.all[self.index.load(Ordering::Relaxed) as usize]
    }

    /// Count one problem the chosen routine ran (`true`) or declined.
    pub(crate) fn count(&self, ran: bool) {
        let counter = if ran { &self.ran } else { &self.declined };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// How many problems it ran, and how many it declined, so far.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.ran.load(Ordering::Relaxed), self.declined.load(Ordering::Relaxed))
    }
}
