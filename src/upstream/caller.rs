//! [`Caller`]: on whose behalf an upstream exchange is sent.
//!
//! Every exchange (forwards, writes, cache fills and refreshes) names its
//! caller, so that what is per client upstream of the socket (the
//! organization's fair turns, the organization itself) has one place to
//! come from instead of a new argument on every function between the route
//! and the pool. A caller is made once per (client, organization) pair when
//! the client table is built; a request only borrows the one of the
//! organization it selected (a thin pointer, so the hit path's future does
//! not grow).

use std::sync::Arc;

use crate::metrics::ClientLabel;
use crate::org::Org;

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
    /// The organization the exchange acts on: its admin key is injected
    /// and its `organization_id` sent; its budget gives the turns.
    org: Org,
    /// Its turns per round of the organization's budget while it waits
    /// (`budget_weight`).
    budget_weight: u32,
}

impl Caller {
    /// The caller for `client`'s requests on `org`, one turn per round.
    pub fn new(client: ClientLabel, org: Org) -> Self {
        Self::weighted(client, org, 1)
    }

    /// The caller for `client`'s requests on `org`, with `budget_weight`
    /// turns per round of the organization's budget.
    pub fn weighted(client: ClientLabel, org: Org, budget_weight: u32) -> Self {
        Self(Arc::new(Who {
            client,
            org,
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

    /// The organization.
    pub fn org(&self) -> &Org {
        &self.0.org
    }

    /// A caller named `client` on one `default` organization without an
    /// id, the same for every unit test.
    #[cfg(test)]
    pub(crate) fn for_tests(client: &str) -> Self {
        static ORG: std::sync::LazyLock<Org> = std::sync::LazyLock::new(|| {
            let key = crate::secret::AdminKey::from_bytes(b"sk-admin-x").expect("key");
            Org::new("default", None, key)
        });
        Self::new(ClientLabel::new(client), ORG.clone())
    }
}
