//! The organization's users: retrieve, modify, delete, list and roles, the users a test
//! changes directly ([`Upstream::set_role`], [`Upstream::add_user`]) and the exact bytes a
//! retrieve answers ([`Upstream::user_body`]).

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::reply::{error, json_bytes, json_response, query_params, Resp};
use super::{State, Upstream};

impl Upstream {
    /// Changes a user's role directly in the fake (not through the gateway).
    pub fn set_role(&self, id: &str, role: &str) {
        let mut users = self.state.users.lock().unwrap();
        let user = users.get_mut(id).unwrap_or_else(|| panic!("no user {id}"));
        user["role"] = json!(role);
    }

    /// Adds (or replaces) a user.
    pub fn add_user(&self, id: &str, name: &str, role: &str) {
        let value = user_value(id, name, role, 1711479999);
        self.state
            .users
            .lock()
            .unwrap()
            .insert(id.to_string(), value);
    }

    /// The exact bytes `GET /v1/organization/users/{id}` answers right now (no faults).
    pub fn user_body(&self, id: &str) -> Bytes {
        let users = self.state.users.lock().unwrap();
        let user = users.get(id).unwrap_or_else(|| panic!("no user {id}"));
        json_bytes(&self.state.with_projects(id, user))
    }
}

impl State {
    /// `user` with its `projects` as they are now.
    pub(super) fn with_projects(&self, id: &str, user: &Value) -> Value {
        let mut user = user.clone();
        user["projects"] = self.org.lock().unwrap().projects_of(id);
        user
    }
}

pub(super) fn user_value(id: &str, name: &str, role: &str, added_at: i64) -> Value {
    json!({
        "object": "organization.user",
        "id": id,
        "name": name,
        "email": format!("{}@example.com", id),
        "role": role,
        "added_at": added_at,
    })
}

pub(super) fn user_not_found(id: &str) -> Resp {
    let msg = format!("No user with id '{id}' in this organization.");
    error(StatusCode::NOT_FOUND, &msg, "user_not_found")
}

/// A user as the organization `org` (the `OpenAI-Organization` header) sees it: its `name`
/// says which organization answered, so a test can tell tenants' answers apart.
pub(super) fn get_user(state: &State, id: &str, org: Option<&str>) -> Resp {
    match state.users.lock().unwrap().get(id) {
        Some(user) => match org {
            Some(org) => {
                let mut seen = state.with_projects(id, user);
                let name = seen["name"].as_str().unwrap_or_default().to_string();
                seen["name"] = json!(format!("{name} (as seen by {org})"));
                json_response(StatusCode::OK, &seen)
            }
            None => json_response(StatusCode::OK, &state.with_projects(id, user)),
        },
        None => user_not_found(id),
    }
}

pub(super) async fn modify_user(state: &State, id: &str, req: Request<Incoming>) -> Resp {
    match req.into_body().collect().await {
        Ok(b) => modify_user_with(state, id, &b.to_bytes()),
        Err(_) => error(StatusCode::BAD_REQUEST, "Unreadable body", "bad_body"),
    }
}

pub(super) fn modify_user_with(state: &State, id: &str, body: &Bytes) -> Resp {
    let role = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("role").and_then(Value::as_str).map(str::to_string));
    let Some(role) = role.filter(|r| ["owner", "reader", "member"].contains(&r.as_str())) else {
        let msg = "Invalid body: 'role' must be one of owner, reader, member";
        return error(StatusCode::BAD_REQUEST, msg, "invalid_role");
    };
    let mut users = state.users.lock().unwrap();
    match users.get_mut(id) {
        Some(user) => {
            user["role"] = json!(role);
            json_response(StatusCode::OK, user)
        }
        None => user_not_found(id),
    }
}

pub(super) fn delete_user(state: &State, id: &str) -> Resp {
    match state.users.lock().unwrap().remove(id) {
        Some(_) => {
            let body = json!({"object": "organization.user.deleted", "id": id, "deleted": true});
            json_response(StatusCode::OK, &body)
        }
        None => user_not_found(id),
    }
}

pub(super) fn list_users(state: &State, query: Option<&str>) -> Resp {
    let params = query_params(query);
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            let msg = "limit must be an integer between 1 and 100";
            return error(StatusCode::BAD_REQUEST, msg, "invalid_limit");
        }
    };
    let users = state.users.lock().unwrap();
    let after = params.get("after").cloned().unwrap_or_default();
    let rest: Vec<&Value> = users
        .iter()
        .filter(|(id, _)| after.is_empty() || id.as_str() > after.as_str())
        .map(|(_, u)| u)
        .collect();
    let page: Vec<&Value> = rest.iter().take(limit).copied().collect();
    let id_of = |u: Option<&&Value>| u.map(|u| u["id"].clone()).unwrap_or(Value::Null);
    let body = json!({
        "object": "list",
        "data": page,
        "first_id": id_of(page.first()),
        "last_id": id_of(page.last()),
        "has_more": rest.len() > page.len(),
    });
    json_response(StatusCode::OK, &body)
}

pub(super) fn user_roles(state: &State, id: &str) -> Resp {
    if !state.users.lock().unwrap().contains_key(id) {
        return user_not_found(id);
    }
    let body = json!({
        "object": "list",
        "data": [{
            "id": "role_01J1F8ROLE01",
            "name": "API Group Manager",
            "permissions": ["api.groups.read", "api.groups.write"],
            "resource_type": "api.organization",
            "predefined_role": false,
            "description": "Allows managing organization groups",
            "created_at": 1711471533,
            "updated_at": 1711472599,
            "created_by": id,
            "metadata": {}
        }],
        "has_more": false,
        "next": null
    });
    json_response(StatusCode::OK, &body)
}
