//! Organizations: the OpenAI organizations the gateway acts on.
//!
//! The `[upstream]` section is the organization named `default`; each
//! `[[orgs]]` entry adds one. An [`Org`] is made when the config is loaded
//! and holds what is per organization: its name, its `organization_id`
//! (sent upstream as `OpenAI-Organization`), its admin key (swapped on
//! reload) and its purge epoch. The cache key and the upstream exchange
//! take an [`Org`], so no code reaches a cached user or an admin key
//! without naming whose.
//!
//! [`Orgs`] is the table of them, rebuilt on reload: an organization whose
//! name and id are unchanged keeps its [`Org`] (and so its cache entries)
//! and gets the new key; a removed one, or one whose id changed, is a new
//! [`OrgId`], so nothing it cached can be found again.
//!
//! Public surface: [`Org`], [`OrgId`], [`Orgs`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::config::defaults::DEFAULT_ORG;
use crate::config::Config;
use crate::metrics::{org_slot, OrgSlot};
use crate::secret::AdminKey;

/// The header that names an organization, to the gateway and upstream.
pub const OPENAI_ORGANIZATION: http::HeaderName =
    http::HeaderName::from_static("openai-organization");

/// An organization's number, unique in the process (never reused, so a
/// removed organization's entries stay unreachable even if one of the same
/// name is added back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrgId(u64);

impl OrgId {
    /// The number (hashed into cache keys).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// One organization. Cloning shares it.
#[derive(Clone)]
pub struct Org(Arc<Inner>);

/// What an [`Org`] holds.
struct Inner {
    /// Its process-unique number.
    id: OrgId,
    /// Its configured name (`default` for `[upstream]`).
    name: Arc<str>,
    /// `OpenAI-Organization` as sent upstream, when the organization has one.
    organization_id: Option<HeaderValue>,
    /// Its admin key; swapped on reload.
    admin: ArcSwap<AdminKey>,
    /// Bumped by a purge of this organization: no key taken before it is
    /// made again.
    epoch: AtomicU64,
    /// Its index in the per-thread metrics (its `org` label).
    metric: OrgSlot,
}

impl std::fmt::Debug for Org {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Org")
            .field("id", &self.0.id)
            .field("name", &self.0.name)
            .field("organization_id", &self.0.organization_id)
            .finish()
    }
}

