//! The server: listeners, connections, reloads and shutdown.
//!
//! [`Server::bind`] binds both listeners and builds the gateway;
//! [`Server::run`] accepts until the shutdown future resolves, then closes
//! the listeners at once (new connections are refused), asks every
//! connection to close gracefully, lets in-flight requests finish for up to
//! `server.shutdown_grace_secs`, aborts the connections still open then,
//! and returns once every connection task has ended.
//!
//! - `accept`: the public accept loop, the connection bound, TLS and HTTP/1
//!   and HTTP/2 serving of each connection.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`,
//!   cache purges).
//! - [`tls`]: the certificate store, swapped on reload.
//! - `reload`: [`Reloader`], which applies a new config to a running server.
//! - [`shutdown`]: the stop signal (SIGINT or SIGTERM).
//! - [`watch`]: reload when the config, admin key or TLS files change.
//!
//! Public surface: [`Server`], [`Reloader`], [`ReloadError`], [`admin`],
//! [`tls`], [`shutdown`].

mod accept;
pub mod admin;
mod reload;
pub mod shutdown;
pub mod tls;
pub mod watch;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::Gateway;

use accept::Acceptor;
use admin::Admin;
pub use reload::{ReloadError, Reloader, Trigger};
use tls::CertStore;

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
            reloader: Reloader::new(gateway.clone(), certs, config, metrics),
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
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let admin_task =
            tokio::spawn(Admin::new(gateway.clone(), draining.clone()).serve(admin, stop_rx));
        info!(
            listen = %public.local_addr()?,
            tls = tls.is_some(),
            prefix = %settings.path_prefix,
            "gateway listening"
        );

        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let mut conns = JoinSet::new();
        let acceptor = Acceptor::new(&settings, gateway, tls);
        acceptor
            .accept_until(public, shutdown, &mut conns, &drain_rx)
            .await;
        // The listener is dropped here: new connections are refused from now on.
        draining.store(true, Ordering::Release);
        let _ = stop_tx.send(true);
        let _ = drain_tx.send(true);

        while conns.try_join_next().is_some() {}
        info!(
            open_connections = conns.len(),
            grace_secs = settings.shutdown_grace.as_secs(),
            "draining"
        );
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        match drained {
            Ok(()) => info!("all connections closed"),
            Err(_) => {
                warn!(
                    aborted = conns.len(),
                    "grace period over; closing the remaining connections"
                );
                conns.abort_all();
                while conns.join_next().await.is_some() {}
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
