//! Policy: who a request comes from and what it may do.
//!
//! The [`ClientTable`] is built from the `[[clients]]` config: each key's
//! SHA-256 digest ([`auth`]), the client's scope (`allow` patterns, compiled
//! by the config), and its rate limiter ([`limit`]; shared across replicas
//! through [`crate::cluster`] when `[redis]` is set). A reload builds a new
//! table and carries unchanged limiters over, so budgets survive it.
//!
//! Public surface: [`ClientTable`], [`Client`], [`Decision`], [`Limiter`].

mod auth;
mod limit;

use std::sync::Arc;

use http::HeaderMap;

use crate::cluster::SharedLimits;
use crate::config::{ClientConfig, Scope};
use crate::error::GatewayError;
use crate::error::Result;
use crate::metrics::ClientLabel;
use crate::org::{Org, Orgs};
use crate::per_thread::{Handle, Handles};
use crate::upstream::Caller;

pub use auth::bearer;
pub use limit::{format_reset, Decision, Limiter};

/// An authenticated client and what it may do.
#[derive(Debug)]
pub struct Client {
    /// Name for logs and metrics.
    pub name: ClientLabel,
    /// What its upstream exchanges say about it: one per organization it
    /// may act on, in its `orgs` order (made once, borrowed by each
    /// request; the first is used when a request names no organization).
    pub callers: Box<[Caller]>,
    /// Its rate limiter, when limited.
    pub limiter: Option<Arc<Limiter>>,
    /// Its scope, when restricted.
    pub scope: Option<Scope>,
}

impl Client {
    /// The position in [`Client::callers`] of the organization the request
    /// acts on: the one its `OpenAI-Organization` names (by id), else the
    /// client's first. A header naming an organization the client may not
    /// act on, or none that is configured, is 403 `organization_not_allowed`.
    pub fn select_org(&self, headers: &HeaderMap) -> Result<usize> {
        Org::select(headers, self.callers.iter().map(Caller::org))
            .filter(|&i| i < self.callers.len())
            .ok_or(GatewayError::OrganizationNotAllowed)
    }
}

/// All clients, by key digest. Rebuilt (not mutated) on reload.
#[derive(Debug, Default)]
pub struct ClientTable {
    /// Each key's digest and the client holding it.
    keys: auth::Keys<Handles<Client>>,
}

impl ClientTable {
    /// Builds the table; limiters of clients whose name and budget did not
    /// change are carried over from `previous`, so a reload neither refills
    /// nor empties anyone's budget. With `shared`, limits are shared by
    /// every replica using it.
    pub fn build(
        configs: &[ClientConfig],
        orgs: &Orgs,
        previous: Option<&ClientTable>,
        shared: Option<&Arc<SharedLimits>>,
    ) -> ClientTable {
        let mut keys = auth::Keys::default();
        for c in configs {
            let limiter = c.rate_limit.map(|rl| {
                previous
                    .and_then(|p| p.limiter_of(&c.name))
                    .filter(|l| l.limit() == rl && l.is_shared() == shared.is_some())
                    .unwrap_or_else(|| {
                        Arc::new(match shared {
                            Some(s) => Limiter::shared(rl, s.clone(), &c.name),
                            None => Limiter::new(rl),
                        })
                    })
            });
            let client = Handles::new(Arc::new(Client {
                name: ClientLabel::new(&c.name),
                callers: c
                    .orgs
                    .iter()
                    .filter_map(|name| orgs.by_name(name))
                    .map(|org| {
                        Caller::weighted(ClientLabel::new(&c.name), org.clone(), c.budget_weight)
                    })
                    .collect(),
                limiter,
                scope: c.allow.clone(),
            }));
            for k in &c.key_sha256 {
                keys.push(*k, client.clone());
            }
        }
        ClientTable { keys }
    }

    fn limiter_of(&self, name: &str) -> Option<Arc<Limiter>> {
        self.keys
            .holders()
            .find(|c| c.name.as_str() == name)
            .and_then(|c| c.limiter.clone())
    }

    /// The client holding the request's bearer key, or 401. The handle is
    /// the calling thread's, so keeping it writes no count another core
    /// writes.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Handle<Client>> {
        self.keys.find(headers).map(Handles::local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;
    use crate::secret::digest;
    use http::header::AUTHORIZATION;
    use http::HeaderValue;

    fn config(name: &str, key: &[u8], rate_limit: Option<RateLimit>) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            key_sha256: vec![digest(key)],
            rate_limit,
            allow: None,
            orgs: vec!["default".into()],
            budget_weight: 1,
        }
    }

    fn orgs() -> Orgs {
        let cfg = crate::config::Config::parse("", std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .expect("config");
        Orgs::build(&cfg, None)
    }

    fn bearer_header(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    #[test]
    fn keys_find_their_client() {
        let t = ClientTable::build(
            &[config("a", b"ka", None), config("b", b"kb", None)],
            &orgs(),
            None,
            None,
        );
        let a = t.authenticate(&bearer_header("ka")).unwrap();
        assert_eq!(a.name.as_str(), "a");
        assert_eq!(
            t.authenticate(&bearer_header("kb")).unwrap().name.as_str(),
            "b"
        );
        assert!(t.authenticate(&bearer_header("kc")).is_err());
    }

    #[test]
    fn reload_keeps_unchanged_limiters_and_replaces_changed_ones() {
        let rl = RateLimit {
            requests_per_minute: 60,
            burst: 2,
        };
        let first = ClientTable::build(&[config("a", b"ka", Some(rl))], &orgs(), None, None);
        let before = first.limiter_of("a").unwrap();
        let same = ClientTable::build(
            &[config("a", b"ka2", Some(rl))],
            &orgs(),
            Some(&first),
            None,
        );
        assert!(Arc::ptr_eq(&before, &same.limiter_of("a").unwrap()));
        let wider = RateLimit { burst: 5, ..rl };
        let changed = ClientTable::build(
            &[config("a", b"ka", Some(wider))],
            &orgs(),
            Some(&first),
            None,
        );
        assert!(!Arc::ptr_eq(&before, &changed.limiter_of("a").unwrap()));
    }
}
