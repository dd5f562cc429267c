//! Carrying out what [`super::evict::RULES`] says for one write, on the
//! write's own task (see `Write` in `handle`).
//!
//! 1 [`resolve`]: the plan read from the path becomes an [`Eviction`]; a
//!   body rule reads the small JSON body's `user_id` (the body is read whole
//!   only when [`buffer::request_read`] would anyway; otherwise, or when no
//!   id is there, every cached user is evicted).
//! 2 [`Eviction::before`]: the generation (or the epoch) is bumped before
//!   the write is sent, so no request arriving from now on joins a fill
//!   that began before it.
//! 3 [`Eviction::after`]: once the upstream answers 2xx, bumped again here
//!   and published to every replica, so a fill that raced the write can not
//!   store the old user. When the outcome is unknown (no answer within
//!   `timeout_ms`, a broken exchange, a 5xx) the write is treated as
//!   applied: evicted and published now, and again once `timeout_ms` more
//!   has passed (by when the upstream is assumed to have applied it), so
//!   that a read racing a late write does not keep the old user.

use crate::org::Org;
use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use tracing::info;

use super::canon::decode_segment;
use super::evict::Plan;
use super::Gateway;
use crate::body::{BoxBody, RequestBody};
use crate::error::Result;
use crate::runtime::spawn_lasting;
use crate::upstream::buffer;

/// A [`Plan`] owned by the write's task.
#[derive(Debug, Clone)]
pub(super) enum Planned {
    /// The decoded user id (`None`: not UTF-8 once decoded, so it can never
    /// be cached and there is nothing to evict).
    User(Option<String>),
    /// The JSON body's `user_id`.
    UserInBody,
    /// Every cached user (`listed`: a row named the write).
    All {
        /// A row named it (else the fallback for unnamed writes).
        listed: bool,
    },
}

impl Planned {
    /// Owns `plan`; `None` for writes that evict nothing.
    pub(super) fn of(plan: Plan<'_>) -> Option<Planned> {
        match plan {
            Plan::User(seg) => Some(Planned::User(decode_segment(seg).map(Cow::into_owned))),
            Plan::UserInBody => Some(Planned::UserInBody),
            Plan::All { listed } => Some(Planned::All { listed }),
            Plan::Nothing => None,
        }
    }
}

/// What one write evicts, once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Eviction {
    /// One user, and the rule that named it (`user_path`, `user_body`).
    User(String, crate::metrics::EvictionRule),
    /// Every cached user, and why (`all`, `all_unlisted`, `all_body_unread`).
    All(crate::metrics::EvictionRule),
    /// Nothing.
    Nothing,
}

/// How a write ended, as far as the cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// 2xx: applied.
    Applied,
    /// Any other answer below 500: not applied.
    Refused,
    /// No answer, a broken exchange, or a 5xx: it may apply later.
    Unknown,
    /// Never sent (the client's body broke off first).
    NotSent,
}

impl Outcome {
    /// The outcome of a write that was sent and got `status` (`None`: no
    /// answer).
    pub(super) fn of(status: Option<StatusCode>) -> Outcome {
        match status {
            Some(s) if s.is_success() => Outcome::Applied,
            Some(s) if s.is_server_error() => Outcome::Unknown,
            Some(_) => Outcome::Refused,
            None => Outcome::Unknown,
        }
    }

    /// The metric's label, for the outcomes that evict (a write refused
    /// or never sent changed nothing).
    fn label(self) -> Option<crate::metrics::WriteOutcome> {
        match self {
            Outcome::Applied => Some(crate::metrics::WriteOutcome::Applied),
            Outcome::Unknown => Some(crate::metrics::WriteOutcome::Unknown),
            Outcome::Refused | Outcome::NotSent => None,
        }
    }
}

/// The part of a membership body that names the user.
#[derive(Deserialize)]
struct Member {
    /// The user being added.
    user_id: String,
}

/// Reads what `planned` needs from the body and hands the body on.
pub(super) async fn resolve<B: RequestBody>(
    planned: &Planned,
    body: B,
    headers: &HeaderMap,
    window: Duration,
) -> Result<(BoxBody, Eviction)> {
    match planned {
        Planned::User(Some(id)) => {
            let body = buffer::request(body, headers, window).await?;
            Ok((
                body,
                Eviction::User(id.clone(), crate::metrics::EvictionRule::UserPath),
            ))
        }
        Planned::User(None) => Ok((
            buffer::request(body, headers, window).await?,
            Eviction::Nothing,
        )),
        Planned::All { listed } => {
            let why = if *listed {
                crate::metrics::EvictionRule::All
            } else {
                crate::metrics::EvictionRule::AllUnlisted
            };
            Ok((
                buffer::request(body, headers, window).await?,
                Eviction::All(why),
            ))
        }
        Planned::UserInBody => {
            let (body, bytes) = buffer::request_read(body, headers, window).await?;
            Ok((body, body_user(bytes.as_ref())))
        }
    }
}

