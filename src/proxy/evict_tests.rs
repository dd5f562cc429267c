use super::*;

/// A path as the table sees it (taken as canonical; some tests feed it
/// spellings `canonicalize` would refuse).
fn cp(s: &str) -> CanonicalPath<'_> {
    CanonicalPath::unchecked(s)
}

/// A concrete path for a template: `{user_id}` → `u1`, other `{..}` → `x1`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s {
            "{user_id}" => "u1",
            s if s.starts_with('{') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("method")
}

fn expected(rule: &Rule) -> Plan<'static> {
    match rule.evicts {
        UserInPath => Plan::User("u1"),
        UserInBody => Plan::UserInBody,
        All => Plan::All { listed: true },
        Nothing => Plan::Nothing,
    }
}

#[test]
fn every_row_matches_its_own_write_with_or_without_a_trailing_slash() {
    for rule in RULES {
        let path = concrete(rule.path);
        let m = method(rule.method);
        assert_eq!(
            plan(&m, &cp(&path)),
            expected(rule),
            "{} {}",
            rule.method,
            path
        );
        let slash = format!("{path}/");
        assert_eq!(
            plan(&m, &cp(&slash)),
            expected(rule),
            "{} {slash}",
            rule.method
        );
        // Reads never evict.
        assert_eq!(plan(&Method::GET, &cp(&path)), Plan::Nothing, "GET {path}");
    }
}

#[test]
fn user_rows_name_the_user_segment_and_other_rows_do_not() {
    for rule in RULES {
        let has_user = rule.path.contains("{user_id}");
        assert_eq!(has_user, rule.evicts == UserInPath, "{}", rule.path);
    }
}

#[test]
fn every_template_fits_the_split_path() {
    for rule in RULES {
        let n = rule.path.split('/').count();
        assert!(n <= MAX_SEGMENTS, "{} has {n} segments", rule.path);
    }
}

#[test]
fn a_write_longer_than_every_template_falls_to_the_prefixes() {
    let deep = "/organization/projects/x1/users/u1/a/b/c/d";
    assert!(deep.split('/').count() > MAX_SEGMENTS);
    assert_eq!(plan(&Method::POST, &cp(deep)), Plan::All { listed: false });
    assert_eq!(
        plan(&Method::POST, &cp("/organization/invites/a/b/c/d/e/f/g")),
        Plan::Nothing
    );
}

#[test]
fn an_empty_id_segment_matches_no_row() {
    // `/organization/users//roles`: the `{user_id}` segment is empty.
    assert_eq!(
        plan(&Method::POST, &cp("/organization/users//roles")),
        Plan::All { listed: false }
    );
    assert_eq!(
        plan(&Method::DELETE, &cp("/organization/projects//spend_limit")),
        Plan::All { listed: false }
    );
}

#[test]
fn rows_are_unique() {
    for (i, a) in RULES.iter().enumerate() {
        for b in &RULES[i + 1..] {
            assert!(
                !(a.method == b.method && a.path == b.path),
                "{} {} twice",
                a.method,
                a.path
            );
        }
    }
}

#[test]
fn unnamed_writes_under_projects_groups_roles_or_users_evict_everything() {
    for path in [
        "/organization/projects/p1/new_thing",
        "/organization/groups/g1/users/u1/extra",
        "/organization/roles/r1/whatever",
        "/organization/users/u1/new_thing",
        "/projects/p1/users/u1/something",
    ] {
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert_eq!(
                plan(&m, &cp(path)),
                Plan::All { listed: false },
                "{m} {path}"
            );
        }
    }
    for path in [
        "/chat/completions",
        "/files/f1",
        "/organization/invites/i1/x",
    ] {
        assert_eq!(plan(&Method::POST, &cp(path)), Plan::Nothing, "{path}");
    }
}

#[test]
fn empty_segments_do_not_match_a_template() {
    assert_eq!(
        plan(&Method::POST, &cp("/organization/projects/p1/users/")),
        Plan::UserInBody
    );
    assert_eq!(
        plan(&Method::DELETE, &cp("/organization/groups//users/u1")),
        Plan::All { listed: false }
    );
}

/// Every write operation of the spec: `(METHOD, path)`, read line by line
/// (paths are two-space keys under `paths:`, methods four-space keys).
fn spec_writes() -> Vec<(String, String)> {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/openapi/openai-openapi.yaml"
    );
    let text = std::fs::read_to_string(file).expect("the OpenAI spec next to the repository");
    let mut out = Vec::new();
    let (mut in_paths, mut path) = (false, None::<String>);
    for line in text.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths {
            continue;
        }
        if !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if let (Some(m), Some(p)) = (line.strip_prefix("    "), &path) {
            let m = m.strip_suffix(':').unwrap_or("");
            if ["post", "put", "patch", "delete"].contains(&m) {
                out.push((m.to_uppercase(), p.clone()));
            }
        }
    }
    out
}

#[test]
fn every_admin_write_in_the_spec_has_a_row_and_every_row_is_in_the_spec() {
    let writes = spec_writes();
    assert!(writes.len() > 50, "spec not read: {writes:?}");
    let admin = |p: &str| p.starts_with("/organization") || p.starts_with("/projects");
    for (m, p) in writes.iter().filter(|(_, p)| admin(p)) {
        assert!(
            RULES.iter().any(|r| r.method == m && r.path == p),
            "no row for {m} {p}"
        );
    }
    for r in RULES {
        assert!(
            writes.iter().any(|(m, p)| r.method == m && r.path == p),
            "row {} {} is not in the spec",
            r.method,
            r.path
        );
    }
    // The rest of the API (completions, files, ...) can not change a user.
    for (m, p) in writes.iter().filter(|(_, p)| !admin(p)) {
        assert_eq!(
            plan(&method(m), &cp(&concrete(p))),
            Plan::Nothing,
            "{m} {p}"
        );
    }
}
