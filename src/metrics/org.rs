//! The `org` label: organization names as metric label values, bounded.
//!
//! Counters written on the hit path are per thread and indexed, not keyed
//! by name: each organization name gets an [`OrgSlot`] (a small index) the
//! first time an organization of that name is made, and keeps it for the
//! process's life, so a reload that keeps, removes or re-adds an
//! organization never moves its series. Names come from the config only;
//! past [`ORG_SLOTS`] - 1 distinct names, the rest share the last slot,
//! labelled `other`, so the label set stays closed.

use std::sync::{Arc, Mutex};

/// Distinct `org` label values kept (the last one is `other`).
pub const ORG_SLOTS: usize = 32;

/// An organization's index in the per-thread counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgSlot(u8);

impl OrgSlot {
    /// The index.
    pub(super) fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// The names by slot, in the order they were first seen.
static NAMES: Mutex<Vec<Arc<str>>> = Mutex::new(Vec::new());

fn names() -> std::sync::MutexGuard<'static, Vec<Arc<str>>> {
    NAMES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slot of the organization called `name` (made on first use).
pub fn org_slot(name: &str) -> OrgSlot {
    let mut names = names();
    let i = match names.iter().position(|n| &**n == name) {
        Some(i) => i,
        None if names.len() < ORG_SLOTS - 1 => {
            names.push(name.into());
            names.len() - 1
        }
        None => ORG_SLOTS - 1,
    };
    OrgSlot(i as u8)
}

/// The label value of `slot`.
pub(super) fn org_name(slot: usize) -> Arc<str> {
    names().get(slot).cloned().unwrap_or_else(|| "other".into())
}

/// How many slots have a name (the last may be `other` besides).
pub(super) fn named() -> usize {
    names().len()
}
