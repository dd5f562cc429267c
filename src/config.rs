//! Configuration: the TOML file (serde structs, unknown keys rejected) and its
//! validation into a typed [`Config`].
//!
//! Parsing and validation are separate steps: [`Config::parse`] first
//! deserialises the raw file, then checks every key and collects *all*
//! problems (each naming its key) instead of stopping at the first one, so
//! `check-config` can print them together.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::scope::Scope;
use crate::secret::AdminKey;

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

// === raw file structs ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    clients: Vec<RawClient>,
    redis: Option<RawRedis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    key_prefix: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    path_prefix: Option<String>,
    shutdown_grace_secs: Option<u64>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    log_format: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: Option<String>,
    admin_key_env: Option<String>,
    admin_key_file: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
    pool_idle_timeout_secs: Option<u64>,
    max_concurrent_requests: Option<usize>,
    max_queued_requests: Option<usize>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_secs: Option<u64>,
    max_entries: Option<u64>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    key_sha256: Option<OneOrMany>,
    rate_limit: Option<RawRateLimit>,
    allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests_per_minute: u32,
    burst: Option<u32>,
}

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
}

/// `[redis]`: where replicas share rate-limit state.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://` (redacted in logs).
    pub url: String,
    /// Prepended to client names to form keys.
    pub key_prefix: String,
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
    /// Time allowed for a request's headers (and a TLS handshake) to arrive.
    pub header_read_timeout: Duration,
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
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed until response headers arrive.
    pub timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Global cap on in-flight upstream requests.
    pub max_concurrent_requests: usize,
    /// Requests allowed to wait for a slot beyond that cap.
    pub max_queued_requests: usize,
    /// Extra PEM roots trusted for the upstream (a corporate proxy's CA).
    pub ca_file: Option<PathBuf>,
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
    /// Reads and validates the file at `path`, taking the admin key from the
    /// process environment (or the file the config names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(format!("config file {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base, &|name| std::env::var(name).ok())
    }

    /// Parses and validates a TOML document. Relative file paths in it are
    /// resolved against `base_dir`; `env` looks up environment variables.
    pub fn parse(text: &str, base_dir: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| ConfigError::one(format!("config: {e}")))?;
        let mut v = Validator {
            problems: Vec::new(),
            base_dir,
        };
        let RawFile {
            server,
            upstream,
            cache,
            clients,
            redis,
        } = raw;
        let server = v.server(server);
        let upstream = v.upstream(upstream, env);
        let cache = v.cache(cache);
        let clients = v.clients(clients);
        let redis = redis.and_then(|r| v.redis(r));
        match (server, upstream, cache) {
            (Some(server), Some(upstream), Some(cache)) if v.problems.is_empty() => {
                let config = Config {
                    server,
                    upstream,
                    cache,
                    clients,
                    redis,
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
        let admin = crate::auth::digest(self.upstream.admin_key.expose().as_bytes());
        let mut problems = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.key_sha256.contains(&admin) {
                problems.push(format!(
                    "clients[{i}].key_sha256: is the hash of the admin key; clients must get keys of their own"
                ));
            }
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            problems.push("server.admin_listen: must differ from server.listen".to_string());
        }
        ConfigError::from_problems(problems)
    }
}

struct Validator<'a> {
    problems: Vec<String>,
    base_dir: &'a Path,
}

