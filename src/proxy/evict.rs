//! Which cached users a write can change: one table, [`RULES`].
//!
//! A cached `User` (the spec's `components.schemas.User`) carries its org
//! `role` and `projects` (each project's name and the user's role in it), so
//! many writes that never touch `/organization/users/{id}` change it. Each
//! row names a write (method + the spec's path template, matched on the
//! canonical path after the prefix, with or without one trailing `/`) and
//! what it evicts:
//! - [`Evicts::UserInPath`]: the `{user_id}` segment;
//! - [`Evicts::UserInBody`]: the JSON body's `user_id` (every cached user
//!   when it can not be read);
//! - [`Evicts::All`]: every cached user (a new cache epoch, on every
//!   replica): a write that changes what many users show;
//! - [`Evicts::Nothing`]: the write can not change a `User`.
//!
//! Checked against every POST/PUT/PATCH/DELETE of the OpenAI spec
//! `info.version` 2.3.0 (a test walks the spec file and finds a row for
//! each admin write). A write the table does not name evicts every cached
//! user when it is under `/organization/projects/`, `/organization/groups/`,
//! `/organization/roles/`, `/organization/users/` or `/projects/` (what the
//! spec may add there later can change users), and nothing elsewhere.

use http::Method;

use crate::path::CanonicalPath;

/// What one write evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicts {
    /// The user named by the path's `{user_id}` segment.
    UserInPath,
    /// The user named by the JSON body's `user_id`.
    UserInBody,
    /// Every cached user.
    All,
    /// Nothing: the write can not change a `User`.
    Nothing,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The method, as the spec spells it.
    pub method: &'static str,
    /// The spec's path template; `{user_id}` is the evicted user's segment,
    /// any other `{...}` matches one segment.
    pub path: &'static str,
    /// What it evicts.
    pub evicts: Evicts,
}

const fn row(method: &'static str, path: &'static str, evicts: Evicts) -> Rule {
    Rule {
        method,
        path,
        evicts,
    }
}

use Evicts::{All, Nothing, UserInBody, UserInPath};

/// Every Admin API write of the spec, and what it evicts.
pub const RULES: &[Rule] = &[
    // The user in the path: its org role, its membership, its projects.
    row("POST", "/organization/users/{user_id}", UserInPath),
    row("DELETE", "/organization/users/{user_id}", UserInPath),
    row("POST", "/organization/users/{user_id}/roles", UserInPath),
    row(
        "DELETE",
        "/organization/users/{user_id}/roles/{role_id}",
        UserInPath,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/users/{user_id}",
        UserInPath,
    ),
    row(
        "DELETE",
        "/organization/projects/{project_id}/users/{user_id}",
        UserInPath,
    ),
    row(
        "POST",
        "/projects/{project_id}/users/{user_id}/roles",
        UserInPath,
    ),
    row(
        "DELETE",
        "/projects/{project_id}/users/{user_id}/roles/{role_id}",
        UserInPath,
    ),
    row(
        "DELETE",
        "/organization/groups/{group_id}/users/{user_id}",
        UserInPath,
    ),
    // The user in the body: a membership added.
    row(
        "POST",
        "/organization/projects/{project_id}/users",
        UserInBody,
    ),
    row("POST", "/organization/groups/{group_id}/users", UserInBody),
    // Many users at once: a project's name or state, a group's projects
    // or roles (its members' access), a role's definition.
    row("POST", "/organization/projects/{project_id}", All),
    row("POST", "/organization/projects/{project_id}/archive", All),
    row("POST", "/organization/projects/{project_id}/groups", All),
    row(
        "DELETE",
        "/organization/projects/{project_id}/groups/{group_id}",
        All,
    ),
    row("POST", "/organization/groups/{group_id}", All),
    row("DELETE", "/organization/groups/{group_id}", All),
    row("POST", "/organization/groups/{group_id}/roles", All),
    row(
        "DELETE",
        "/organization/groups/{group_id}/roles/{role_id}",
        All,
    ),
    row("POST", "/organization/roles/{role_id}", All),
    row("DELETE", "/organization/roles/{role_id}", All),
    row(
        "POST",
        "/projects/{project_id}/groups/{group_id}/roles",
        All,
    ),
    row(
        "DELETE",
        "/projects/{project_id}/groups/{group_id}/roles/{role_id}",
        All,
    ),
    row("POST", "/projects/{project_id}/roles/{role_id}", All),
    row("DELETE", "/projects/{project_id}/roles/{role_id}", All),
    // Nothing a `User` shows: new empty containers, keys, certificates,
    // invites (not users until accepted), service accounts, permissions,
    // limits, alerts, retention.
    row("POST", "/organization/projects", Nothing),
    row("POST", "/organization/groups", Nothing),
    row("POST", "/organization/roles", Nothing),
    row("POST", "/projects/{project_id}/roles", Nothing),
    row("POST", "/organization/admin_api_keys", Nothing),
    row("DELETE", "/organization/admin_api_keys/{key_id}", Nothing),
    row("POST", "/organization/certificates", Nothing),
    row("POST", "/organization/certificates/activate", Nothing),
    row("POST", "/organization/certificates/deactivate", Nothing),
    row(
        "POST",
        "/organization/certificates/{certificate_id}",
        Nothing,
    ),
    row(
        "DELETE",
        "/organization/certificates/{certificate_id}",
        Nothing,
    ),
    row("POST", "/organization/data_retention", Nothing),
    row("POST", "/organization/invites", Nothing),
    row("DELETE", "/organization/invites/{invite_id}", Nothing),
    row("POST", "/organization/spend_alerts", Nothing),
    row("POST", "/organization/spend_alerts/{alert_id}", Nothing),
    row("DELETE", "/organization/spend_alerts/{alert_id}", Nothing),
    row("POST", "/organization/spend_limit", Nothing),
    row("DELETE", "/organization/spend_limit", Nothing),
    row(
        "DELETE",
        "/organization/projects/{project_id}/api_keys/{api_key_id}",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/certificates/activate",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/certificates/deactivate",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/data_retention",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/hosted_tool_permissions",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/model_permissions",
        Nothing,
    ),
    row(
        "DELETE",
        "/organization/projects/{project_id}/model_permissions",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/rate_limits/{rate_limit_id}",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/service_accounts",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/service_accounts/{service_account_id}",
        Nothing,
    ),
    row(
        "DELETE",
        "/organization/projects/{project_id}/service_accounts/{service_account_id}",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/spend_alerts",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/spend_alerts/{alert_id}",
        Nothing,
    ),
    row(
        "DELETE",
        "/organization/projects/{project_id}/spend_alerts/{alert_id}",
        Nothing,
    ),
    row(
        "POST",
        "/organization/projects/{project_id}/spend_limit",
        Nothing,
    ),
    row(
        "DELETE",
        "/organization/projects/{project_id}/spend_limit",
        Nothing,
    ),
];

