//! Live reload: [`Reloader`] applies a new, validated config to a running
//! server (clients, keys, limits, scopes, cache TTL, admin key, TLS
//! certificate) and names every changed setting that needs a restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use tracing::{error, info, warn};

use super::tls::CertStore;
use crate::config::{CacheConfig, Config, ServerConfig, UpstreamConfig};
use crate::metrics::{Metrics, ReloadResult};
use crate::proxy::Gateway;

/// Applies a new configuration to a running server. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    /// The gateway whose clients, limits and TTL change.
    gateway: Gateway,
    /// The certificate store, when terminating TLS.
    certs: Option<Arc<CertStore>>,
    /// The config the process started with, to spot changes that need a restart.
    initial: Arc<Config>,
    /// Counts reloads.
    metrics: Arc<Metrics>,
    /// The files the running config depends on (admin key file, TLS
    /// pair), sent anew on every applied reload so the file watch follows
    /// a key file that moved.
    files: Arc<watch::Sender<Vec<PathBuf>>>,
}

/// What asked for a reload: SIGHUP or a watched file (the metric's
/// `trigger` label, defined with the other metric labels).
pub use crate::metrics::ReloadTrigger as Trigger;

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
}

impl Reloader {
    /// A reloader for `gateway` (and `certs`), started with `initial`.
    pub(super) fn new(
        gateway: Gateway,
        certs: Option<Arc<CertStore>>,
        initial: Config,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (files, _) = watch::channel(initial.dependent_files());
        Self {
            gateway,
            certs,
            initial: Arc::new(initial),
            metrics,
            files: Arc::new(files),
        }
    }

