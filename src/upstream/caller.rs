//! [`Caller`]: on whose behalf an upstream exchange is sent.
//!
//! Every exchange (forwards, writes, cache fills and refreshes) names its
//! caller, so that what is per client upstream of the socket (the
//! organization's fair turns, the organization itself) has one place to
//! come from instead of a new argument on every function between the route
//! and the pool. A caller is made once per client when the client table is
//! built; a request only borrows it (a thin pointer, so the hit path's
//! future does not grow).

use std::sync::Arc;

use crate::metrics::ClientLabel;

/// Who an upstream exchange is for. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Caller(Arc<Who>);

/// What a [`Caller`] says.
#[derive(Debug)]
struct Who {
    /// The client whose request caused the exchange (for a fill shared by
    /// several waiters, the one that runs it; for a background refresh,
    /// the one whose request started it).
    client: ClientLabel,
    /// Its turns per round of the organization's budget while it waits
    /// (`budget_weight`).
    budget_weight: u32,
}

impl Caller {
    /// The caller for `client`'s requests.
    pub fn new(client: ClientLabel) -> Self {
        Self::weighted(client, 1)
    }

    /// The caller for `client`'s requests, with `budget_weight` turns per
    /// round of the organization's budget.
    pub fn weighted(client: ClientLabel, budget_weight: u32) -> Self {
        Self(Arc::new(Who {
            client,
            budget_weight: budget_weight.max(1),
        }))
    }

    /// Turns per round of the organization's budget.
    pub fn budget_weight(&self) -> u32 {
        self.0.budget_weight
    }

    /// The client's name.
    pub fn client(&self) -> &ClientLabel {
        &self.0.client
    }
}