impl Validator<'_> {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    fn addr(&mut self, key: &str, value: Option<String>, default: &str) -> Option<SocketAddr> {
        let s = value.unwrap_or_else(|| default.to_string());
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(format!("{key}: {s:?} is not an IP:port address"));
                None
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<u64>, default: u64) -> u64 {
        let v = value.unwrap_or(default);
        if v == 0 {
            self.problem(format!("{key}: must be greater than 0"));
        }
        v
    }

    fn path(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }

    fn readable(&mut self, key: &str, p: &Path) {
        if let Err(e) = std::fs::metadata(p) {
            self.problem(format!("{key}: cannot read {}: {e}", p.display()));
        }
    }

    fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let RawServer {
            listen,
            admin_listen,
            path_prefix,
            shutdown_grace_secs,
            max_connections,
            header_read_timeout_ms,
            log_format,
            tls_cert,
            tls_key,
        } = raw;
        let listen = self.addr("server.listen", listen, "127.0.0.1:8080");
        let admin_listen = self.addr("server.admin_listen", admin_listen, "127.0.0.1:9090");
        let path_prefix = self.prefix(path_prefix.unwrap_or_else(|| "/v1".into()));
        let grace = shutdown_grace_secs.unwrap_or(30);
        let max_connections = max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            self.problem("server.max_connections: must be greater than 0".into());
        }
        let hrt = self.positive(
            "server.header_read_timeout_ms",
            header_read_timeout_ms,
            10_000,
        );
        let log_format = match log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.problem(format!(
                    "server.log_format: {other:?} is not one of \"text\", \"json\""
                ));
                LogFormat::Text
            }
        };
        let tls = match (tls_cert, tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let (cert, key) = (self.path(cert), self.path(key));
                self.readable("server.tls_cert", &cert);
                self.readable("server.tls_key", &key);
                Some(TlsFiles { cert, key })
            }
            (Some(_), None) => {
                self.problem("server.tls_key: required when server.tls_cert is set".into());
                None
            }
            (None, Some(_)) => {
                self.problem("server.tls_cert: required when server.tls_key is set".into());
                None
            }
        };
        Some(ServerConfig {
            listen: listen?,
            admin_listen: admin_listen?,
            path_prefix: path_prefix?,
            shutdown_grace: Duration::from_secs(grace),
            max_connections,
            header_read_timeout: Duration::from_millis(hrt),
            log_format,
            tls,
        })
    }

    fn prefix(&mut self, p: String) -> Option<String> {
        let trimmed = p.trim_end_matches('/');
        let ok = (trimmed.is_empty() || trimmed.starts_with('/'))
            && !trimmed.contains(['?', '#', '%', ' '])
            && !trimmed.split('/').any(|s| s == "." || s == "..");
        if ok {
            Some(trimmed.to_string())
        } else {
            self.problem(format!(
                "server.path_prefix: {p:?} must be empty or a path starting with '/' without query, dot segments or escapes"
            ));
            None
        }
    }

    fn upstream(&mut self, raw: RawUpstream, env: EnvLookup<'_>) -> Option<UpstreamConfig> {
        let RawUpstream {
            base_url,
            admin_key_env,
            admin_key_file,
            connect_timeout_ms,
            timeout_ms,
            pool_idle_timeout_secs,
            max_concurrent_requests,
            max_queued_requests,
            ca_file,
        } = raw;
        let base_url =
            self.base_url(base_url.unwrap_or_else(|| "https://api.openai.com/v1".into()));
        let admin_key = self.admin_key(admin_key_env, admin_key_file, env);
        let connect = self.positive("upstream.connect_timeout_ms", connect_timeout_ms, 5_000);
        let timeout = self.positive("upstream.timeout_ms", timeout_ms, 60_000);
        let idle = pool_idle_timeout_secs.unwrap_or(90);
        let max_concurrent = max_concurrent_requests.unwrap_or(256);
        if max_concurrent == 0 {
            self.problem("upstream.max_concurrent_requests: must be greater than 0".into());
        }
        let ca_file = ca_file.map(|p| self.path(p));
        if let Some(p) = &ca_file {
            self.readable("upstream.ca_file", p);
        }
        Some(UpstreamConfig {
            base_url: base_url?,
            admin_key: admin_key?,
            connect_timeout: Duration::from_millis(connect),
            timeout: Duration::from_millis(timeout),
            pool_idle_timeout: Duration::from_secs(idle),
            max_concurrent_requests: max_concurrent,
            max_queued_requests: max_queued_requests.unwrap_or(1024),
            ca_file,
        })
    }

    fn base_url(&mut self, s: String) -> Option<http::Uri> {
        let trimmed = s.trim_end_matches('/');
        match trimmed.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.query().is_none() =>
            {
                if u.scheme_str() == Some("http") && !is_loopback(u.host().unwrap_or("")) {
                    self.problem(format!(
                        "upstream.base_url: {s:?} is plain http:// to a non-loopback host; the admin key would travel unencrypted (use https://)"
                    ));
                    return None;
                }
                Some(u)
            }
            _ => {
                self.problem(format!(
                    "upstream.base_url: {s:?} must be an absolute http:// or https:// URL without a query"
                ));
                None
            }
        }
    }

    fn admin_key(
        &mut self,
        var: Option<String>,
        file: Option<PathBuf>,
        env: EnvLookup<'_>,
    ) -> Option<AdminKey> {
        let (key, value) = match (var, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    "upstream.admin_key_env: set either admin_key_env or admin_key_file, not both"
                        .into(),
                );
                return None;
            }
            (None, Some(file)) => {
                let file = self.path(file);
                match std::fs::read_to_string(&file) {
                    Ok(s) => ("upstream.admin_key_file", s),
                    Err(e) => {
                        self.problem(format!(
                            "upstream.admin_key_file: cannot read {}: {e}",
                            file.display()
                        ));
                        return None;
                    }
                }
            }
            (var, None) => {
                let name = var.unwrap_or_else(|| "OPENAI_ADMIN_KEY".into());
                match env(&name) {
                    Some(v) => ("upstream.admin_key_env", v),
                    None => {
                        self.problem(format!(
                            "upstream.admin_key_env: environment variable {name} is not set"
                        ));
                        return None;
                    }
                }
            }
        };
        match AdminKey::new(value.trim()) {
            Some(k) => Some(k),
            None => {
                self.problem(format!(
                    "{key}: the admin key is empty or not a valid header value"
                ));
                None
            }
        }
    }

    fn cache(&mut self, raw: RawCache) -> Option<CacheConfig> {
        let RawCache {
            ttl_secs,
            max_entries,
            max_body_bytes,
        } = raw;
        let ttl = self.positive("cache.ttl_secs", ttl_secs, 300);
        let max_entries = self.positive("cache.max_entries", max_entries, 100_000);
        let max_body = max_body_bytes.unwrap_or(65_536);
        if max_body == 0 {
            self.problem("cache.max_body_bytes: must be greater than 0".into());
        }
        Some(CacheConfig {
            ttl: Duration::from_secs(ttl),
            max_entries,
            max_body_bytes: max_body,
        })
    }

    fn redis(&mut self, raw: RawRedis) -> Option<RedisConfig> {
        let RawRedis {
            url,
            key_prefix,
            timeout_ms,
        } = raw;
        let timeout = self.positive("redis.timeout_ms", timeout_ms, 50);
        let Some(url) = url else {
            self.problem("redis.url: missing (e.g. \"redis://127.0.0.1:6379/0\")".into());
            return None;
        };
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            self.problem("redis.url: must start with redis://, rediss:// or unix://".into());
            return None;
        }
        Some(RedisConfig {
            url,
            key_prefix: key_prefix.unwrap_or_else(|| "openai-admin-gateway:ratelimit:".into()),
            timeout: Duration::from_millis(timeout),
        })
    }

    fn clients(&mut self, raw: Vec<RawClient>) -> Vec<ClientConfig> {
        let mut out: Vec<ClientConfig> = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            if let Some(c) = self.client(i, c) {
                if out.iter().any(|o| o.name == c.name) {
                    self.problem(format!("clients[{i}].name: {:?} is used twice", c.name));
                }
                for k in &c.key_sha256 {
                    if out.iter().any(|o| o.key_sha256.contains(k)) {
                        self.problem(format!(
                            "clients[{i}].key_sha256: the same key is listed for two clients"
                        ));
                    }
                }
                out.push(c);
            }
        }
        out
    }

    fn client(&mut self, i: usize, raw: RawClient) -> Option<ClientConfig> {
        let RawClient {
            name,
            key_sha256,
            rate_limit,
            allow,
        } = raw;
        let name = match name {
            Some(n) if valid_name(&n) => Some(n),
            Some(n) => {
                self.problem(format!(
                    "clients[{i}].name: {n:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
                ));
                None
            }
            None => {
                self.problem(format!("clients[{i}].name: missing"));
                None
            }
        };
        let keys = match key_sha256 {
            None => {
                self.problem(format!("clients[{i}].key_sha256: missing"));
                Vec::new()
            }
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        if keys.is_empty() {
            self.problem(format!("clients[{i}].key_sha256: needs at least one hash"));
        }
        let mut hashes = Vec::with_capacity(keys.len());
        for k in keys {
            match parse_hex32(&k) {
                Some(h) => hashes.push(h),
                None => self.problem(format!(
                    "clients[{i}].key_sha256: {k:?} is not 64 hex digits (use `openai-admin-gateway hash-key`)"
                )),
            }
        }
        let rate_limit = rate_limit.and_then(|r| self.rate_limit(i, r));
        let allow = allow.and_then(|a| match Scope::parse(&a) {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(format!("clients[{i}].allow: {e}"));
                None
            }
        });
        Some(ClientConfig {
            name: name?,
            key_sha256: hashes,
            rate_limit,
            allow,
        })
    }

    fn rate_limit(&mut self, i: usize, r: RawRateLimit) -> Option<RateLimit> {
        let burst = r.burst.unwrap_or(r.requests_per_minute.max(1));
        if r.requests_per_minute == 0 {
            self.problem(format!(
                "clients[{i}].rate_limit.requests_per_minute: must be greater than 0"
            ));
            return None;
        }
        if burst == 0 {
            self.problem(format!(
                "clients[{i}].rate_limit.burst: must be greater than 0"
            ));
            return None;
        }
        Some(RateLimit {
            requests_per_minute: r.requests_per_minute,
            burst,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses 64 hex digits (either case) into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_key(name: &str) -> Option<String> {
        (name == "OPENAI_ADMIN_KEY").then(|| "sk-admin-test".to_string())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("."), &env_with_key)
    }

    #[test]
    fn example_configs_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["gateway.toml", "gateway.example.toml"] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).expect("example config exists");
            let cfg = Config::parse(&text, &dir, &env_with_key)
                .unwrap_or_else(|e| panic!("{name} must validate:\n{e}"));
            assert_eq!(cfg.server.path_prefix, "/v1");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse("").expect("empty file is valid with the key set");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.server.path_prefix, "/v1");
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.upstream.base_url.to_string(), "https://api.openai.com/v1");
        assert_eq!(c.upstream.timeout, Duration::from_millis(60_000));
        assert_eq!(c.cache.ttl, Duration::from_secs(300));
        assert_eq!(c.cache.max_entries, 100_000);
        assert_eq!(c.cache.max_body_bytes, 65_536);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse("[cache]\nttl = 5\n").unwrap_err().to_string();
        assert!(e.contains("ttl"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[server]
listen = "nope"
log_format = "xml"
[cache]
ttl_secs = 0
[[clients]]
name = "a b"
key_sha256 = "zz"
allow = ["GET organization"]
"#;
        let e = parse(text).unwrap_err();
        let all = e.to_string();
        for key in [
            "server.listen",
            "server.log_format",
            "cache.ttl_secs",
            "clients[0].name",
            "clients[0].key_sha256",
            "clients[0].allow",
        ] {
            assert!(all.contains(key), "missing {key} in:\n{all}");
        }
        assert_eq!(e.problems().len(), 6, "{all}");
    }

    #[test]
    fn missing_or_empty_admin_key_is_a_problem() {
        let none = Config::parse("", Path::new("."), &|_| None).unwrap_err();
        assert!(none.to_string().contains("OPENAI_ADMIN_KEY"));
        let empty = Config::parse("", Path::new("."), &|_| Some("  ".into())).unwrap_err();
        assert!(empty.to_string().contains("upstream.admin_key_env"));
    }

    #[test]
    fn admin_key_never_in_debug_output() {
        let c = parse("").unwrap();
        assert!(!format!("{c:?}").contains("sk-admin-test"));
    }

    #[test]
    fn admin_key_hash_as_client_key_is_rejected() {
        let h = crate::auth::hash_key("sk-admin-test");
        let e = parse(&format!(
            "[[clients]]\nname = \"x\"\nkey_sha256 = \"{h}\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("admin key"), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(parse("[upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\n").is_ok());
        assert!(parse("[upstream]\nbase_url = \"http://localhost:9/v1\"\n").is_ok());
        let e = parse("[upstream]\nbase_url = \"http://api.example.com/v1\"\n").unwrap_err();
        assert!(e.to_string().contains("upstream.base_url"), "{e}");
    }

    #[test]
    fn rotation_accepts_two_hashes() {
        let (a, b) = (crate::auth::hash_key("k1"), crate::auth::hash_key("k2"));
        let c = parse(&format!(
            "[[clients]]\nname = \"x\"\nkey_sha256 = [\"{a}\", \"{b}\"]\n"
        ))
        .unwrap();
        assert_eq!(c.clients[0].key_sha256.len(), 2);
    }
}
