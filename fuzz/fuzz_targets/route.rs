//! A request's first steps, as `proxy::handle` takes them: `strip_prefix`
//! (prefix `/v1`), `canonicalize`, then `classify`, on any method and path.
//!
//! Input: `METHOD TARGET`; the target's part before the first `?` is the
//! path, and a `?` at all means a query string. Never panics, and:
//! - `strip_prefix` gives back exactly the rest after `/v1`, empty or
//!   starting with `/`;
//! - `GetUser` ids and `Write` plans' user ids are non-empty, hold no `/`,
//!   are at most `MAX_USER_ID_LEN` bytes; a `GetUser` id (and a POST or
//!   DELETE's on the user path) is the one segment after
//!   `/organization/users/`;
//! - `GetUser` only for GET without a query or a trailing `/`;
//!   `GetUserUncached` only for GET with one of them; `Write` only for
//!   writes the dependency table says evict something, with its plan;
//!   `invalid_user_id` only for a user id longer than that; everything
//!   else is `Forward`;
//! - a cached or written id purges under the same key (`user_id_of` on the
//!   raw segment and on the canonical one both give `decode_segment`'s id);
//! - the scope `GET /organization/users/*` allows the canonical path
//!   exactly when the method is GET and the path is
//!   `/organization/users/<one segment>`, and so for GET without a query it
//!   allows exactly the cached route (or its spelling with an over-long
//!   id, which is refused).
#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use openai_admin_gateway::config::Scope;
use openai_admin_gateway::proxy::{
    allowed_method, canonicalize, classify, decode_segment, is_write, plan, strip_prefix,
    user_id_of, Plan, Route, MAX_USER_ID_LEN,
};

const PREFIX: &str = "/v1";
const USERS: &str = "/organization/users/";

fn reader() -> &'static Scope {
    static SCOPE: OnceLock<Scope> = OnceLock::new();
    SCOPE.get_or_init(|| {
        Scope::parse(&["GET /organization/users/*".to_string()]).expect("a valid pattern")
    })
}

/// `Some((id, trailing_slash))` when `path` is `/organization/users/{id}`
/// with one non-empty segment, optionally followed by one `/`.
fn user_path(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix(USERS)?;
    let (id, trailing) = match rest.strip_suffix('/') {
        Some(id) => (id, true),
        None => (rest, false),
    };
    (!id.is_empty() && !id.contains('/')).then_some((id, trailing))
}

fuzz_target!(|text: &str| {
    let (token, target) = text.split_once(' ').unwrap_or((text, ""));
    let Ok(method) = Method::from_bytes(token.as_bytes()) else {
        return;
    };
    assert_eq!(
        allowed_method(&method),
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].contains(&method.as_str()),
        "{method}"
    );
    let (path, has_query) = match target.split_once('?') {
        Some((path, _)) => (path, true),
        None => (target, false),
    };

    let Some(raw) = strip_prefix(path, PREFIX) else {
        assert!(
            !path
                .strip_prefix(PREFIX)
                .is_some_and(|r| r.is_empty() || r.starts_with('/')),
            "{path:?} is under {PREFIX}"
        );
        return;
    };
    assert_eq!(format!("{PREFIX}{raw}"), path);
    assert!(raw.is_empty() || raw.starts_with('/'), "{raw:?}");

    let Ok(canonical_path) = canonicalize(raw) else {
        return;
    };
    let canonical: &str = canonical_path.as_str();
    let route = classify(&method, &canonical_path, has_query);
    let user = user_path(canonical);
    let what = format!("{method} {path:?} (query: {has_query}) as {canonical:?}: {route:?}");

    match route {
        Ok(Route::GetUser { user_id }) => {
            assert!(!user_id.is_empty(), "{what}");
            assert!(!user_id.contains('/'), "{what}");
            assert!(user_id.len() <= MAX_USER_ID_LEN, "{what}");
            let (id, trailing) = user.unwrap_or_else(|| panic!("not a user path: {what}"));
            assert_eq!(id, user_id, "{what}");
            assert!(method == Method::GET && !has_query && !trailing, "{what}");
            // The key the cache uses, whichever spelling a purge names.
            let key = decode_segment(user_id).map(|k| k.into_owned());
            assert_eq!(user_id_of(user_id), key, "{what}");
            let raw_id = raw.strip_suffix('/').unwrap_or(raw).rsplit('/').next();
            assert_eq!(raw_id.and_then(user_id_of), key, "{what}");
        }
        Ok(Route::Write { plan: p }) => {
            assert!(is_write(&method), "{what}");
            assert_eq!(plan(&method, &canonical_path), p, "{what}");
            assert_ne!(p, Plan::Nothing, "{what}");
            if let Plan::User(user_id) = p {
                assert!(!user_id.is_empty(), "{what}");
                assert!(!user_id.contains('/'), "{what}");
                assert!(user_id.len() <= MAX_USER_ID_LEN, "{what}");
            }
            if let (Some((id, _)), true) = (user, matches!(method, Method::POST | Method::DELETE)) {
                assert_eq!(p, Plan::User(id), "{what}");
            }
        }
        Ok(Route::GetUserUncached) => {
            let (id, trailing) = user.unwrap_or_else(|| panic!("not a user path: {what}"));
            assert!(method == Method::GET && (has_query || trailing), "{what}");
            assert!(id.len() <= MAX_USER_ID_LEN, "{what}");
        }
        Ok(Route::Forward) => {
            assert!(user.is_none() || !matches!(method, Method::GET), "{what}");
            assert!(
                !is_write(&method) || plan(&method, &canonical_path) == Plan::Nothing,
                "{what}"
            );
        }
        Err(ref e) => {
            assert_eq!(e.kind().1, "invalid_user_id", "{what}");
            let long = |p: Plan| matches!(p, Plan::User(id) if id.len() > MAX_USER_ID_LEN);
            assert!(
                user.is_some_and(|(id, _)| id.len() > MAX_USER_ID_LEN && method == Method::GET)
                    || long(plan(&method, &canonical_path)),
                "{what}"
            );
        }
    }

    let one_segment = user.is_some_and(|(_, trailing)| !trailing);
    let allowed = reader().allows(&method, &canonical_path);
    assert_eq!(
        allowed,
        method == Method::GET && one_segment,
        "GET /organization/users/* on {what}"
    );
    if method == Method::GET && !has_query {
        // An over-long id is refused with or without a trailing `/`; only
        // the one-segment spelling would have been the cached route.
        let cached = match route {
            Ok(Route::GetUser { .. }) => true,
            Err(_) => one_segment,
            Ok(_) => false,
        };
        assert_eq!(
            allowed, cached,
            "the reader scope and the cached route differ on {what}"
        );
    }
});
