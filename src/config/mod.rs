//! Configuration: the TOML file (serde structs, unknown keys rejected) and its
//! validation into a typed [`Config`].
//!
//! Parsing and validation are separate steps: [`Config::parse`] first
//! deserialises the raw file, noting every unknown key, then checks every key
//! and collects *all* problems (each naming its key, unknown keys included)
//! instead of stopping at the first one, so `check-config` can print them
//! together.

pub mod defaults;
mod orgs;
mod raw;
mod scope;
mod telemetry;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::AdminKey;

pub use scope::Scope;
pub use telemetry::TelemetryConfig;
pub use validate::parse_hex32;
use validate::Validator;

/// Every problem found in a configuration file, each naming its key.
#[derive(Debug)]
pub struct ConfigError {
    problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }

    /// `Ok` when `problems` is empty, else an error holding them.
    pub fn from_problems(problems: Vec<String>) -> Result<(), ConfigError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The problems, one sentence each.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// === validated config ===

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing listener settings.
    pub server: ServerConfig,
    /// Where requests go and how.
    pub upstream: UpstreamConfig,
    /// The retrieve-user cache.
    pub cache: CacheConfig,
    /// The clients allowed in, with their limits and scopes.
    pub clients: Vec<ClientConfig>,
    /// Shared rate-limit state for replicas, when configured.
    pub redis: Option<RedisConfig>,
    /// The organizations besides the default (`[[orgs]]`), in file order.
    pub orgs: Vec<OrgConfig>,
    /// Trace export (`[telemetry]`); restart-only.
    pub telemetry: TelemetryConfig,
}

/// One `[[orgs]]` entry: an organization besides the default one.
#[derive(Debug, Clone)]
pub struct OrgConfig {
    /// Its name (clients list it in `orgs`; metrics and logs show it).
    pub name: String,
    /// Its OpenAI organization id: clients select it with
    /// `OpenAI-Organization`, and it is sent upstream.
    pub organization_id: String,
    /// Its admin key (redacted in `Debug`).
    pub admin_key: AdminKey,
    /// The file the key was read from, when it came from one (watched).
    pub admin_key_file: Option<PathBuf>,
    /// Its budget upstream, when limited (the organization's budget).
    pub rate_limit: Option<RateLimit>,
}

/// `[redis]`: where replicas share rate-limit state.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://` (redacted in logs).
    pub url: String,
    /// Prepended to client names to form keys.
    pub key_prefix: String,
    /// The invalidation bus's pub/sub channel.
    pub channel: String,
    /// Bound on one check; slower answers fall back to local limits.
    pub timeout: Duration,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address (metrics, health, cache purge).
    pub admin_listen: SocketAddr,
    /// Client-facing path prefix, e.g. `/v1` (no trailing slash, may be empty).
    pub path_prefix: String,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Bound on concurrently open client connections.
    pub max_connections: usize,
    /// Worker threads, each with its own current-thread runtime, public
    /// listener (`SO_REUSEPORT`) and upstream pool.
    pub workers: usize,
    /// Time allowed from accept to the first request's headers (TLS and
    /// the HTTP/2 preface included), and for each later request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no request open for this long is closed.
    pub idle_timeout: Duration,
    /// A response the client takes nothing of for this long (no byte
    /// accepted by its socket, or an HTTP/2 stream whose window stays
    /// shut) has its connection closed.
    pub send_timeout: Duration,
    /// Reload when the config file, the admin key file or the TLS files
    /// change (as Kubernetes swaps mounted Secrets and ConfigMaps).
    pub watch_files: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// PEM certificate chain and private key, when terminating TLS.
    pub tls: Option<TlsFiles>,
}

/// Certificate and key files for TLS termination.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL requests are appended to, e.g. `https://api.openai.com/v1`.
    pub base_url: http::Uri,
    /// The organization's admin key (redacted in `Debug`).
    pub admin_key: AdminKey,
    /// The file it was read from, when it came from one (watched).
    pub admin_key_file: Option<PathBuf>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed until response headers arrive (and for a whole cache
    /// fill or buffered body).
    pub timeout: Duration,
    /// A streamed body that sends nothing for this long is cut.
    pub body_idle_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Global cap on in-flight upstream requests.
    pub max_concurrent_requests: usize,
    /// Requests allowed to wait for a slot beyond that cap.
    pub max_queued_requests: usize,
    /// Extra PEM roots trusted for the upstream (a corporate proxy's CA).
    pub ca_file: Option<PathBuf>,
    /// The default organization's OpenAI id, when set: clients may select
    /// it with `OpenAI-Organization`, and it is sent upstream.
    pub organization_id: Option<String>,
    /// The organization's budget: everything sent upstream, all clients
    /// (and, with `[redis]`, all replicas) together. None: no ceiling (the
    /// pause after an upstream 429 still applies).
    pub rate_limit: Option<RateLimit>,
    /// How long a request may wait for a turn of the organization's budget.
    pub budget_wait: Duration,
    /// Connection pools to keep: one per server worker (`server.workers`,
    /// copied here; not a key of its own).
    pub pools: usize,
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// How long a stored user is served.
    pub ttl: Duration,
    /// Most users kept at once.
    pub max_entries: u64,
    /// Larger user responses pass through unstored.
    pub max_body_bytes: usize,
    /// How long past its TTL an entry may be served when the refetch fails.
    pub stale_if_error: Duration,
    /// How long past its TTL an entry is served at once while one
    /// background refresh runs.
    pub stale_while_revalidate: Duration,
}

