//! One worker's upstream connections: idle HTTP/1.1 connections (most
//! recently used first) and, when the upstream chose HTTP/2, the one
//! shared HTTP/2 sender.
//!
//! A request checks an HTTP/1.1 connection out (it is then owned by the
//! request, see `conn`), and its response body checks it back in when the
//! body ended cleanly. The lock is per worker, so it is not contended.
//!
//! Idle connections older than `pool_idle_timeout_secs` are dropped at
//! checkout and check-in, and by [`sweep`] (a cheap periodic pass that also
//! drops connections the upstream closed while they were idle). At
//! checkout a connection is polled once: one the upstream closed meanwhile
//! is discarded there.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use hyper::client::conn::http2;
use tokio::time::Instant;

use super::conn::H1;
use crate::body::BoxBody;

/// What a checkout found. (Not boxed: it moves once, and a box would cost
/// an allocation per checkout.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Checked {
    /// The upstream's HTTP/2 connection (shared; the sender is a clone).
    H2(http2::SendRequest<BoxBody>),
    /// An idle HTTP/1.1 connection, now the caller's.
    H1(H1),
}

/// One worker's connections.
pub(super) struct Pool {
    /// Idle HTTP/1.1 connections, oldest first.
    idle: Mutex<VecDeque<H1>>,
    /// The HTTP/2 connection's sender, while it is open.
    h2: Mutex<Option<http2::SendRequest<BoxBody>>>,
    /// Most idle connections kept (more are closed at check-in).
    max_idle: usize,
    /// `pool_idle_timeout_secs`.
    idle_timeout: Duration,
}

impl Pool {
    /// An empty pool keeping at most `max_idle` idle connections, each for
    /// at most `idle_timeout`.
    pub(super) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
            max_idle,
            idle_timeout,
        }
    }

    /// The open HTTP/2 connection, else the most recently used idle
    /// HTTP/1.1 connection that is still open and young enough.
    pub(super) fn checkout(&self, cx: &mut Context<'_>) -> Option<Checked> {
        if let Some(send) = self.h2() {
            return Some(Checked::H2(send));
        }
        let mut idle = lock(&self.idle);
        let now = Instant::now();
        while let Some(mut h1) = idle.pop_back() {
            if now.saturating_duration_since(h1.since) > self.idle_timeout {
                // The newest is too old: so are the rest.
                idle.clear();
                return None;
            }
            if h1.usable(cx) {
                return Some(Checked::H1(h1));
            }
        }
        None
    }

    /// Checks an HTTP/1.1 connection in (its body ended cleanly).
    pub(super) fn put(&self, h1: H1) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = lock(&self.idle);
        self.expire(&mut idle, Instant::now());
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(h1);
    }

    /// The HTTP/2 sender, if its connection is still open.
    fn h2(&self) -> Option<http2::SendRequest<BoxBody>> {
        let mut h2 = lock(&self.h2);
        match &*h2 {
            Some(send) if !send.is_closed() => Some(send.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    /// A new HTTP/2 connection's sender becomes the shared one, unless one
    /// is open already.
    pub(super) fn set_h2(&self, send: &http2::SendRequest<BoxBody>) {
        let mut h2 = lock(&self.h2);
        if h2.as_ref().is_none_or(|s| s.is_closed()) {
            *h2 = Some(send.clone());
        }
    }

    /// Drops idle connections that are too old, or that the upstream closed.
    fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        self.expire(&mut idle, now);
        idle.retain_mut(|h1| h1.usable(&mut cx));
        drop(idle);
        let _ = self.h2();
    }

    /// Drops idle connections older than the idle timeout (oldest first).
    fn expire(&self, idle: &mut VecDeque<H1>, now: Instant) {
        while idle
            .front()
            .is_some_and(|h1| now.saturating_duration_since(h1.since) > self.idle_timeout)
        {
            idle.pop_front();
        }
    }
}

/// The lock, even if a holder panicked (the queue stays consistent: every
/// operation on it is a single push, pop or retain).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sweeps `pools` every `every` until they are all gone. Spawned on the
/// runtime that builds the client, when there is one.
pub(super) fn sweep(pools: Vec<Weak<Pool>>, every: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut alive = false;
            for pool in pools.iter().filter_map(Weak::upgrade) {
                alive = true;
                pool.sweep();
            }
            if !alive {
                return;
            }
        }
    });
}