/// Where unnamed writes may change users (see the module docs).
const BROAD_PREFIXES: &[&str] = &[
    "/organization/projects/",
    "/organization/groups/",
    "/organization/roles/",
    "/organization/users/",
    "/projects/",
];

/// What a write evicts, read from the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan<'a> {
    /// The user whose canonical id segment this is.
    User(&'a str),
    /// The user the JSON body names.
    UserInBody,
    /// Every cached user; `listed` is false for the unnamed-write fallback.
    All {
        /// A row named it (else the fallback for unnamed writes).
        listed: bool,
    },
    /// Nothing.
    Nothing,
}

/// True for the methods that may change something upstream.
pub fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// What the write `method` on the canonical path `rest` evicts (reads
/// and `OPTIONS` evict nothing).
pub fn plan<'a>(method: &Method, rest: &'a CanonicalPath<'_>) -> Plan<'a> {
    if !is_write(method) {
        return Plan::Nothing;
    }
    let rest = rest.as_str();
    let path = rest.strip_suffix('/').unwrap_or(rest);
    // The path is split once; each row's template was split once, at
    // first use (splitting all 62 templates per write cost about 1 µs).
    let mut segs = [""; MAX_SEGMENTS];
    let mut n = 0;
    for seg in path.split('/') {
        match segs.get_mut(n) {
            Some(slot) => *slot = seg,
            // Longer than every template: no row can match.
            None => return broad(path),
        }
        n += 1;
    }
    let segs = &segs[..n];
    let method = method.as_str();
    for rule in compiled() {
        if rule.segs.len() != n || rule.method != method {
            continue;
        }
        let Some(user) = rule.matches(segs) else {
            continue;
        };
        return match rule.evicts {
            UserInPath => user.map_or(Plan::All { listed: true }, Plan::User),
            UserInBody => Plan::UserInBody,
            All => Plan::All { listed: true },
            Nothing => Plan::Nothing,
        };
    }
    broad(path)
}

/// A write no row names: every cached user under the prefixes where users
/// live, nothing elsewhere.
fn broad(path: &str) -> Plan<'_> {
    if BROAD_PREFIXES.iter().any(|p| path.starts_with(p)) {
        Plan::All { listed: false }
    } else {
        Plan::Nothing
    }
}

/// Most `/`-separated segments in a template (the leading empty one
/// counted); a test checks every row against it.
const MAX_SEGMENTS: usize = 8;

/// One segment of a template.
#[derive(Debug)]
enum Segment {
    /// Must be this text.
    Literal(&'static str),
    /// `{user_id}`: any non-empty segment, the evicted user.
    User,
    /// Any other `{...}`: any non-empty segment.
    Param,
}

/// A row with its template split into segments.
#[derive(Debug)]
struct Compiled {
    method: &'static str,
    segs: Box<[Segment]>,
    evicts: Evicts,
}

impl Compiled {
    fn of(rule: &Rule) -> Self {
        let segs = rule
            .path
            .split('/')
            .map(|t| match t {
                "{user_id}" => Segment::User,
                t if t.starts_with('{') => Segment::Param,
                t => Segment::Literal(t),
            })
            .collect();
        Self {
            method: rule.method,
            segs,
            evicts: rule.evicts,
        }
    }

    /// `Some(user segment)` when `path` (as many segments as the
    /// template) fits it segment for segment.
    fn matches<'a>(&self, path: &[&'a str]) -> Option<Option<&'a str>> {
        let mut user = None;
        for (t, &s) in self.segs.iter().zip(path) {
            match t {
                Segment::Literal(l) if *l != s => return None,
                Segment::Literal(_) => {}
                Segment::User | Segment::Param if s.is_empty() => return None,
                Segment::User => user = Some(s),
                Segment::Param => {}
            }
        }
        Some(user)
    }
}

/// [`RULES`], each template split once.
fn compiled() -> &'static [Compiled] {
    static COMPILED: std::sync::OnceLock<Box<[Compiled]>> = std::sync::OnceLock::new();
    COMPILED.get_or_init(|| RULES.iter().map(Compiled::of).collect())
}

#[cfg(test)]
#[path = "evict_tests.rs"]
mod tests;
