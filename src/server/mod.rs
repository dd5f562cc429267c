//! The server: listeners, workers, connections, reloads and shutdown.
//!
//! [`Server::bind`] binds the listeners (one public listener per worker,
//! `SO_REUSEPORT`, and the admin one) and builds the gateway;
//! [`Server::run`] starts `server.workers` worker threads, each with its own
//! current-thread runtime accepting on its own listener, and keeps the admin
//! listener, and whatever the caller runs beside it (reloads, signals, the
//! file watch, the Redis bus), on the runtime it is called on. When the
//! shutdown future resolves every worker closes its listener at once (new
//! connections are refused), asks its connections to close gracefully, lets
//! in-flight requests finish for up to `server.shutdown_grace_secs` and
//! aborts the connections still open then. The writes (whose clients may
//! have left) get the same deadline (one grace period in all); those still
//! running then are aborted, each is evicted and audited with its outcome
//! unknown by its guard, and a client still waiting gets a 504 (the
//! workers keep their connections a quarter of a second longer for it). `run` returns once the evictions queued for the
//! other replicas are published, at most half a second past the deadline.
//! A worker that fails or panics stops the server with an error.
//!
//! - `accept`: the public accept loop, the connection bound (one for all
//!   workers), TLS and HTTP/1 and HTTP/2 serving of each connection.
//! - `connection`: one connection's account, which `accept` drives: its
//!   first request, idleness, and the GOAWAY for a client that keeps
//!   abandoning forwarded requests ([`MAX_CANCELLED_FORWARDS`] per
//!   [`CANCEL_WINDOW`]). Requests reach it through
//!   [`crate::proxy::ConnectionAccount`].
//! - `progress`: the send deadline (`server.send_timeout_ms`): what the
//!   client has not taken of the responses sent to it.
//! - `listen`: binding the public listeners (`SO_REUSEPORT`) and the admin
//!   listener.
//! - `workers`: the worker threads, their runtimes and their drain.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/metrics`,
//!   cache purges).
//! - [`tls`]: the certificate store, swapped on reload.
//! - `reload`: [`Reloader`], which applies a new config to a running server.
//! - [`shutdown`]: the stop signal (SIGINT or SIGTERM).
//! - [`watch`]: reload when the config, admin key or TLS files change.
//!
//! Public surface: [`Server`], [`Reloader`], [`ReloadError`], [`admin`],
//! [`tls`], [`shutdown`], [`MAX_CANCELLED_FORWARDS`], [`CANCEL_WINDOW`].

mod accept;
pub mod admin;
mod connection;
mod listen;
mod progress;
mod reload;
pub mod shutdown;
pub mod tls;
pub mod watch;
mod workers;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::runtime::Lasting;

use accept::Acceptor;
use admin::Admin;
pub use connection::{CANCEL_WINDOW, MAX_CANCELLED_FORWARDS};
pub use reload::{ReloadError, Reloader, Trigger};
use tls::CertStore;
use workers::Workers;

/// A bound, ready-to-run gateway.
pub struct Server {
    /// Public listeners, one per worker, all on `public_addr`.
    public: Vec<std::net::TcpListener>,
    /// The address they are bound to (the port picked, for port 0).
    public_addr: SocketAddr,
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
    /// Binds `server.listen` (once per worker) and `server.admin_listen`
    /// and builds the gateway.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let gateway = Gateway::new(&config, metrics.clone())?;
        let certs = config.server.tls.as_ref().map(CertStore::new).transpose()?;
        let tls = certs.as_ref().map(|c| c.acceptor()).transpose()?;
        let public = listen::public(config.server.listen, config.server.workers)?;
        let public_addr = match public.first() {
            Some(l) => l.local_addr()?,
            None => config.server.listen,
        };
        let admin = listen::admin(config.server.admin_listen).await?;
        Ok(Server {
            public,
            public_addr,
            admin,
            settings: config.server.clone(),
            tls,
            reloader: Reloader::new(gateway.clone(), certs, config, metrics),
            gateway,
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The public listeners' address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
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

    /// Serves until `shutdown` resolves, then drains. An error when a
    /// worker could not start, failed or panicked (the others are stopped
    /// and drained first).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let Server {
            public,
            public_addr,
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
        let count = public.len();
        let tls_on = tls.is_some();
        let gateway_for_exit = gateway.clone();
        let acceptor = Arc::new(Acceptor::new(&settings, gateway, tls));
        // Writes whose clients left run here, on the runtime that outlives
        // the workers (see `runtime::spawn_lasting`).
        let lasting = Lasting::current();
        let mut workers = match Workers::start(public, acceptor, settings.shutdown_grace, &lasting)
        {
            Ok(w) => w,
            Err(e) => {
                error!(cause = %e, "cannot start the workers");
                let _ = stop_tx.send(true);
                let _ = admin_task.await;
                return Err(e);
            }
        };
        info!(
            listen = %public_addr,
            workers = count,
            tls = tls_on,
            prefix = %settings.path_prefix,
            "gateway listening"
        );

        let mut failures = Vec::new();
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => {}
            Some((index, how)) = workers.next_ended() => {
                // Before shutdown, any end is a loss of capacity.
                let what = workers::failure(index, how)
                    .unwrap_or_else(|| format!("worker {index} stopped on its own"));
                error!(worker = index, "{what}; stopping the server");
                failures.push(what);
            }
        }
        // One grace period for everything: the workers' drain and the
        // writes end at the same deadline. The workers keep their
        // connections a moment longer, so that the client of a write
        // stopped then still gets its answer (504).
        let deadline = Instant::now() + settings.shutdown_grace;
        draining.store(true, Ordering::Release);
        let _ = stop_tx.send(true);
        workers.stop(deadline + ANSWER_STOPPED_WRITES);
        tokio::join!(
            workers.join(&mut failures),
            finish_writes(&lasting, deadline)
        );
        if !gateway_for_exit
            .flush_evictions(remaining(deadline + AFTER_GRACE))
            .await
        {
            warn!("stopping with evictions not published to the other replicas");
        }
        let _ = admin_task.await;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(failures.join("; ")))
        }
    }
}

/// How long past the grace period queued evictions may take to reach
/// Redis; the process is gone within the grace period plus a second.
const AFTER_GRACE: Duration = Duration::from_millis(500);

/// How long past the grace period the workers keep their connections, so
/// that the writes stopped at its end are answered.
const ANSWER_STOPPED_WRITES: Duration = Duration::from_millis(250);

/// Time left until `deadline`.
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Lets the writes whose clients left run until `deadline`, then aborts
/// them: each one's guard evicts it (here and, through the outbox, on
/// every replica) and writes its audit line with the outcome unknown.
async fn finish_writes(lasting: &Lasting, deadline: Instant) {
    if lasting.running() == 0 {
        return;
    }
    info!(
        tasks = lasting.running(),
        "waiting for writes whose clients left"
    );
    if tokio::time::timeout_at(deadline.into(), lasting.finished())
        .await
        .is_ok()
    {
        return;
    }
    warn!(
        tasks = lasting.running(),
        "grace period over; stopping the writes still at the upstream (outcome unknown)"
    );
    lasting.abort_all();
    // Aborted tasks are dropped on their runtime's threads; give them a
    // moment to run their guards.
    let _ = tokio::time::timeout(AFTER_GRACE / 2, lasting.finished()).await;
}
