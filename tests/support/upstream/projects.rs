//! The fake's projects, groups and role assignments, kept as the spec's `User` shows them:
//! each retrieved user carries `projects` (`{"object":"list","data":[{id,name,role}]}`), the
//! projects it belongs to directly or through a group, archived projects left out.
//!
//! Seed: project `p1` "Project One" (`user_abc` owner, `user_def` and `user_ghi` member,
//! group `g1` as member), project `p2` "Project Two" (group `g1` as member), group `g1`
//! (`user_0001`).
//!
//! Routes (bodies as the spec's):
//! - `POST /organization/projects/{p}` `{"name"}` rename; `POST .../{p}/archive`;
//! - `POST /organization/projects/{p}/users` `{"user_id","role"}`, `POST|DELETE
//!   .../users/{u}` (`{"role"}`);
//! - `POST /organization/projects/{p}/groups` `{"group_id","role"}`, `DELETE .../groups/{g}`;
//! - `POST /organization/groups/{g}/users` `{"user_id"}`, `DELETE .../users/{u}`,
//!   `DELETE /organization/groups/{g}`;
//! - `POST /projects/{p}/users/{u}/roles` `{"role_id"}` (the user's role in `p`), `DELETE
//!   .../roles/{r}` (back to `member`);
//! - `POST /organization/users/{u}/roles` `{"role_id"}` (the user's org `role`), `DELETE
//!   .../roles/{r}` (back to `reader`).
//!
//! Unknown ids answer 404.

use std::collections::{BTreeMap, BTreeSet};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::reply::{error, json_response, Resp};
use super::State;

/// One project.
pub struct Project {
    /// Its display name.
    name: String,
    /// Archived projects are not shown on users.
    archived: bool,
    /// Direct members and their role.
    users: BTreeMap<String, String>,
    /// Groups with access, and the role their members get.
    groups: BTreeMap<String, String>,
}

/// Projects and groups.
pub struct Org {
    /// Projects by id.
    projects: BTreeMap<String, Project>,
    /// Groups' members by group id.
    groups: BTreeMap<String, BTreeSet<String>>,
}

impl Org {
    /// The seed described in the module docs.
    pub fn seeded() -> Org {
        let member = |r: &str| r.to_string();
        let p1 = Project {
            name: "Project One".into(),
            archived: false,
            users: [
                ("user_abc".to_string(), member("owner")),
                ("user_def".to_string(), member("member")),
                ("user_ghi".to_string(), member("member")),
            ]
            .into(),
            groups: [("g1".to_string(), member("member"))].into(),
        };
        let p2 = Project {
            name: "Project Two".into(),
            archived: false,
            users: BTreeMap::new(),
            groups: [("g1".to_string(), member("member"))].into(),
        };
        Org {
            projects: [("p1".to_string(), p1), ("p2".to_string(), p2)].into(),
            groups: [("g1".to_string(), ["user_0001".to_string()].into())].into(),
        }
    }

    /// The `projects` field of user `id`.
    pub fn projects_of(&self, id: &str) -> Value {
        let mut data = Vec::new();
        for (pid, p) in self.projects.iter().filter(|(_, p)| !p.archived) {
            let via_group = p
                .groups
                .iter()
                .find(|(g, _)| self.groups.get(*g).is_some_and(|m| m.contains(id)));
            let role = p.users.get(id).or(via_group.map(|(_, r)| r));
            if let Some(role) = role {
                data.push(json!({"id": pid, "name": p.name, "role": role}));
            }
        }
        json!({"object": "list", "data": data})
    }
}

/// True when the fake models `method segments` here (decoded segments after `v1`).
pub fn handles(segments: &[&str], method: &Method) -> bool {
    let write = matches!(*method, Method::POST | Method::DELETE);
    write
        && matches!(
            segments,
            ["organization", "projects", _, ..]
                | ["organization", "groups", _, ..]
                | ["projects", _, "users", _, "roles", ..]
                | ["organization", "users", _, "roles", ..]
        )
}

/// Answers one of the writes [`handles`] accepts; anything else under those paths is 404.
pub async fn route(state: &State, segments: &[&str], req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    match req.into_body().collect().await {
        Ok(b) => {
            let body = serde_json::from_slice::<Value>(&b.to_bytes()).unwrap_or(Value::Null);
            route_with(state, segments, &method, &body)
        }
        Err(_) => error(StatusCode::BAD_REQUEST, "Unreadable body", "bad_body"),
    }
}