impl Org {
    /// A new organization (a fresh [`OrgId`]). An `organization_id` that is
    /// no header value is not sent (the config refuses such ids).
    pub fn new(name: &str, organization_id: Option<&str>, admin_key: AdminKey) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(Arc::new(Inner {
            id: OrgId(NEXT.fetch_add(1, Ordering::Relaxed)),
            name: name.into(),
            organization_id: organization_id.and_then(|id| HeaderValue::from_str(id).ok()),
            admin: ArcSwap::from_pointee(admin_key),
            epoch: AtomicU64::new(0),
            metric: org_slot(name),
        }))
    }

    /// Its process-unique number.
    pub fn id(&self) -> OrgId {
        self.0.id
    }

    /// Its configured name (metrics, logs, bus messages, `?org=`).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Its `org` label in the per-thread metrics.
    pub fn metric(&self) -> OrgSlot {
        self.0.metric
    }

    /// `OpenAI-Organization` as sent upstream, when it has an id.
    pub fn organization_id(&self) -> Option<&HeaderValue> {
        self.0.organization_id.as_ref()
    }

    /// Sets `OpenAI-Organization` on an upstream request to this
    /// organization's id, or removes it when it has none.
    pub fn identify(&self, headers: &mut http::HeaderMap) {
        match &self.0.organization_id {
            Some(id) => headers.insert(OPENAI_ORGANIZATION, id.clone()),
            None => headers.remove(OPENAI_ORGANIZATION),
        };
    }

    /// The position in `orgs` of the organization `OpenAI-Organization`
    /// names (by `organization_id`): `Some(0)` without the header, `None`
    /// when it names none of them (or is sent twice).
    pub fn select<'a>(
        headers: &http::HeaderMap,
        orgs: impl Iterator<Item = &'a Org>,
    ) -> Option<usize> {
        let mut sent = headers.get_all(OPENAI_ORGANIZATION).iter();
        let Some(want) = sent.next() else {
            return Some(0);
        };
        if sent.next().is_some() {
            return None;
        }
        let want = want.as_bytes().trim_ascii();
        orgs.into_iter()
            .position(|o| o.organization_id().is_some_and(|id| id.as_bytes() == want))
    }

    /// Its admin key as of now.
    pub fn admin_key(&self) -> Arc<AdminKey> {
        self.0.admin.load_full()
    }

    /// Replaces its admin key (reload).
    fn set_admin_key(&self, key: AdminKey) {
        self.0.admin.store(Arc::new(key));
    }

    /// Its purge epoch (part of every cache key).
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::Acquire)
    }

    /// Moves it to a new purge epoch: none of its keys taken before is
    /// made again.
    pub fn retire_all(&self) {
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// Every configured organization, `default` first. Rebuilt on reload.
#[derive(Debug, Clone)]
pub struct Orgs {
    /// `default`, then `[[orgs]]` in file order.
    list: Box<[Org]>,
}

impl Orgs {
    /// The organizations of `config`. Those of `previous` with the same
    /// name and id are kept (with the new key), so their cache survives.
    pub fn build(config: &Config, previous: Option<&Orgs>) -> Orgs {
        let default = (
            DEFAULT_ORG,
            config.upstream.organization_id.as_deref(),
            &config.upstream.admin_key,
        );
        let others = config.orgs.iter().map(|o| {
            (
                o.name.as_str(),
                Some(o.organization_id.as_str()),
                &o.admin_key,
            )
        });
        let list = std::iter::once(default)
            .chain(others)
            .map(|(name, id, key)| {
                let kept = previous.and_then(|p| p.by_name(name)).filter(|o| {
                    o.organization_id().map(HeaderValue::as_bytes) == id.map(str::as_bytes)
                });
                match kept {
                    Some(o) => {
                        o.set_admin_key(key.clone());
                        o.clone()
                    }
                    None => Org::new(name, id, key.clone()),
                }
            })
            .collect();
        Orgs { list }
    }

    /// The `[upstream]` organization.
    pub fn default_org(&self) -> &Org {
        // `build` always puts it first; an empty table is never made.
        &self.list[0]
    }

    /// The organization called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Org> {
        self.list.iter().find(|o| o.name() == name)
    }

    /// Every organization, `default` first.
    pub fn iter(&self) -> impl Iterator<Item = &Org> {
        self.list.iter()
    }

    /// The organizations of `self` that `next` no longer has (removed, or
    /// their id changed): their cache is to be dropped.
    pub fn dropped_by(&self, next: &Orgs) -> Vec<Org> {
        self.list
            .iter()
            .filter(|o| !next.list.iter().any(|n| n.id() == o.id()))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(extra, std::path::Path::new("."), &|n| match n {
            "OPENAI_ADMIN_KEY" => Some("sk-admin-main".to_string()),
            "KEY_R" => Some("sk-admin-r1".to_string()),
            "KEY_R2" => Some("sk-admin-r2".to_string()),
            _ => None,
        })
        .expect("valid config")
    }

    const R: &str =
        "[[orgs]]\nname = \"r\"\norganization_id = \"org-r\"\nadmin_key_env = \"KEY_R\"\n";

    #[test]
    fn a_reload_keeps_unchanged_organizations_with_their_new_key() {
        let first = Orgs::build(&config(R), None);
        assert_eq!(first.default_org().name(), "default");
        assert!(first.default_org().organization_id().is_none());
        let r = first.by_name("r").expect("r").clone();
        assert_eq!(r.organization_id().unwrap(), "org-r");
        let rotated = Orgs::build(&config(&R.replace("KEY_R", "KEY_R2")), Some(&first));
        let r2 = rotated.by_name("r").unwrap();
        assert_eq!(r2.id(), r.id(), "same organization");
        assert_eq!(r.admin_key().expose(), "sk-admin-r2", "new key");
        assert!(first.dropped_by(&rotated).is_empty());

        let moved = Orgs::build(&config(&R.replace("org-r", "org-r9")), Some(&rotated));
        assert_ne!(
            moved.by_name("r").unwrap().id(),
            r.id(),
            "a new id is a new org"
        );
        let removed = Orgs::build(&config(""), Some(&moved));
        assert!(removed.by_name("r").is_none());
        assert_eq!(removed.default_org().id(), first.default_org().id());
        let dropped = moved.dropped_by(&removed);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].name(), "r");
    }
}
