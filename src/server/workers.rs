//! The workers, as nginx runs them: `server.workers` OS threads named
//! `gateway-worker-N`, each with a current-thread runtime of its own, its
//! own public listener (`SO_REUSEPORT`), its own set of connections and its
//! own upstream pool (see [`crate::runtime`]). Nothing is stolen
//! between them: a connection and everything it spawns stay on the thread
//! that accepted it.
//!
//! On stop each worker closes its listener, asks its connections to close
//! gracefully, lets them finish until the shutdown's deadline (the signal
//! plus `server.shutdown_grace_secs`, one for the whole process), aborts the
//! rest, drops its runtime and reports how it ended. A worker
//! that ends any other way (its runtime fails to start, it panics) is
//! reported too, so the server never runs on quietly with fewer workers.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::accept::Acceptor;
use crate::runtime::{self, Lasting};

/// How a worker ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Stopped and drained.
    Drained,
    /// Its runtime or listener could not start.
    Failed(io::Error),
    /// It panicked (the panic message went to stderr).
    Panicked,
}

/// The running workers.
pub(super) struct Workers {
    /// A deadline asks every worker to stop and drain until then; dropping
    /// it asks them to stop too (draining for the grace period).
    stop: watch::Sender<Option<Instant>>,
    /// One task per worker, resolving with how it ended.
    ended: JoinSet<(usize, Ended)>,
}

impl Workers {
    /// Starts one worker per listener, each accepting with `acceptor` and
    /// draining for up to `grace`, their lasting work sent to `lasting`.
    /// If a thread cannot be started, the ones started already stop.
    pub(super) fn start(
        listeners: Vec<std::net::TcpListener>,
        acceptor: Arc<Acceptor>,
        grace: Duration,
        lasting: &Lasting,
    ) -> io::Result<Workers> {
        let (stop, stop_rx) = watch::channel(None);
        let mut ended = JoinSet::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let (done_tx, done_rx) = oneshot::channel();
            let (acceptor, stop_rx, lasting) = (acceptor.clone(), stop_rx.clone(), lasting.clone());
            std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    let result = run(index, listener, &acceptor, stop_rx, grace, lasting);
                    // Not sent if `run` panics: the receiver then sees the
                    // sender dropped.
                    let _ = done_tx.send(result);
                })
                .map_err(|e| io::Error::new(e.kind(), format!("worker {index}: {e}")))?;
            ended.spawn(async move {
                let how = match done_rx.await {
                    Ok(Ok(())) => Ended::Drained,
                    Ok(Err(e)) => Ended::Failed(e),
                    Err(_) => Ended::Panicked,
                };
                (index, how)
            });
        }
        Ok(Workers { stop, ended })
    }

    /// The next worker to end, with how it ended.
    pub(super) async fn next_ended(&mut self) -> Option<(usize, Ended)> {
        match self.ended.join_next().await? {
            Ok(ended) => Some(ended),
            // The waiting task itself cannot panic; treat it as lost.
            Err(_) => Some((usize::MAX, Ended::Panicked)),
        }
    }

    /// Asks every worker to stop accepting and drain until `deadline`.
    pub(super) fn stop(&self, deadline: Instant) {
        let _ = self.stop.send(Some(deadline));
    }

    /// Waits for every worker to end; each that did not drain is logged
    /// and named in `failures`.
    pub(super) async fn join(mut self, failures: &mut Vec<String>) {
        while let Some((index, how)) = self.next_ended().await {
            if let Some(f) = failure(index, how) {
                failures.push(f);
            }
        }
    }
}

/// Logs a worker's end unless it drained; returns the failure's description.
pub(super) fn failure(index: usize, how: Ended) -> Option<String> {
    let what = match how {
        Ended::Drained => return None,
        Ended::Failed(e) => format!("worker {index} failed: {e}"),
        Ended::Panicked => format!("worker {index} panicked"),
    };
    error!(worker = index, "{what}");
    Some(what)
}

/// A worker thread's body: its runtime, serving, draining. The runtime is
/// dropped before this returns, with whatever tasks are left on it (idle
/// pooled upstream connections, background cache refreshes).
fn run(
    index: usize,
    listener: std::net::TcpListener,
    acceptor: &Acceptor,
    stop: watch::Receiver<Option<Instant>>,
    grace: Duration,
    lasting: Lasting,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime::enter(index, lasting);
    crate::per_thread::claim(index);
    let served = runtime.block_on(serve(index, listener, acceptor, stop, grace));
    // What is left (pooled connections, a blocking DNS lookup) must not
    // keep the process past its deadline.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served
}

async fn serve(
    index: usize,
    listener: std::net::TcpListener,
    acceptor: &Acceptor,
    stop: watch::Receiver<Option<Instant>>,
    grace: Duration,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    // Stops at a deadline, or when the server is gone (the sender dropped).
    let mut stopping = stop.clone();
    let stopped = async move {
        let _ = stopping.wait_for(Option::is_some).await;
    };
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    acceptor
        .accept_until(index, listener, stopped, &mut conns, &drain_rx)
        .await;
    // The listener is dropped here: this worker accepts no more.
    let _ = drain_tx.send(true);
    let deadline = stop.borrow().unwrap_or_else(|| Instant::now() + grace);
    drain(index, conns, deadline).await;
    Ok(())
}

/// Lets the (already asked to close) connections finish until `deadline`,
/// then aborts the rest; returns once every connection task has ended.
async fn drain(index: usize, mut conns: JoinSet<()>, deadline: Instant) {
    while conns.try_join_next().is_some() {}
    info!(
        worker = index,
        open_connections = conns.len(),
        grace_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64,
        "draining"
    );
    let drained = tokio::time::timeout_at(deadline.into(), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => info!(worker = index, "all connections closed"),
        Err(_) => {
            warn!(
                worker = index,
                aborted = conns.len(),
                "grace period over; closing the remaining connections"
            );
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
    }
}
