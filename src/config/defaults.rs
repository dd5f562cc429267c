//! Every configuration default, named once.
//!
//! The validator takes its defaults from here, and [`KEYS`] lists every key
//! the file accepts with the default the docs must state. Three documents
//! copy it for people: the README's configuration table,
//! `docs/internal-api.md` and `config/gateway.example.toml`;
//! `tests/config_docs.rs` checks that each lists every key of [`KEYS`] with
//! the same default, and a unit test checks that [`KEYS`] names every field
//! of the raw file structs, so neither side can drift.

/// `server.listen`.
pub const LISTEN: &str = "127.0.0.1:8080";
/// `server.admin_listen`.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `server.path_prefix`.
pub const PATH_PREFIX: &str = "/v1";
/// `server.shutdown_grace_secs`.
pub const SHUTDOWN_GRACE_SECS: u64 = 30;
/// `server.max_connections`.
pub const MAX_CONNECTIONS: usize = 10_000;
/// `server.header_read_timeout_ms`.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// `server.idle_timeout_secs`.
pub const IDLE_TIMEOUT_SECS: u64 = 120;
/// `server.watch_files`.
pub const WATCH_FILES: bool = true;
/// `server.send_timeout_ms`.
pub const SEND_TIMEOUT_MS: u64 = 30_000;
/// `server.log_format`.
pub const LOG_FORMAT: &str = "text";
/// `upstream.base_url`.
pub const BASE_URL: &str = "https://api.openai.com/v1";
/// `upstream.admin_key_env`.
pub const ADMIN_KEY_ENV: &str = "OPENAI_ADMIN_KEY";
/// `upstream.connect_timeout_ms`.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// `upstream.timeout_ms`.
pub const TIMEOUT_MS: u64 = 60_000;
/// `upstream.body_idle_timeout_ms`.
pub const BODY_IDLE_TIMEOUT_MS: u64 = 60_000;
/// `upstream.pool_idle_timeout_secs`.
pub const POOL_IDLE_TIMEOUT_SECS: u64 = 90;
/// `upstream.max_concurrent_requests`.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// `upstream.max_queued_requests`.
pub const MAX_QUEUED_REQUESTS: usize = 1024;
/// `upstream.budget_wait_ms`.
pub const BUDGET_WAIT_MS: u64 = 5_000;
/// Most `upstream.budget_wait_ms` may be (a waiting request holds its
/// connection).
pub const MAX_BUDGET_WAIT_MS: u64 = 60_000;
/// `clients.budget_weight`.
pub const BUDGET_WEIGHT: u32 = 1;
/// Most `clients.budget_weight` may be.
pub const MAX_BUDGET_WEIGHT: u32 = 100;
/// `cache.ttl_secs`.
pub const TTL_SECS: u64 = 300;
/// `cache.max_entries`.
pub const MAX_ENTRIES: u64 = 100_000;
/// `cache.max_body_bytes`.
pub const MAX_BODY_BYTES: usize = 65_536;
/// `cache.stale_if_error_secs` (off).
pub const STALE_IF_ERROR_SECS: u64 = 0;
/// `cache.stale_while_revalidate_secs` (off).
pub const STALE_WHILE_REVALIDATE_SECS: u64 = 0;
/// The organization `[upstream]` configures, and every client's
/// organization when `clients.orgs` is not set.
pub const DEFAULT_ORG: &str = "default";
/// `redis.key_prefix`.
pub const REDIS_KEY_PREFIX: &str = "openai-admin-gateway:ratelimit:";
/// `redis.channel`.
pub const REDIS_CHANNEL: &str = "openai-admin-gateway:invalidations";
/// `redis.timeout_ms`.
pub const REDIS_TIMEOUT_MS: u64 = 50;

/// `telemetry.service_name`.
pub const SERVICE_NAME: &str = "openai-admin-gateway";
/// `telemetry.sample_ratio`.
pub const SAMPLE_RATIO: f64 = 1.0;

/// A key's default as the docs state it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stated {
    /// A TOML value, written as the example file writes it (`30`, `"/v1"`, `true`).
    Value(&'static str),
    /// No literal default (unset, required, or derived such as the CPU count);
    /// the docs describe it in words.
    Described,
}

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The dotted key (`server.listen`; `clients.name` for `[[clients]] name`).
    pub name: &'static str,
    /// Its default.
    pub default: Stated,
}

const fn value(name: &'static str, v: &'static str) -> Key {
    Key {
        name,
        default: Stated::Value(v),
    }
}

const fn described(name: &'static str) -> Key {
    Key {
        name,
        default: Stated::Described,
    }
}

/// Every key the file accepts. The literal values here must read the same
/// as the constants above: a unit test parses each and compares.
pub const KEYS: &[Key] = &[
    value("server.listen", "\"127.0.0.1:8080\""),
    value("server.admin_listen", "\"127.0.0.1:9090\""),
    value("server.path_prefix", "\"/v1\""),
    value("server.shutdown_grace_secs", "30"),
    value("server.max_connections", "10000"),
    described("server.workers"),
    value("server.header_read_timeout_ms", "10000"),
    value("server.idle_timeout_secs", "120"),
    value("server.send_timeout_ms", "30000"),
    value("server.watch_files", "true"),
    value("server.log_format", "\"text\""),
    described("server.tls_cert"),
    described("server.tls_key"),
    value("upstream.base_url", "\"https://api.openai.com/v1\""),
    value("upstream.admin_key_env", "\"OPENAI_ADMIN_KEY\""),
    described("upstream.admin_key_file"),
    value("upstream.connect_timeout_ms", "5000"),
    value("upstream.timeout_ms", "60000"),
    value("upstream.body_idle_timeout_ms", "60000"),
    value("upstream.pool_idle_timeout_secs", "90"),
    value("upstream.max_concurrent_requests", "256"),
    value("upstream.max_queued_requests", "1024"),
    described("upstream.ca_file"),
    described("upstream.organization_id"),
    described("upstream.rate_limit"),
    value("upstream.budget_wait_ms", "5000"),
    value("cache.ttl_secs", "300"),
    value("cache.max_entries", "100000"),
    value("cache.max_body_bytes", "65536"),
    value("cache.stale_if_error_secs", "0"),
    value("cache.stale_while_revalidate_secs", "0"),
    described("redis.url"),
    value("redis.key_prefix", "\"openai-admin-gateway:ratelimit:\""),
    value("redis.channel", "\"openai-admin-gateway:invalidations\""),
    value("redis.timeout_ms", "50"),
    described("telemetry.otlp_endpoint"),
    value("telemetry.service_name", "\"openai-admin-gateway\""),
    value("telemetry.sample_ratio", "1.0"),
    described("clients.name"),
    described("clients.key_sha256"),
    described("clients.rate_limit"),
    described("clients.allow"),
    described("clients.orgs"),
    described("orgs.name"),
    described("orgs.organization_id"),
    described("orgs.admin_key_env"),
    described("orgs.admin_key_file"),
    described("orgs.rate_limit"),
    value("clients.budget_weight", "1"),
];
