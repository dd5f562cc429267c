//! One client connection's account, which only the accept loop drives:
//! whether its first request has arrived (silent connections are closed),
//! how long it has had no request open (idle connections are closed), and
//! how many forwarded requests its client abandoned; past a bound it is
//! sent GOAWAY, so resetting streams cannot be used to make the upstream
//! work for nothing.
//!
//! Each request reaches it through [`ConnectionAccount`], the proxy's view
//! of it (opened, closed, abandoned after it was forwarded, cut for the
//! send deadline).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

use crate::proxy::ConnectionAccount;

/// Forwarded requests a connection's client may abandon per
/// [`CANCEL_WINDOW`] before the connection is sent GOAWAY.
pub const MAX_CANCELLED_FORWARDS: u32 = 50;

/// The window [`MAX_CANCELLED_FORWARDS`] is counted over.
pub const CANCEL_WINDOW: Duration = Duration::from_secs(10);

/// One client connection's account, shared by its requests.
#[derive(Debug, Default)]
pub struct Connection {
    /// The first request's headers have arrived.
    first_request: AtomicBool,
    /// Abandoned forwards in the current window.
    cancelled: AtomicU32,
    /// When the current window began (ms on the process clock).
    window_start_ms: AtomicU64,
    /// Signalled once the connection has earned a GOAWAY.
    goaway: Notify,
    /// Requests open now (their account not yet written).
    open: AtomicU32,
    /// When the last request ended (ms on the process clock).
    last_active_ms: AtomicU64,
    /// Closed because its client took nothing of a response for
    /// `server.send_timeout_ms`.
    send_timed_out: AtomicBool,
}

impl Connection {
    /// A new connection's account.
    pub fn new() -> Arc<Self> {
        let conn = Self::default();
        conn.last_active_ms.store(clock_ms(), Ordering::Relaxed);
        Arc::new(conn)
    }

    /// How long the connection has had no request open; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last_active_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(clock_ms().saturating_sub(last)))
    }

    /// Notes that a request arrived.
    pub fn request_arrived(&self) {
        if !self.first_request.load(Ordering::Relaxed) {
            self.first_request.store(true, Ordering::Relaxed);
        }
    }

    /// True once the first request's headers have arrived.
    pub fn has_had_a_request(&self) -> bool {
        self.first_request.load(Ordering::Relaxed)
    }

    /// Notes that the connection is being closed because its client took
    /// nothing of a response for `server.send_timeout_ms`: the requests
    /// still open say so in their access lines.
    pub fn send_timed_out(&self) {
        self.send_timed_out.store(true, Ordering::Relaxed);
    }

    /// Resolves when the connection should be sent GOAWAY.
    pub async fn goaway(&self) {
        self.goaway.notified().await;
    }

    /// Counts a forwarded request whose client left before the answer.
    fn cancelled_forward(&self) {
        let now = clock_ms();
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let window = CANCEL_WINDOW.as_millis() as u64;
        let n = if now.saturating_sub(start) > window {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.cancelled.store(1, Ordering::Relaxed);
            1
        } else {
            self.cancelled.fetch_add(1, Ordering::Relaxed) + 1
        };
        if n == MAX_CANCELLED_FORWARDS + 1 {
            warn!(
                abandoned = n,
                window_secs = CANCEL_WINDOW.as_secs(),
                "client keeps abandoning forwarded requests; sending GOAWAY"
            );
            self.goaway.notify_one();
        }
    }
}

impl ConnectionAccount for Connection {
    fn request_opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    fn request_closed(&self, abandoned_forward: bool) {
        if abandoned_forward {
            self.cancelled_forward();
        }
        self.last_active_ms.store(clock_ms(), Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn cut_for_send_timeout(&self) -> bool {
        self.send_timed_out.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the first call (a cheap monotonic clock).
fn clock_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}
