//! Validation: raw structs → typed config, collecting every problem with its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults as d;
use super::raw::{OneOrMany, RawCache, RawClient, RawRateLimit, RawRedis, RawServer, RawUpstream};
use super::Scope;
use super::{
    CacheConfig, ClientConfig, EnvLookup, LogFormat, RateLimit, RedisConfig, ServerConfig,
    TlsFiles, UpstreamConfig,
};
use crate::secret::AdminKey;

/// Most `server.workers`: each is an OS thread with its own listener and
/// upstream pool, so more than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

pub(super) struct Validator<'a> {
    pub(super) problems: Vec<String>,
    pub(super) base_dir: &'a Path,
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, p: String) {
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

    pub(super) fn path(&self, p: PathBuf) -> PathBuf {
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

    pub(super) fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let RawServer {
            listen,
            admin_listen,
            path_prefix,
            shutdown_grace_secs,
            max_connections,
            workers,
            header_read_timeout_ms,
            idle_timeout_secs,
            send_timeout_ms,
            watch_files,
            log_format,
            tls_cert,
            tls_key,
        } = raw;
        let listen = self.addr("server.listen", listen, d::LISTEN);
        let admin_listen = self.addr("server.admin_listen", admin_listen, d::ADMIN_LISTEN);
        let path_prefix = self.prefix(path_prefix.unwrap_or_else(|| d::PATH_PREFIX.into()));
        let grace = shutdown_grace_secs.unwrap_or(d::SHUTDOWN_GRACE_SECS);
        let max_connections = max_connections.unwrap_or(d::MAX_CONNECTIONS);
        if max_connections == 0 {
            self.problem("server.max_connections: must be greater than 0".into());
        }
        let workers = self.workers(workers);
        let hrt = self.positive(
            "server.header_read_timeout_ms",
            header_read_timeout_ms,
            d::HEADER_READ_TIMEOUT_MS,
        );
        let idle = self.positive(
            "server.idle_timeout_secs",
            idle_timeout_secs,
            d::IDLE_TIMEOUT_SECS,
        );
        let send = self.positive(
            "server.send_timeout_ms",
            send_timeout_ms,
            d::SEND_TIMEOUT_MS,
        );
        let log_format = match log_format.as_deref().unwrap_or(d::LOG_FORMAT) {
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
            workers,
            header_read_timeout: Duration::from_millis(hrt),
            idle_timeout: Duration::from_secs(idle),
            send_timeout: Duration::from_millis(send),
            watch_files: watch_files.unwrap_or(d::WATCH_FILES),
            log_format,
            tls,
        })
    }

    /// `server.workers`: default the CPUs this process may use; 1 to
    /// [`MAX_WORKERS`].
    fn workers(&mut self, value: Option<usize>) -> usize {
        let Some(n) = value else {
            return std::thread::available_parallelism().map_or(1, |n| n.get());
        };
        if n == 0 || n > MAX_WORKERS {
            self.problem(format!(
                "server.workers: {n} is not between 1 and {MAX_WORKERS}"
            ));
        }
        n.clamp(1, MAX_WORKERS)
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

    pub(super) fn upstream(
        &mut self,
        raw: RawUpstream,
        env: EnvLookup<'_>,
    ) -> Option<UpstreamConfig> {
        let RawUpstream {
            base_url,
            admin_key_env,
            admin_key_file,
            connect_timeout_ms,
            timeout_ms,
            body_idle_timeout_ms,
            pool_idle_timeout_secs,
            max_concurrent_requests,
            max_queued_requests,
            ca_file,
            organization_id,
            rate_limit,
            budget_wait_ms,
        } = raw;
        let base_url = self.base_url(base_url.unwrap_or_else(|| d::BASE_URL.into()));
        let key_file = admin_key_file.as_ref().map(|p| self.path(p.clone()));
        let admin_key = self.admin_key("upstream", admin_key_env, admin_key_file, env);
        let organization_id =
            organization_id.and_then(|id| self.organization_id("upstream.organization_id", id));
        let connect = self.positive(
            "upstream.connect_timeout_ms",
            connect_timeout_ms,
            d::CONNECT_TIMEOUT_MS,
        );
        let timeout = self.positive("upstream.timeout_ms", timeout_ms, d::TIMEOUT_MS);
        let body_idle = self.positive(
            "upstream.body_idle_timeout_ms",
            body_idle_timeout_ms,
            d::BODY_IDLE_TIMEOUT_MS,
        );
        let idle = pool_idle_timeout_secs.unwrap_or(d::POOL_IDLE_TIMEOUT_SECS);
        let max_concurrent = max_concurrent_requests.unwrap_or(d::MAX_CONCURRENT_REQUESTS);
        if max_concurrent == 0 {
            self.problem("upstream.max_concurrent_requests: must be greater than 0".into());
        }
        let rate_limit = rate_limit.and_then(|r| self.rate_limit("upstream.rate_limit", r));
        let budget_wait =
            self.positive("upstream.budget_wait_ms", budget_wait_ms, d::BUDGET_WAIT_MS);
        if budget_wait > d::MAX_BUDGET_WAIT_MS {
            self.problem(format!(
                "upstream.budget_wait_ms: must be at most {}",
                d::MAX_BUDGET_WAIT_MS
            ));
        }
        let ca_file = ca_file.map(|p| self.path(p));
        if let Some(p) = &ca_file {
            self.readable("upstream.ca_file", p);
        }
        Some(UpstreamConfig {
            base_url: base_url?,
            admin_key: admin_key?,
            admin_key_file: key_file,
            connect_timeout: Duration::from_millis(connect),
            timeout: Duration::from_millis(timeout),
            body_idle_timeout: Duration::from_millis(body_idle),
            pool_idle_timeout: Duration::from_secs(idle),
            max_concurrent_requests: max_concurrent,
            max_queued_requests: max_queued_requests.unwrap_or(d::MAX_QUEUED_REQUESTS),
            ca_file,
            organization_id,
            rate_limit,
            budget_wait: Duration::from_millis(budget_wait),
            // Set from server.workers by Config::parse.
            pools: 1,
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

    /// The admin key `[section]` names (`upstream`, `orgs[i]`). Only
    /// `upstream` has a default variable; an organization names its own.
    pub(super) fn admin_key(
        &mut self,
        section: &str,
        var: Option<String>,
        file: Option<PathBuf>,
        env: EnvLookup<'_>,
    ) -> Option<AdminKey> {
        let (key, value) = match (var, file) {
            (Some(_), Some(_)) => {
                self.problem(format!(
                    "{section}.admin_key_env: set either admin_key_env or admin_key_file, not both"
                ));
                return None;
            }
            (None, Some(file)) => {
                let file = self.path(file);
                match std::fs::read(&file) {
                    Ok(bytes) => (
                        format!("{section}.admin_key_file ({})", file.display()),
                        bytes,
                    ),
                    Err(e) => {
                        self.problem(format!(
                            "{section}.admin_key_file: cannot read {}: {e}",
                            file.display()
                        ));
                        return None;
                    }
                }
            }
            (None, None) if section != "upstream" => {
                self.problem(format!(
                    "{section}.admin_key_env: missing (set admin_key_env or admin_key_file)"
                ));
                return None;
            }
            (var, None) => {
                let name = var.unwrap_or_else(|| d::ADMIN_KEY_ENV.into());
                match env(&name) {
                    Some(v) => (format!("{section}.admin_key_env ({name})"), v.into_bytes()),
                    None => {
                        self.problem(format!(
                            "{section}.admin_key_env: environment variable {name} is not set"
                        ));
                        return None;
                    }
                }
            }
        };
        match AdminKey::from_bytes(&value) {
            Ok(k) => Some(k),
            Err(problem) => {
                self.problem(format!("{key}: {problem}"));
                None
            }
        }
    }

    pub(super) fn cache(&mut self, raw: RawCache) -> Option<CacheConfig> {
        let RawCache {
            ttl_secs,
            max_entries,
            max_body_bytes,
            stale_if_error_secs,
            stale_while_revalidate_secs,
        } = raw;
        let ttl = self.positive("cache.ttl_secs", ttl_secs, d::TTL_SECS);
        let max_entries = self.positive("cache.max_entries", max_entries, d::MAX_ENTRIES);
        let max_body = max_body_bytes.unwrap_or(d::MAX_BODY_BYTES);
        if max_body == 0 {
            self.problem("cache.max_body_bytes: must be greater than 0".into());
        }
        Some(CacheConfig {
            ttl: Duration::from_secs(ttl),
            max_entries,
            max_body_bytes: max_body,
            stale_if_error: Duration::from_secs(
                stale_if_error_secs.unwrap_or(d::STALE_IF_ERROR_SECS),
            ),
            stale_while_revalidate: Duration::from_secs(
                stale_while_revalidate_secs.unwrap_or(d::STALE_WHILE_REVALIDATE_SECS),
            ),
        })
    }

    pub(super) fn redis(&mut self, raw: RawRedis) -> Option<RedisConfig> {
        let RawRedis {
            url,
            key_prefix,
            channel,
            timeout_ms,
        } = raw;
        let timeout = self.positive("redis.timeout_ms", timeout_ms, d::REDIS_TIMEOUT_MS);
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
            key_prefix: key_prefix.unwrap_or_else(|| d::REDIS_KEY_PREFIX.into()),
            channel: channel.unwrap_or_else(|| d::REDIS_CHANNEL.into()),
            timeout: Duration::from_millis(timeout),
        })
    }

    pub(super) fn clients(&mut self, raw: Vec<RawClient>) -> Vec<ClientConfig> {
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
            orgs,
            budget_weight,
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
        let rate_limit =
            rate_limit.and_then(|r| self.rate_limit(&format!("clients[{i}].rate_limit"), r));
        let budget_weight = budget_weight.unwrap_or(d::BUDGET_WEIGHT);
        if !(1..=d::MAX_BUDGET_WEIGHT).contains(&budget_weight) {
            self.problem(format!(
                "clients[{i}].budget_weight: must be 1 to {}",
                d::MAX_BUDGET_WEIGHT
            ));
        }
        let orgs = self.client_orgs(i, orgs);
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
            orgs,
            budget_weight,
        })
    }

    /// A `rate_limit` table at `key` (`clients[0].rate_limit`,
    /// `upstream.rate_limit`).
    pub(super) fn rate_limit(&mut self, key: &str, r: RawRateLimit) -> Option<RateLimit> {
        let burst = r.burst.unwrap_or(r.requests_per_minute.max(1));
        if r.requests_per_minute == 0 {
            self.problem(format!("{key}.requests_per_minute: must be greater than 0"));
            return None;
        }
        if burst == 0 {
            self.problem(format!("{key}.burst: must be greater than 0"));
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

pub(super) fn valid_name(n: &str) -> bool {
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
