//! The driver: one task per budget, running only while requests wait.
//! It sleeps until the next turn (or the pause's end), hands that turn to
//! the next waiter in fair order, and ends when nobody waits. It runs on
//! the runtime that outlives the workers ([`crate::runtime::spawn_lasting`]);
//! the waiters, on the workers, hear through a oneshot.

use std::sync::Arc;
use std::time::Instant;

use super::{Inner, State};
use crate::cluster::BudgetReply;

/// What the driver does next.
enum Step {
    /// Hand out the next turn now (or find there is nobody left).
    Again,
    /// Nothing until then (or a wake).
    Sleep(Instant),
    /// Ask the shared store for a turn under this limit.
    Ask(Option<crate::config::RateLimit>),
    /// Nobody waits: the driver ends.
    Done,
}

/// Starts driver number `number` for `inner`.
pub(super) fn start(inner: Arc<Inner>, number: u64) {
    crate::runtime::spawn_lasting(drive(inner, number));
}

/// Marks the driver gone however its task ends (aborted at shutdown
/// included), so that the next waiter starts another.
struct Running {
    /// The budget it drives.
    inner: Arc<Inner>,
    /// Its number: a later driver's mark is left alone.
    number: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if st.driver == Some(self.number) {
            st.driver = None;
        }
    }
}

async fn drive(inner: Arc<Inner>, number: u64) {
    let _running = Running {
        inner: inner.clone(),
        number,
    };
    loop {
        let step = {
            let mut st = inner.lock();
            let now = Instant::now();
            if st.fair.is_empty() {
                // Unmarked under the lock that saw nobody waiting: a waiter queued
                // after this starts a driver of its own (unmarking in `Running`'s drop,
                // after the lock, would leave it without one).
                st.driver = None;
                Step::Done
            } else if let Some(p) = st.pause_left(now) {
                Step::Sleep(p)
            } else if inner.cluster.get().is_some() {
                Step::Ask(st.limit)
            } else {
                let limit = st.limit;
                hand_local(&inner, &mut st, now, limit)
            }
        };
        let step = match step {
            Step::Ask(limit) => ask(&inner, limit).await,
            other => other,
        };
        match step {
            Step::Done => return,
            Step::Sleep(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = inner.wake.notified() => {}
                }
            }
            Step::Again | Step::Ask(_) => {}
        }
    }
}

/// One turn from the shared store, handed out; with Redis away, from this
/// replica's share.
async fn ask(inner: &Inner, limit: Option<crate::config::RateLimit>) -> Step {
    let Some(c) = inner.cluster.get() else {
        return Step::Again;
    };
    let reply = Box::pin(c.store.take(&inner.org, limit)).await;
    let now = Instant::now();
    let mut st = inner.lock();
    match reply {
        Some(BudgetReply::Allowed { remaining }) => {
            hand(inner, &mut st, limit.map(|_| remaining));
            Step::Again
        }
        Some(BudgetReply::Limited { wait }) => Step::Sleep(now + wait),
        Some(BudgetReply::Paused { left }) => {
            st.paused_elsewhere(now, left);
            Step::Again
        }
        None => {
            let local = inner.local_limit(limit);
            hand_local(inner, &mut st, now, local)
        }
    }
}

/// A turn from the local GCRA under `limit`, handed out, or when the next
/// one comes.
fn hand_local(
    inner: &Inner,
    st: &mut State,
    now: Instant,
    limit: Option<crate::config::RateLimit>,
) -> Step {
    if let Some(l) = limit {
        let at = st.gcra.next_at(now, l);
        if at > now {
            return Step::Sleep(at);
        }
    }
    // The turn is spent only when someone is there to take it.
    if st.fair.is_empty() {
        return Step::Again;
    }
    match st.take_local(now, limit) {
        Ok(remaining) => {
            hand(inner, st, remaining);
            Step::Again
        }
        Err(at) => Step::Sleep(at),
    }
}

/// Gives a turn just taken to the next waiter in fair order.
fn hand(inner: &Inner, st: &mut State, remaining: Option<u32>) {
    if let Some(r) = remaining {
        inner.metrics.budget_turn_left(r);
    }
    if let Some(w) = st.fair.pop() {
        // A waiter that gave up since pop checked leaves this turn unused.
        let _ = w.tx.send(());
    }
}
