//! The configuration file as serde reads it.
//!
//! Unknown keys are not denied by serde (`deny_unknown_fields` stops at the
//! first one): [`from_toml`] collects the path of every key no struct knows,
//! and [`super::Config::parse`] reports each of them as a problem beside the
//! validation problems. They remain an error.

use std::fmt::{self, Write as _};
use std::path::PathBuf;

use serde::Deserialize;

/// Deserialises `text`, and lists every unknown key as a problem such as
/// `server.lisen: unknown key` or `clients[1].alow: unknown key`, in the
/// naming style of the validator. The list holds the keys met before a
/// syntax or type error too.
pub(super) fn from_toml(text: &str) -> (Result<RawFile, toml::de::Error>, Vec<String>) {
    let mut unknown = Vec::new();
    let raw = toml::Deserializer::parse(text).and_then(|de| {
        serde_ignored::deserialize(de, |path| {
            unknown.push(format!("{}: unknown key", KeyPath(&path)));
        })
    });
    (raw, unknown)
}

/// A key's path as problems name it: tables joined with `.`, array entries
/// as `[i]`, keys that are not bare TOML keys quoted.
struct KeyPath<'a>(&'a serde_ignored::Path<'a>);

impl fmt::Display for KeyPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_path(self.0, &mut out)?;
        f.write_str(&out)
    }
}

fn write_path(path: &serde_ignored::Path<'_>, out: &mut String) -> fmt::Result {
    use serde_ignored::Path;
    match path {
        Path::Root => Ok(()),
        Path::Seq { parent, index } => {
            write_path(parent, out)?;
            write!(out, "[{index}]")
        }
        Path::Map { parent, key } => {
            write_path(parent, out)?;
            if !out.is_empty() {
                out.push('.');
            }
            if is_bare_key(key) {
                out.push_str(key);
                Ok(())
            } else {
                // Quoted with escapes, so a key never breaks the one line
                // its problem is printed on.
                write!(out, "{key:?}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => write_path(parent, out),
    }
}

/// A TOML bare key: one or more of `A-Z a-z 0-9 _ -`.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[derive(Debug, Deserialize)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) clients: Vec<RawClient>,
    pub(super) redis: Option<RawRedis>,
    #[serde(default)]
    pub(super) orgs: Vec<RawOrg>,
    #[serde(default)]
    pub(super) telemetry: RawTelemetry,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawTelemetry {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) sample_ratio: Option<f64>,
}

/// One `[[orgs]]` entry.
#[derive(Debug, Deserialize)]
pub(super) struct RawOrg {
    pub(super) name: Option<String>,
    pub(super) organization_id: Option<String>,
    pub(super) admin_key_env: Option<String>,
    pub(super) admin_key_file: Option<PathBuf>,
    pub(super) rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRedis {
    pub(super) url: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) channel: Option<String>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) shutdown_grace_secs: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) workers: Option<usize>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) send_timeout_ms: Option<u64>,
    pub(super) watch_files: Option<bool>,
    pub(super) log_format: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawUpstream {
    pub(super) base_url: Option<String>,
    pub(super) admin_key_env: Option<String>,
    pub(super) admin_key_file: Option<PathBuf>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) body_idle_timeout_ms: Option<u64>,
    pub(super) pool_idle_timeout_secs: Option<u64>,
    pub(super) max_concurrent_requests: Option<usize>,
    pub(super) max_queued_requests: Option<usize>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) organization_id: Option<String>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) budget_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCache {
    pub(super) ttl_secs: Option<u64>,
    pub(super) max_entries: Option<u64>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) stale_if_error_secs: Option<u64>,
    pub(super) stale_while_revalidate_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawClient {
    pub(super) name: Option<String>,
    pub(super) key_sha256: Option<OneOrMany>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) allow: Option<Vec<String>>,
    pub(super) orgs: Option<Vec<String>>,
    pub(super) budget_weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRateLimit {
    pub(super) requests_per_minute: u32,
    pub(super) burst: Option<u32>,
}
