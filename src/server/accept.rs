//! The public accept loop: one permit per open connection, optional TLS,
//! HTTP/1.1 and HTTP/2 served on a task per connection, watched for the
//! graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error};

use crate::config::ServerConfig;
use crate::proxy::Gateway;

/// Accepts public connections and serves each on its own task.
pub(super) struct Acceptor {
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
    pub(super) fn new(settings: &ServerConfig, gateway: Gateway, tls: Option<TlsAcceptor>) -> Self {
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

    pub(super) async fn accept_until(
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