/// [`route`] with the body already read (`Null` when it is not JSON).
pub fn route_with(state: &State, segments: &[&str], method: &Method, body: &Value) -> Resp {
    let method = method.clone();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let ids = segments;
    if let ["organization", "users", u, "roles", rest @ ..] = ids {
        let role = match (&method, rest) {
            (&Method::POST, []) => s(body, "role_id"),
            (&Method::DELETE, [_]) => Some("reader".to_string()),
            _ => None,
        };
        return set_org_role(state, u, role);
    }
    let mut org = state.org.lock().unwrap();
    let done: Option<Value> = match (&method, ids) {
        (&Method::POST, ["organization", "projects", p]) => org.projects.get_mut(*p).map(|pr| {
            if let Some(n) = s(body, "name") {
                pr.name = n;
            }
            json!({"object": "organization.project", "id": p, "name": pr.name})
        }),
        (&Method::POST, ["organization", "projects", p, "archive"]) => {
            org.projects.get_mut(*p).map(|pr| {
                pr.archived = true;
                json!({"object": "organization.project", "id": p, "status": "archived"})
            })
        }
        (&Method::POST, ["organization", "projects", p, "users"]) => {
            match (
                org.projects.get_mut(*p),
                s(body, "user_id"),
                s(body, "role"),
            ) {
                (Some(pr), Some(u), Some(r)) => {
                    pr.users.insert(u.clone(), r.clone());
                    Some(json!({"object": "organization.project.user", "id": u, "role": r}))
                }
                _ => None,
            }
        }
        (&Method::POST, ["organization", "projects", p, "users", u])
        | (&Method::POST, ["projects", p, "users", u, "roles"]) => {
            let role = s(body, "role").or_else(|| s(body, "role_id"));
            let pr = org.projects.get_mut(*p);
            match (pr.and_then(|pr| pr.users.get_mut(*u)), role) {
                (Some(r), Some(new)) => {
                    *r = new.clone();
                    Some(json!({"object": "organization.project.user", "id": u, "role": new}))
                }
                _ => None,
            }
        }
        (&Method::DELETE, ["projects", p, "users", u, "roles", _]) => {
            let pr = org.projects.get_mut(*p);
            pr.and_then(|pr| pr.users.get_mut(*u)).map(|r| {
                *r = "member".into();
                json!({"object": "role.deleted", "deleted": true})
            })
        }
        (&Method::DELETE, ["organization", "projects", p, "users", u]) => {
            let pr = org.projects.get_mut(*p);
            pr.and_then(|pr| pr.users.remove(*u)).map(|_| {
                json!({"object": "organization.project.user.deleted", "id": u, "deleted": true})
            })
        }
        (&Method::POST, ["organization", "projects", p, "groups"]) => {
            match (org.projects.get_mut(*p), s(body, "group_id")) {
                (Some(pr), Some(g)) => {
                    let role = s(body, "role").unwrap_or_else(|| "member".into());
                    pr.groups.insert(g.clone(), role);
                    Some(json!({"object": "project.group", "group_id": g}))
                }
                _ => None,
            }
        }
        (&Method::DELETE, ["organization", "projects", p, "groups", g]) => {
            let pr = org.projects.get_mut(*p);
            pr.and_then(|pr| pr.groups.remove(*g))
                .map(|_| json!({"object": "project.group.deleted", "deleted": true}))
        }
        (&Method::POST, ["organization", "groups", g, "users"]) => {
            match (org.groups.get_mut(*g), s(body, "user_id")) {
                (Some(m), Some(u)) => {
                    m.insert(u.clone());
                    Some(json!({"object": "group.user", "user_id": u, "group_id": g}))
                }
                _ => None,
            }
        }
        (&Method::DELETE, ["organization", "groups", g, "users", u]) => {
            let removed = org.groups.get_mut(*g).is_some_and(|m| m.remove(*u));
            removed.then(|| json!({"object": "group.user.deleted", "deleted": true}))
        }
        (&Method::DELETE, ["organization", "groups", g]) => org.groups.remove(*g).map(|_| {
            for p in org.projects.values_mut() {
                p.groups.remove(*g);
            }
            json!({"object": "group.deleted", "id": g, "deleted": true})
        }),
        // Modelled elsewhere or not at all: accepted, nothing changes.
        _ => Some(json!({"object": "accepted"})),
    };
    match done {
        Some(v) => json_response(StatusCode::OK, &v),
        None => error(StatusCode::NOT_FOUND, "Not found", "not_found"),
    }
}

fn set_org_role(state: &State, id: &str, role: Option<String>) -> Resp {
    let mut users = state.users.lock().unwrap();
    match (users.get_mut(id), role) {
        (Some(user), Some(role)) => {
            user["role"] = json!(role);
            json_response(
                StatusCode::OK,
                &json!({"object": "role.assignment", "role": role}),
            )
        }
        _ => error(StatusCode::NOT_FOUND, "Not found", "not_found"),
    }
}
