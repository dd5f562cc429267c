//! The time a request waited for its turns, for its access line: each
//! request's future runs in a [`recording`] scope (a task-local), the
//! turns it takes add to it, and its account reads it with [`waited`].
//! Outside a scope (a background refresh, a test) nothing is recorded.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    /// The wait so far of the request this task serves.
    static WAITED: Cell<Duration>;
}

/// Runs `fut` (one request) recording its waits for turns.
pub fn recording<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    WAITED.scope(Cell::new(Duration::ZERO), fut)
}

/// Adds `d` to the current request's wait.
pub(super) fn record(d: Duration) {
    let _ = WAITED.try_with(|w| w.set(w.get() + d));
}

/// The current request's wait so far (zero outside a scope).
pub fn waited() -> Duration {
    WAITED.try_with(Cell::get).unwrap_or_default()
}
