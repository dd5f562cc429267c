//! The public accept loop: one permit per open connection, optional TLS,
//! HTTP/1.1 and HTTP/2 served on a task per connection, with the drain
//! bookkeeping of our own.
//!
//! A connection earns its slot: its first request's headers must arrive
//! within `server.header_read_timeout_ms` of accept (TLS handshake and the
//! HTTP/2 preface included), or it is closed; and a client that keeps
//! abandoning forwarded requests is sent GOAWAY
//! ([`Connection`] keeps the count). A connection whose
//! client takes nothing of a response for `server.send_timeout_ms` is
//! closed (see [`super::progress`]).
//!
//! A worker accepts and then takes a slot, so a free slot never waits in
//! one worker's `accept()` while a connection waits on another's socket.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, warn};

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::proxy::{ConnectionRef, Gateway};

use super::connection::Connection;
use super::progress::{SendProgress, WatchedBody, WatchedIo};

/// Accepts public connections and serves each on its own task.
pub(super) struct Acceptor {
    /// HTTP/1.1 + HTTP/2 (h2c prior knowledge, and h2 via ALPN) builder.
    http: Arc<auto::Builder<TokioExecutor>>,
    /// The service.
    gateway: Gateway,
    /// TLS, when terminating.
    tls: Option<TlsAcceptor>,
    /// One permit per served connection: bounds file descriptors and
    /// memory under a connection flood; an accepted connection waits for
    /// one before it is read.
    limit: Arc<Semaphore>,
    /// Time from accept to the first request's headers (TLS included):
    /// silent connections would hold a permit otherwise.
    first_request_timeout: Duration,
    /// A connection with no request open for this long is closed (HTTP/2
    /// PINGs do not count as activity).
    idle_timeout: Duration,
    /// A response the client takes nothing of for this long has its
    /// connection closed (see [`super::progress`]).
    send_timeout: Duration,
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
            first_request_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
            send_timeout: settings.send_timeout,
        }
    }

    /// Accepts on worker `worker`'s `listener` until `shutdown` resolves;
    /// each connection's task goes into `conns` and starts its graceful
    /// close when `drain` turns true. The connection bound is shared by
    /// every worker.
    pub(super) async fn accept_until(
        &self,
        worker: usize,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        conns: &mut JoinSet<()>,
        drain: &watch::Receiver<bool>,
    ) {
        tokio::pin!(shutdown);
        loop {
            // Accept, then take a slot: a worker holding the last free
            // slot while blocked in `accept()` would leave a connection
            // waiting on another worker's socket with the slot idle. While
            // no slot is free, this worker holds at most this one accepted
            // socket (not yet read) and accepts no more; slots are handed
            // out first come, first served across workers.
            let (stream, peer) = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        error!(worker, cause = %e, "failed to accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let _ = stream.set_nodelay(true);
            debug!(worker, %peer, "connection accepted");
            // Finished connections are reaped as new ones come, so the set
            // holds about as many tasks as there are open connections.
            while conns.try_join_next().is_some() {}
            conns.spawn(self.connection(stream, peer, permit, drain.clone()));
        }
    }

    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        drain: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let http = self.http.clone();
        let progress = Arc::new(SendProgress::default());
        let watch = Watch {
            account: Connection::new(),
            progress: progress.clone(),
            first_request: Instant::now() + self.first_request_timeout,
            idle: self.idle_timeout,
            send_timeout: self.send_timeout,
            metrics: self.gateway.metrics().clone(),
            peer,
        };
        let service = ConnService(Arc::new(ConnState {
            gateway: self.gateway.clone(),
            conn: watch.account.clone(),
            account: ConnectionRef::new(watch.account.clone()),
            progress: progress.clone(),
        }));
        let tls = self.tls.clone();
        let stream = WatchedIo::new(stream, progress);
        async move {
            let _permit = permit;
            let deadline = watch.first_request;
            match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    drive(conn, &watch, drain).await;
                }
                Some(acceptor) => {
                    let tls_stream =
                        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
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
                    let conn = http.serve_connection(TokioIo::new(tls_stream), service);
                    drive(conn, &watch, drain).await;
                }
            }
        }
    }
}

