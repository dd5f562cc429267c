//! The configuration file as serde reads it: every table denies unknown keys.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub(super) url: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) channel: Option<String>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) shutdown_grace_secs: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) watch_files: Option<bool>,
    pub(super) log_format: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) ttl_secs: Option<u64>,
    pub(super) max_entries: Option<u64>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) stale_if_error_secs: Option<u64>,
    pub(super) stale_while_revalidate_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: Option<String>,
    pub(super) key_sha256: Option<OneOrMany>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) requests_per_minute: u32,
    pub(super) burst: Option<u32>,
}
