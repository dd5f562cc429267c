//! What the invalidation bus does to this replica's cache: evictions named
//! by organization, resolved against the organizations configured now.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::debug;

use crate::cache::UserRoute;
use crate::cluster::Evict;
use crate::org::{Org, Orgs};

/// An `org` name that no configured organization has (admin purges answer
/// 404 with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no configured organization has this name")]
pub struct UnknownOrg;

/// The bus's [`Evict`]: the user cache, and the organizations to read the
/// names in messages against.
pub(super) struct OrgEvict {
    /// The cached route (its cache, and whether hits are served).
    users: UserRoute,
    /// The organizations, as the gateway has them after each reload.
    orgs: Arc<ArcSwap<Orgs>>,
}

impl OrgEvict {
    /// Evicts in `users` for the organizations in `orgs`.
    pub(super) fn new(users: UserRoute, orgs: Arc<ArcSwap<Orgs>>) -> Self {
        Self { users, orgs }
    }

    /// The organization called `name`; every one when this replica does not
    /// know the name (another replica's config is ahead or behind: evicting
    /// more is safe, evicting less is not).
    fn named(&self, name: &str) -> Vec<Org> {
        let orgs = self.orgs.load();
        match orgs.by_name(name) {
            Some(o) => vec![o.clone()],
            None => {
                debug!(org = name, "eviction for an organization not configured here: applied to every organization");
                orgs.iter().cloned().collect()
            }
        }
    }
}

impl Evict for OrgEvict {
    fn evict<'a>(
        &'a self,
        org: &'a str,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            for o in self.named(org) {
                self.users.cache().invalidate(&o, id).await;
            }
        })
    }

    fn evict_all(&self, org: Option<&str>) {
        match org {
            None => self.users.cache().invalidate_all(),
            Some(name) => {
                for o in self.named(name) {
                    self.users.cache().invalidate_org(&o);
                }
            }
        }
    }

    fn set_serving(&self, serving: bool) {
        self.users.cache().set_serving(serving);
    }
}