/// What a connection's task watches it with.
struct Watch {
    /// The connection's account.
    account: Arc<Connection>,
    /// Its responses' waits on the peer.
    progress: Arc<SendProgress>,
    /// When its first request's headers are due.
    first_request: Instant,
    /// `server.idle_timeout_secs`.
    idle: Duration,
    /// `server.send_timeout_ms`: `progress` ticks every quarter of it, and
    /// an idle connection gets this long to finish its graceful close.
    send_timeout: Duration,
    /// Where a cut for the send deadline is counted.
    metrics: Arc<Metrics>,
    /// The client's address, for the log.
    peer: SocketAddr,
}

/// Serves one connection to its end. Dropping it (a silent client past
/// the first request's deadline, a response the client took nothing of
/// for `server.send_timeout_ms`) closes the socket and drops every
/// request's future and body; a drain, an abusive client or `idle`
/// without an open request starts a graceful close (GOAWAY on HTTP/2,
/// close after the current response on HTTP/1.1). An idle connection
/// still open `send_timeout` after its graceful close began is dropped:
/// over HTTP/2 the end of a streamed body can sit in h2's queue after the
/// body is gone (no request open, nothing watched), waiting for a window
/// the client never opens.
async fn drive<C>(conn: C, w: &Watch, mut drain: watch::Receiver<bool>)
where
    C: GracefulConnection,
    C::Error: Display,
{
    let (account, idle, peer) = (&w.account, w.idle, w.peer);
    tokio::pin!(conn);
    let first = tokio::time::sleep_until(w.first_request);
    tokio::pin!(first);
    let idle_check = tokio::time::sleep_until(Instant::now() + idle);
    tokio::pin!(idle_check);
    let period = SendProgress::period(w.send_timeout);
    let mut send_check = tokio::time::interval_at(Instant::now() + period, period);
    // A late tick must not count as several: that would cut early.
    send_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut waiting_first, mut closing, mut idle_closing) = (true, false, false);
    loop {
        tokio::select! {
            _ = send_check.tick() => {
                if w.progress.tick() {
                    warn!(%peer, "client took nothing of a response for send_timeout_ms; closing");
                    account.send_timed_out();
                    w.metrics.send_timeout();
                    return;
                }
            }
            _ = &mut idle_check, if !closing || idle_closing => {
                if idle_closing {
                    warn!(%peer, "client took nothing of a response's end for send_timeout_ms; closing");
                    w.metrics.send_timeout();
                    return;
                }
                match account.idle_for() {
                    Some(quiet) if quiet >= idle => {
                        debug!(%peer, "idle connection closed");
                        (closing, idle_closing) = (true, true);
                        idle_check.as_mut().reset(Instant::now() + w.send_timeout);
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(quiet) => idle_check.as_mut().reset(Instant::now() + (idle - quiet)),
                    None => idle_check.as_mut().reset(Instant::now() + idle),
                }
            }
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, cause = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut first, if waiting_first => {
                if !account.has_had_a_request() {
                    debug!(%peer, "no request within header_read_timeout_ms; closing");
                    return;
                }
                waiting_first = false;
            }
            r = drain.changed(), if !closing => {
                if r.is_err() || *drain.borrow() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = account.goaway(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The gateway as one connection's service: tells the connection's account
/// that a request arrived, and hands it to the request.
///
/// Each request's future holds a clone of this connection's own `Arc`, not
/// of the gateway: a count written only by the thread serving the
/// connection, where a gateway clone would write one every core shares.
#[derive(Clone)]
struct ConnService(Arc<ConnState>);

struct ConnState {
    /// The handler.
    gateway: Gateway,
    /// This connection's account.
    conn: Arc<Connection>,
    /// The same account, as its requests see it.
    account: ConnectionRef,
    /// This connection's waits on its peer; every response body is
    /// watched (see [`super::progress`]).
    progress: Arc<SendProgress>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<WatchedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.0.conn.request_arrived();
        let state = self.0.clone();
        let h2 = req.version() == Version::HTTP_2;
        Box::pin(async move {
            let conn = state.account.clone();
            let resp = crate::budget::recording(state.gateway.handle_on(req, Some(conn))).await;
            Ok(resp.map(|body| WatchedBody::new(body, state.progress.clone(), h2)))
        })
    }
}