    /// Applies the reloadable parts of `config` (clients, keys, limits,
    /// scopes, cache TTL, admin key, TLS certificate), as a SIGHUP does.
    /// Settings that need a restart are logged and left as they are. On
    /// error nothing changes.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.apply(config, Trigger::Signal)
    }

    /// [`Reloader::reload`], counted under `trigger`.
    pub fn apply(&self, config: Config, trigger: Trigger) -> Result<(), ReloadError> {
        if let (Some(store), Some(files)) = (&self.certs, &config.server.tls) {
            if let Err(e) = store.reload(files) {
                self.metrics.reload(ReloadResult::Error, trigger);
                return Err(ReloadError::Tls(e));
            }
        }
        self.warn_fixed(&config);
        self.gateway.apply(&config);
        let files = config.dependent_files();
        self.files.send_if_modified(|now| {
            let changed = *now != files;
            *now = files;
            changed
        });
        self.metrics.reload(ReloadResult::Ok, trigger);
        info!(
            clients = config.clients.len(),
            ttl_secs = config.cache.ttl.as_secs(),
            trigger = trigger.as_str(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// The files the running config depends on, updated on every reload.
    pub fn dependent_files(&self) -> watch::Receiver<Vec<PathBuf>> {
        self.files.subscribe()
    }

    /// Counts a reload that failed before reaching [`Reloader::reload`]
    /// (an invalid file).
    pub fn rejected(&self, trigger: Trigger) {
        self.metrics.reload(ReloadResult::Error, trigger);
    }

    /// Re-reads the file at `path` (and the admin key file it names) and
    /// applies it; an invalid file is logged with every problem and the
    /// running config stays. The file is read off the runtime's threads.
    pub async fn reload_file(&self, path: &Path, trigger: Trigger) {
        let p = path.to_path_buf();
        match tokio::task::spawn_blocking(move || Config::load(&p)).await {
            Ok(Ok(config)) => {
                if let Err(e) = self.apply(config, trigger) {
                    error!(cause = %e, "reload refused; running configuration kept");
                }
            }
            Ok(Err(e)) => {
                self.rejected(trigger);
                for problem in e.problems() {
                    error!(problem = %problem, "invalid configuration");
                }
                error!("reload refused; running configuration kept");
            }
            Err(e) => error!(cause = %e, "reload task failed"),
        }
    }

    fn warn_fixed(&self, next: &Config) {
        for key in restart_only_changes(&self.initial, next) {
            warn!(
                key,
                "changed in the file but needs a restart; keeping the running value"
            );
        }
    }
}

/// The keys that differ between `a` and `b` but only take effect on a
/// restart. Every field is destructured, so a new one does not compile
/// until it is sorted here as reloadable or restart-only.
fn restart_only_changes(a: &Config, b: &Config) -> Vec<&'static str> {
    let Config {
        server,
        upstream,
        cache,
        clients: _, // reloadable
        redis,
        orgs: _, // reloadable: added, removed, keys rotated
        telemetry,
    } = a;
    let ServerConfig {
        listen,
        admin_listen,
        path_prefix,
        shutdown_grace,
        max_connections,
        workers,
        header_read_timeout,
        idle_timeout,
        send_timeout,
        watch_files,
        log_format,
        tls, // the files are re-read; turning TLS on or off needs a restart
    } = server;
    let UpstreamConfig {
        base_url,
        admin_key: _,      // reloadable
        admin_key_file: _, // re-read on every reload
        connect_timeout,
        timeout,
        body_idle_timeout,
        pool_idle_timeout,
        max_concurrent_requests,
        max_queued_requests,
        ca_file,
        rate_limit: _,      // reloadable (the organization's budget)
        budget_wait: _,     // reloadable
        pools: _,           // server.workers
        organization_id: _, // reloadable
    } = upstream;
    let CacheConfig {
        ttl: _,                    // reloadable (new entries)
        max_body_bytes: _,         // reloadable
        stale_if_error: _,         // reloadable
        stale_while_revalidate: _, // reloadable
        max_entries,
    } = cache;
    let (s, u) = (&b.server, &b.upstream);
    let checks = [
        ("server.listen", *listen != s.listen),
        ("server.admin_listen", *admin_listen != s.admin_listen),
        ("server.path_prefix", *path_prefix != s.path_prefix),
        (
            "server.shutdown_grace_secs",
            *shutdown_grace != s.shutdown_grace,
        ),
        (
            "server.max_connections",
            *max_connections != s.max_connections,
        ),
        ("server.workers", *workers != s.workers),
        (
            "server.header_read_timeout_ms",
            *header_read_timeout != s.header_read_timeout,
        ),
        ("server.idle_timeout_secs", *idle_timeout != s.idle_timeout),
        ("server.send_timeout_ms", *send_timeout != s.send_timeout),
        ("server.watch_files", *watch_files != s.watch_files),
        ("server.log_format", *log_format != s.log_format),
        ("server.tls_cert", tls.is_some() != s.tls.is_some()),
        ("upstream.base_url", *base_url != u.base_url),
        (
            "upstream.connect_timeout_ms",
            *connect_timeout != u.connect_timeout,
        ),
        ("upstream.timeout_ms", *timeout != u.timeout),
        (
            "upstream.body_idle_timeout_ms",
            *body_idle_timeout != u.body_idle_timeout,
        ),
        (
            "upstream.pool_idle_timeout_secs",
            *pool_idle_timeout != u.pool_idle_timeout,
        ),
        (
            "upstream.max_concurrent_requests",
            *max_concurrent_requests != u.max_concurrent_requests,
        ),
        (
            "upstream.max_queued_requests",
            *max_queued_requests != u.max_queued_requests,
        ),
        ("upstream.ca_file", *ca_file != u.ca_file),
        ("cache.max_entries", *max_entries != b.cache.max_entries),
        ("redis", *redis != b.redis),
        ("telemetry", *telemetry != b.telemetry),
    ];
    checks
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("."), &|n| {
            (n == "OPENAI_ADMIN_KEY").then(|| "sk-admin-x".to_string())
        })
        .expect("valid config")
    }

    #[test]
    fn restart_only_keys_are_named_and_reloadable_ones_are_not() {
        let a = config("[server]\nworkers = 1\n");
        let b = config(
            "[server]\nheader_read_timeout_ms = 1234\nshutdown_grace_secs = 3\nlog_format = \"json\"\n\
             workers = 3\n\
             [upstream]\nmax_queued_requests = 7\npool_idle_timeout_secs = 9\n\
             [cache]\nttl_secs = 5\nmax_body_bytes = 100\n\
             [redis]\nurl = \"redis://127.0.0.1:1\"\n",
        );
        assert_eq!(
            restart_only_changes(&a, &b),
            [
                "server.shutdown_grace_secs",
                "server.workers",
                "server.header_read_timeout_ms",
                "server.log_format",
                "upstream.pool_idle_timeout_secs",
                "upstream.max_queued_requests",
                "redis",
            ]
        );
        assert!(restart_only_changes(&a, &a).is_empty());
    }
}