/// One `[[clients]]` entry.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// SHA-256 digests of the client's accepted keys (two during rotation).
    pub key_sha256: Vec<[u8; 32]>,
    /// Rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Scope, if restricted.
    pub allow: Option<Scope>,
    /// The organizations it may act on, by name; the first is used when a
    /// request names none (`["default"]` unless set).
    pub orgs: Vec<String>,
    /// Turns of the organization's budget per round while it waits (1..=100).
    pub budget_weight: u32,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: show only what follows the '@'.
        let shown = match self.url.rsplit_once('@') {
            Some((_, host)) => format!("redis://<redacted>@{host}"),
            None => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &shown)
            .field("key_prefix", &self.key_prefix)
            .field("channel", &self.channel)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A client's request budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_minute: u32,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

/// Where the admin key may come from; tests pass their own environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

// === impl Config ===

impl Config {
    /// The files this config depends on besides itself (the admin key
    /// file, the TLS certificate and key): what the file watch follows.
    pub fn dependent_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.upstream.admin_key_file.iter().cloned().collect();
        files.extend(self.orgs.iter().filter_map(|o| o.admin_key_file.clone()));
        if let Some(tls) = &self.server.tls {
            files.push(tls.cert.clone());
            files.push(tls.key.clone());
        }
        files
    }

    /// Reads and validates the file at `path`, taking the admin key from the
    /// process environment (or the file the config names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("config file {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        // A value that is not UTF-8 arrives with U+FFFD in it, which the
        // admin key check refuses by name (rather than "not set").
        Self::parse(&text, base, &|name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// Parses and validates a TOML document. Relative file paths in it are
    /// resolved against `base_dir`; `env` looks up environment variables.
    pub fn parse(text: &str, base_dir: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let (raw, unknown) = raw::from_toml(text);
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                let mut problems = unknown;
                problems.push(format!("config: {e}"));
                return Err(ConfigError { problems });
            }
        };
        // Unknown keys are problems like any other: the file is refused.
        let mut v = Validator {
            problems: unknown,
            base_dir,
        };
        let raw::RawFile {
            server,
            upstream,
            cache,
            clients,
            redis,
            orgs,
            telemetry,
        } = raw;
        let server = v.server(server);
        let upstream = v.upstream(upstream, env).map(|mut u| {
            u.pools = server.as_ref().map_or(1, |s| s.workers);
            u
        });
        let cache = v.cache(cache);
        v.client_org_names(&orgs, &clients);
        let clients = v.clients(clients);
        let redis = redis.and_then(|r| v.redis(r));
        let default_id = upstream.as_ref().and_then(|u| u.organization_id.as_deref());
        let orgs = v.orgs(orgs, default_id, env);
        let telemetry = v.telemetry(telemetry);
        match (server, upstream, cache) {
            (Some(server), Some(upstream), Some(cache)) if v.problems.is_empty() => {
                let config = Config {
                    server,
                    upstream,
                    cache,
                    clients,
                    redis,
                    orgs,
                    telemetry,
                };
                config.cross_checks()?;
                Ok(config)
            }
            _ => Err(ConfigError {
                problems: v.problems,
            }),
        }
    }

    fn cross_checks(&self) -> Result<(), ConfigError> {
        let admins: Vec<[u8; 32]> = std::iter::once(&self.upstream.admin_key)
            .chain(self.orgs.iter().map(|o| &o.admin_key))
            .map(|k| crate::secret::digest(k.expose().as_bytes()))
            .collect();
        let mut problems = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.key_sha256.iter().any(|k| admins.contains(k)) {
                problems.push(format!(
                    "clients[{i}].key_sha256: is the hash of an admin key; clients must get keys of their own"
                ));
            }
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            problems.push("server.admin_listen: must differ from server.listen".to_string());
        }
        ConfigError::from_problems(problems)
    }
}