/// The user a membership body names, or every user when it can not be read.
fn body_user(bytes: Option<&Bytes>) -> Eviction {
    let member = bytes.and_then(|b| serde_json::from_slice::<Member>(b).ok());
    match member {
        Some(m) if !m.user_id.is_empty() => {
            Eviction::User(m.user_id, crate::metrics::EvictionRule::UserBody)
        }
        _ => Eviction::All(crate::metrics::EvictionRule::AllBodyUnread),
    }
}

impl Eviction {
    /// The audit line's `evict` field: `user:ID`, `all` or `none`.
    pub(super) fn audit(&self) -> Cow<'static, str> {
        match self {
            Eviction::User(id, _) => Cow::Owned(format!("user:{id}")),
            Eviction::All(_) => Cow::Borrowed("all"),
            Eviction::Nothing => Cow::Borrowed("none"),
        }
    }

    /// Bumps the generation (or `org`'s epoch) before the write is sent.
    pub(super) async fn before(&self, gw: &Gateway, org: &Org) {
        let cache = gw.shared.users.cache();
        match self {
            Eviction::User(id, _) => cache.invalidate(org, id).await,
            Eviction::All(_) => cache.invalidate_org(org),
            Eviction::Nothing => {}
        }
    }

    /// Evicts here and on every replica once the write is (or may be)
    /// applied; for an unknown outcome, again after `window`.
    pub(super) async fn after(&self, gw: &Gateway, org: &Org, outcome: Outcome, window: Duration) {
        let rule = match self {
            Eviction::User(_, rule) | Eviction::All(rule) => *rule,
            Eviction::Nothing => return,
        };
        let Some(label) = outcome.label() else {
            return;
        };
        gw.shared.metrics.write_eviction(rule, label);
        self.everywhere(gw, org).await;
        if outcome == Outcome::Unknown {
            let (again, gw, org) = (self.clone(), gw.clone(), org.clone());
            drop(spawn_lasting(async move {
                tokio::time::sleep(window).await;
                again.everywhere(&gw, &org).await;
                info!(evict = %again.audit(), "write with unknown outcome: evicted again after the upstream timeout");
            }));
        }
    }

    /// Evicts in `org` here and publishes to the other replicas: a write
    /// changes its own organization only.
    async fn everywhere(&self, gw: &Gateway, org: &Org) {
        let shared = &*gw.shared;
        match self {
            Eviction::User(id, _) => {
                shared.users.cache().invalidate(org, id).await;
                shared
                    .metrics
                    .invalidation(crate::metrics::Invalidation::Write, org.name());
                gw.published(org, id).await;
            }
            Eviction::All(_) => {
                shared.users.cache().invalidate_org(org);
                shared
                    .metrics
                    .invalidation(crate::metrics::Invalidation::WriteAll, org.name());
                if let Some(bus) = &shared.bus {
                    bus.all_evicted(Some(org.name())).await;
                }
            }
            Eviction::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_body_names_its_user_and_anything_else_evicts_all() {
        let ok = Bytes::from_static(br#"{"user_id":"user_1","role":"owner"}"#);
        assert_eq!(
            body_user(Some(&ok)),
            Eviction::User("user_1".into(), crate::metrics::EvictionRule::UserBody)
        );
        for bad in [
            &br#"{"role":"owner"}"#[..],
            b"not json",
            br#"{"user_id":""}"#,
            br#"{"user_id":7}"#,
        ] {
            let b = Bytes::copy_from_slice(bad);
            assert_eq!(
                body_user(Some(&b)),
                Eviction::All(crate::metrics::EvictionRule::AllBodyUnread)
            );
        }
        // Streamed (no small declared length): not read.
        assert_eq!(
            body_user(None),
            Eviction::All(crate::metrics::EvictionRule::AllBodyUnread)
        );
    }

    #[test]
    fn only_2xx_is_applied_and_no_answer_or_5xx_is_unknown() {
        assert_eq!(Outcome::of(Some(StatusCode::OK)), Outcome::Applied);
        assert_eq!(Outcome::of(Some(StatusCode::NO_CONTENT)), Outcome::Applied);
        assert_eq!(Outcome::of(Some(StatusCode::NOT_FOUND)), Outcome::Refused);
        assert_eq!(Outcome::of(Some(StatusCode::BAD_GATEWAY)), Outcome::Unknown);
        assert_eq!(Outcome::of(None), Outcome::Unknown);
    }
}
