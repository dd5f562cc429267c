//! The docs list what the code has: every configuration key with its default
//! (the README's table, `docs/internal-api.md`, `config/gateway.example.toml`,
//! all against `config::defaults::KEYS`), and every metric family a running
//! gateway exposes (the README's metrics table and `docs/internal-api.md`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openai_admin_gateway::config::defaults::{Stated, KEYS};
use support::*;

/// A bare TOML key as the config uses them (`max_connections`, `key_sha256`).
fn is_key_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A value as the docs write it, compared without quotes or backticks.
fn plain(v: &str) -> String {
    v.trim().trim_matches('`').trim_matches('"').to_string()
}

/// `key = value` lines of a TOML text, commented out or not, under their
/// section (`# [redis]` counts as a section; `[[clients]]` is `clients`).
/// Each key maps to the values it is written with.
fn toml_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        let bare = line.strip_prefix('#').map_or(line, str::trim_start);
        if let Some(name) = bare
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .or_else(|| bare.strip_prefix('[').and_then(|r| r.split_once(']')))
            .map(|(name, _)| name)
        {
            if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                section = name.to_string();
            }
            continue;
        }
        let Some((key, value)) = bare.split_once(" = ") else {
            continue;
        };
        let key = key.trim();
        if section.is_empty() || !is_key_name(key) {
            continue;
        }
        let value = value.split(" #").next().unwrap_or(value);
        out.entry(format!("{section}.{key}"))
            .or_default()
            .push(plain(value));
    }
    out
}

/// The README's configuration table: `| `key` | default | … |` rows (a row
/// may name two keys; `[[clients]] name` is `clients.name`).
fn readme_keys(readme: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells.len() < 3 || !line.starts_with("| `") {
            continue;
        }
        for name in cells[0].trim_start_matches("| ").split(", ") {
            let name = name.trim_matches('`');
            let name = match (
                name.strip_prefix("[[clients]] "),
                name.strip_prefix("[[orgs]] "),
            ) {
                (Some(rest), _) => format!("clients.{rest}"),
                (_, Some(rest)) => format!("orgs.{rest}"),
                _ => name.to_string(),
            };
            let is_key = name.split_once('.').is_some_and(|(s, k)| {
                [
                    "server",
                    "upstream",
                    "cache",
                    "redis",
                    "telemetry",
                    "clients",
                    "orgs",
                ]
                .contains(&s)
                    && is_key_name(k)
            });
            if is_key {
                out.insert(name, plain(cells[1]));
            }
        }
    }
    out
}

/// The TOML block under "## Configuration keys" in docs/internal-api.md.
fn internal_api_toml(doc: &str) -> String {
    let from = doc
        .find("## Configuration keys")
        .expect("docs/internal-api.md has a configuration section");
    let rest = &doc[from..];
    let start = rest.find("```toml").expect("a toml block") + "```toml".len();
    let end = rest[start..].find("```").expect("the block ends") + start;
    rest[start..end].to_string()
}

fn expected_keys() -> BTreeSet<String> {
    KEYS.iter().map(|k| k.name.to_string()).collect()
}

fn assert_same_keys(doc: &str, have: BTreeSet<String>) {
    let want = expected_keys();
    let missing: Vec<_> = want.difference(&have).collect();
    let unknown: Vec<_> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{doc}: keys missing {missing:?}, keys the file does not accept {unknown:?}"
    );
}

#[test]
fn the_readme_table_lists_every_key_with_its_default() {
    let table = readme_keys(&read("README.md"));
    assert_same_keys("README.md", table.keys().cloned().collect());
    for key in KEYS {
        if let Stated::Value(v) = key.default {
            assert_eq!(table[key.name], plain(v), "README.md: {}", key.name);
        }
    }
}

#[test]
fn the_example_config_lists_every_key_with_its_default() {
    let keys = toml_keys(&read("config/gateway.example.toml"));
    assert_same_keys(
        "config/gateway.example.toml",
        keys.keys().cloned().collect(),
    );
    for key in KEYS {
        if let Stated::Value(v) = key.default {
            assert_eq!(
                keys[key.name],
                vec![plain(v)],
                "config/gateway.example.toml: {}",
                key.name
            );
        }
    }
}

#[test]
fn docs_internal_api_lists_every_key_with_its_default() {
    let keys = toml_keys(&internal_api_toml(&read("docs/internal-api.md")));
    assert_same_keys("docs/internal-api.md", keys.keys().cloned().collect());
    for key in KEYS {
        if let Stated::Value(v) = key.default {
            assert_eq!(
                keys[key.name],
                vec![plain(v)],
                "docs/internal-api.md: {}",
                key.name
            );
        }
    }
}

/// Metric names (`gateway_…`) a document mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("gateway_") && w.len() > "gateway_".len())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_docs_list_every_metric_family_the_gateway_exposes() {
    let (_upstream, gw) = start_pair().await;
    let text = gw.metrics_text().await;
    let mut exposed = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = if kind == "counter" && !name.ends_with("_total") {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        exposed.insert(name);
    }
    assert!(exposed.len() > 10, "no metric families read from:\n{text}");
    for doc in ["README.md", "docs/internal-api.md"] {
        let named = metric_names(&read(doc));
        let missing: Vec<_> = exposed.difference(&named).collect();
        assert!(missing.is_empty(), "{doc} does not name {missing:?}");
    }
}
