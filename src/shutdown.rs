//! Process signals.

use tracing::info;

/// Resolves at the first SIGINT or SIGTERM.
///
/// SIGTERM is what orchestrators (Kubernetes, systemd, Docker) send to stop
/// the process; SIGINT is Ctrl-C in a terminal. Both mean "drain and exit".
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!(signal = "SIGTERM", "shutting down"),
                    _ = int.recv() => info!(signal = "SIGINT", "shutting down"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                info!(signal = "SIGINT", "shutting down");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!(signal = "ctrl-c", "shutting down");
    }
}
