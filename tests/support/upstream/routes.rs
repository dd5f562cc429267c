//! Which route answers a request, or how an injected fault answers it instead (see the
//! route list in the parent module's docs).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::super::body::full;
use super::echo::echo;
use super::faults::{status_error, Fault};
use super::projects;
use super::reply::{not_allowed, Resp};
use super::rewrite::apply_fault;
use super::streams::{bytes_route, sse, upload};
use super::users::{delete_user, get_user, list_users, modify_user, modify_user_with, user_roles};
use super::State;

pub(super) async fn respond(
    state: &Arc<State>,
    index: usize,
    req: Request<Incoming>,
    fault: Option<Fault>,
) -> io::Result<Resp> {
    let Some(fault) = fault else {
        return route(state, index, req).await;
    };
    if let Some(wait) = fault.apply_after {
        // Applied on a task of its own, so that it lands even when the client has gone.
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let state = state.clone();
        let late = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            apply_late(&state, &parts.method, parts.uri.path(), &body).await
        });
        return late.await.map_err(io::Error::other);
    }
    // The response (and with it the user's state) is taken before waiting, as a real server
    // that read the database and then stalled would do.
    let resp = match (fault.refusal, fault.status) {
        (Some(how), _) => {
            let (status, body) = how.response();
            Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json")
                .body(full(body))
                .expect("response")
        }
        (None, Some(status)) => status_error(status, fault.retry_headers),
        (None, None) => route(state, index, req).await?,
    };
    if let Some(gate) = &fault.gate {
        state.gate(gate).wait().await;
    }
    if let Some(delay) = fault.delay {
        tokio::time::sleep(delay).await;
    }
    if fault.reset_before_headers {
        return Err(io::Error::other("injected: reset before headers"));
    }
    apply_fault(state, resp, &fault).await
}

pub(super) async fn route(
    state: &Arc<State>,
    index: usize,
    req: Request<Incoming>,
) -> io::Result<Resp> {
    let path = req.uri().path().to_string();
    if path.ends_with('/') {
        // No users route ends in a slash (an empty id is no id).
        return Ok(echo(state, index, req).await);
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    // Percent-decoded, as the real API's router does.
    let decoded: Vec<String> = segments.iter().map(|s| decode(s)).collect();
    let decoded: Vec<&str> = decoded.iter().map(String::as_str).collect();
    if let ["v1", rest @ ..] = decoded.as_slice() {
        if projects::handles(rest, &method) {
            return Ok(projects::route(state, rest, req).await);
        }
    }
    Ok(match (segments.as_slice(), &method) {
        (["v1", "organization", "users"], &Method::GET) => list_users(state, req.uri().query()),
        (["v1", "organization", "users"], _) => not_allowed(),
        // Path parameters are percent-decoded, as the real API's router does.
        (["v1", "organization", "users", id], &Method::GET) => {
            let org = req.headers().get("openai-organization");
            let org = org.and_then(|v| v.to_str().ok());
            get_user(state, &decode(id), org)
        }
        (["v1", "organization", "users", id], &Method::POST) => {
            modify_user(state, &decode(id), req).await
        }
        (["v1", "organization", "users", id], &Method::DELETE) => delete_user(state, &decode(id)),
        (["v1", "organization", "users", _], _) => not_allowed(),
        (["v1", "organization", "users", id, "roles"], &Method::GET) => {
            user_roles(state, &decode(id))
        }
        (["v1", "organization", "users", _, "roles"], _) => not_allowed(),
        (["v1", "_test", "sse"], _) => sse(state, req.uri().query()),
        (["v1", "_test", "bytes"], _) => bytes_route(state, req.uri().query()),
        (["v1", "_test", "upload"], _) => upload(state, req).await,
        _ => echo(state, index, req).await,
    })
}

/// A write to a user, a project or a group, from its parts (see [`Fault::apply_after`]).
pub(super) async fn apply_late(
    state: &Arc<State>,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Resp {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (segments.as_slice(), method) {
        (["v1", "organization", "users", id], &Method::POST) => {
            modify_user_with(state, &decode(id), body)
        }
        (["v1", "organization", "users", id], &Method::DELETE) => delete_user(state, &decode(id)),
        (["v1", rest @ ..], _) if projects::handles(rest, method) => {
            let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
            projects::route_with(state, rest, method, &value)
        }
        _ => not_allowed(),
    }
}

/// A percent-decoded path segment (invalid escapes and non-UTF-8 kept as they are).
pub(super) fn decode(segment: &str) -> String {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_string())
}
