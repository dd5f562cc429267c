//! Process signals.
//!
//! Handlers are installed by [`Shutdown::install`] *before* the listeners
//! are bound: until a handler exists the default action for SIGTERM, SIGINT
//! (and SIGHUP) is to kill the process, so a signal sent the moment the port
//! answers would otherwise end it with a non-zero status instead of a drain.

use std::io;

use tracing::info;

/// The stop signals, already being caught.
#[derive(Debug)]
pub struct Shutdown {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Starts catching SIGTERM and SIGINT. Needs a Tokio runtime.
    pub fn install() -> io::Result<Shutdown> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Shutdown {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Shutdown {})
    }

    /// Resolves at the first SIGTERM or SIGINT.
    ///
    /// SIGTERM is what orchestrators (Kubernetes, systemd, Docker) send to
    /// stop the process; SIGINT is Ctrl-C in a terminal. Both mean "drain and
    /// exit".
    pub async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => info!(signal = "SIGTERM", "shutting down"),
            _ = self.int.recv() => info!(signal = "SIGINT", "shutting down"),
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
            info!(signal = "ctrl-c", "shutting down");
        }
    }
}
