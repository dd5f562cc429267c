//! Listeners, connections and shutdown.
//!
//! [`Server::bind`] binds both listeners and builds the gateway;
//! [`Server::run`] accepts until the shutdown future resolves, then closes
//! the listeners at once (new connections are refused), lets in-flight
//! requests finish for up to `server.shutdown_grace_secs`, and returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::admin::Admin;
use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::tls::CertStore;

/// A bound, ready-to-run gateway.
pub struct Server {
    /// Public listener.
    public: TcpListener,
    /// Admin listener.
    admin: TcpListener,
    /// The request handler.
    gateway: Gateway,
    /// Listener settings (fixed for the process lifetime).
    settings: ServerConfig,
    /// TLS acceptor, when terminating TLS.
    tls: Option<TlsAcceptor>,
    /// Applies reloads.
    reloader: Reloader,
    /// Set when shutdown begins.
    draining: Arc<AtomicBool>,
}

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
}

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
}

impl Server {
    /// Binds `server.listen` and `server.admin_listen` and builds the gateway.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let gateway = Gateway::new(&config, metrics.clone())?;
        let certs = config.server.tls.as_ref().map(CertStore::new).transpose()?;
        let tls = certs.as_ref().map(|c| c.acceptor()).transpose()?;
        let public = bind(config.server.listen, "server.listen").await?;
        let admin = bind(config.server.admin_listen, "server.admin_listen").await?;
        Ok(Server {
            public,
            admin,
            settings: config.server.clone(),
            tls,
            reloader: Reloader {
                gateway: gateway.clone(),
                certs,
                initial: Arc::new(config),
                metrics,
            },
            gateway,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The public listener's address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public.local_addr().unwrap_or(self.settings.listen)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.settings.admin_listen)
    }

    /// A handle that applies new configurations.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let Server {
            public,
            admin,
            gateway,
            settings,
            tls,
            draining,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin_task =
            tokio::spawn(Admin::new(gateway.clone(), draining.clone()).serve(admin, stop_rx));
        info!(
            listen = %public.local_addr()?,
            tls = tls.is_some(),
            prefix = %settings.path_prefix,
            "gateway listening"
        );

        let graceful = GracefulShutdown::new();
        let acceptor = Acceptor::new(&settings, gateway, tls);
        acceptor.accept_until(public, shutdown, &graceful).await;
        // The listener is dropped here: new connections are refused from now on.
        draining.store(true, Ordering::Release);
        let _ = stop_tx.send(true);

        let open = graceful.count();
        info!(
            open_connections = open,
            grace_secs = settings.shutdown_grace.as_secs(),
            "draining"
        );
        tokio::select! {
            _ = graceful.shutdown() => info!("all connections closed"),
            _ = tokio::time::sleep(settings.shutdown_grace) => {
                warn!("grace period over; closing remaining connections");
            }
        }
        let _ = admin_task.await;
        Ok(())
    }
}

async fn bind(addr: SocketAddr, key: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{key} {addr}: {e}")))
}

/// Accepts public connections and serves each on its own task.
struct Acceptor {
    /// HTTP/1.1 + HTTP/2 (h2c prior knowledge, and h2 via ALPN) builder.
    http: Arc<auto::Builder<TokioExecutor>>,
    /// The service.
    gateway: Gateway,
    /// TLS, when terminating.
    tls: Option<TlsAcceptor>,
    /// One permit per open connection: bounds file descriptors and memory
    /// under a connection flood; accept waits while none is free.
    limit: Arc<Semaphore>,
    /// Bound on the TLS handshake (slow clients hold a permit otherwise).
    handshake_timeout: Duration,
}

impl Acceptor {
    fn new(settings: &ServerConfig, gateway: Gateway, tls: Option<TlsAcceptor>) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http: Arc::new(http),
            gateway,
            tls,
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            handshake_timeout: settings.header_read_timeout,
        }
    }

    async fn accept_until(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        graceful: &GracefulShutdown,
    ) {
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        error!(cause = %e, "failed to accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let conn = self.connection(stream, peer, graceful.watcher());
            tokio::spawn(async move {
                conn.await;
                drop(permit);
            });
        }
    }

    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) -> impl Future<Output = ()> + Send + 'static {
        let http = self.http.clone();
        let gateway = self.gateway.clone();
        let tls = self.tls.clone();
        let handshake_timeout = self.handshake_timeout;
        async move {
            let result =
                match tls {
                    None => {
                        let conn = http.serve_connection(TokioIo::new(stream), gateway);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let tls_stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    debug!(%peer, cause = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = http.serve_connection(TokioIo::new(tls_stream), gateway);
                        watcher.watch(conn.into_owned()).await
                    }
                };
            if let Err(e) = result {
                debug!(%peer, cause = %e, "connection ended with an error");
            }
        }
    }
}

impl Reloader {
    /// Applies the reloadable parts of `config` (clients, keys, limits,
    /// scopes, cache TTL, admin key, TLS certificate). Settings that need a
    /// restart are logged and left as they are. On error nothing changes.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        if let (Some(store), Some(files)) = (&self.certs, &config.server.tls) {
            if let Err(e) = store.reload(files) {
                self.metrics.reload("error");
                return Err(ReloadError::Tls(e));
            }
        }
        self.warn_fixed(&config);
        self.gateway.apply(&config);
        self.metrics.reload("ok");
        info!(
            clients = config.clients.len(),
            ttl_secs = config.cache.ttl.as_secs(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Counts a reload that failed before reaching [`Reloader::reload`]
    /// (an invalid file).
    pub fn rejected(&self) {
        self.metrics.reload("error");
    }

    fn warn_fixed(&self, next: &Config) {
        let (a, b) = (&self.initial, next);
        let fixed = [
            ("server.listen", a.server.listen != b.server.listen),
            (
                "server.admin_listen",
                a.server.admin_listen != b.server.admin_listen,
            ),
            (
                "server.path_prefix",
                a.server.path_prefix != b.server.path_prefix,
            ),
            (
                "server.max_connections",
                a.server.max_connections != b.server.max_connections,
            ),
            (
                "server.tls_cert",
                a.server.tls.is_some() != b.server.tls.is_some(),
            ),
            (
                "upstream.base_url",
                a.upstream.base_url != b.upstream.base_url,
            ),
            (
                "upstream.timeout_ms",
                a.upstream.timeout != b.upstream.timeout,
            ),
            (
                "upstream.connect_timeout_ms",
                a.upstream.connect_timeout != b.upstream.connect_timeout,
            ),
            (
                "upstream.max_concurrent_requests",
                a.upstream.max_concurrent_requests != b.upstream.max_concurrent_requests,
            ),
            (
                "cache.max_entries",
                a.cache.max_entries != b.cache.max_entries,
            ),
        ];
        for (key, changed) in fixed {
            if changed {
                warn!(
                    key,
                    "changed in the file but needs a restart; keeping the running value"
                );
            }
        }
    }
}
