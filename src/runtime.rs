//! Which server worker the current thread is, and where work that must
//! outlive a worker runs: a runtime concept, in a leaf that `server` (which
//! starts the workers), `proxy` (which spawns lasting writes) and
//! `upstream` (which keeps a pool per worker) all import.
//!
//! The server runs each worker on an OS thread of its own with a
//! current-thread runtime, and calls [`enter`] there first. [`index`] then
//! picks that worker's upstream pool (see `upstream::Upstream`), so the
//! connection tasks the pool spawns live on the same runtime as the
//! requests that use them: a pass-through request wakes no other thread.
//! Threads that never called [`enter`] (the main runtime, tests) use the
//! shared pool.
//!
//! [`spawn_lasting`] is for work a client hanging up must not cancel (a
//! user write and the evictions that follow it): on a worker it runs on the
//! [`Lasting`] runtime, the one `Server::run` is on, which outlives every
//! worker, and `Server::run` waits for it, until the end of the grace
//! period, before it returns; what is still running then is aborted (a
//! write's guard then evicts and audits it).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

thread_local! {
    /// This thread's worker index, when it is a worker.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
    /// Where this worker's lasting work runs.
    static LASTING: RefCell<Option<Lasting>> = const { RefCell::new(None) };
}

/// The runtime lasting work runs on, and a count of that work.
#[derive(Clone, Debug)]
pub struct Lasting {
    /// The runtime that outlives the workers.
    handle: Handle,
    /// Each running task holds one receiver; `closed()` is "all done".
    running: Arc<watch::Sender<()>>,
    /// The tasks' abort handles (finished ones pruned at each spawn), for
    /// the end of the grace period.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Lasting {
    /// The runtime this is called on. Panics outside a Tokio runtime.
    pub fn current() -> Self {
        Self {
            handle: Handle::current(),
            running: Arc::new(watch::Sender::new(())),
            tasks: Arc::default(),
        }
    }

    /// Cancels every task still running (the grace period is over): each
    /// is dropped where it waits, and its guards run. Await
    /// [`Lasting::finished`] for them to be gone.
    pub fn abort_all(&self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once every task spawned through this has ended.
    pub async fn finished(&self) {
        self.running.closed().await;
    }

    /// Tasks spawned through this that are still running.
    pub fn running(&self) -> usize {
        self.running.receiver_count()
    }

    fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let token = self.running.subscribe();
        let task = self.handle.spawn(async move {
            let _running = token;
            fut.await
        });
        let mut tasks = self.lock_tasks();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
        task
    }
}

/// Marks the current thread as worker `index`, sending its lasting work to
/// `lasting`. Called once, first thing, on each worker thread.
pub fn enter(index: usize, lasting: Lasting) {
    WORKER.with(|w| w.set(Some(index)));
    LASTING.with(|l| *l.borrow_mut() = Some(lasting));
}

/// The current thread's worker index; `None` off the workers.
pub fn index() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Spawns `fut` so that it runs to its end even if the worker it was
/// started from shuts down: a worker's runtime is dropped once its
/// connections have drained, and a task still on it then (a write whose
/// client hung up) would be cancelled. Running it on the runtime
/// `Server::run` is on, rather than keeping each worker's runtime alive
/// until its own spawned tasks end, needs no list of such tasks per worker
/// (the worker's pooled upstream connections are tasks too, and never end
/// on their own); the cost is a cross-thread hop for these rare requests.
/// Off the workers it is `tokio::spawn`.
pub fn spawn_lasting<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let lasting = LASTING.with(|l| l.borrow().clone());
    match lasting {
        Some(l) => l.spawn(fut),
        None => tokio::spawn(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_sends_lasting_work_to_the_lasting_runtime_and_it_is_counted() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let lasting = main.block_on(async { Lasting::current() });
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let for_worker = lasting.clone();
        let worker = std::thread::spawn(move || {
            enter(3, for_worker);
            assert_eq!(index(), Some(3));
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            // The worker's runtime is dropped before the task may finish.
            rt.block_on(async {
                drop(spawn_lasting(async move {
                    let _ = gate_rx.await;
                }));
            });
        });
        worker.join().expect("worker thread");
        assert_eq!(index(), None);
        assert_eq!(lasting.running(), 1);
        let _ = gate_tx.send(());
        main.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), lasting.finished())
                .await
                .expect("the lasting task finished after its worker was gone");
        });
        assert_eq!(lasting.running(), 0);
    }
}
