//! Binding the listeners: the admin one, and one public listener per worker
//! on the same address with `SO_REUSEPORT`, so that the kernel spreads new
//! connections over the workers and no accept is shared between threads.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Backlog of each public listener.
const BACKLOG: u32 = 1024;

/// Binds `workers` public listeners on `addr`. The first is bound as given
/// (port 0 picks a free port); the others bind the address it got. They
/// are returned as std listeners (non-blocking), to be registered with the
/// runtime of the worker that accepts on each.
pub(super) fn public(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = reuseport(addr)?;
    let bound = first.local_addr()?;
    let mut all = Vec::with_capacity(workers);
    all.push(first.into_std()?);
    for _ in 1..workers {
        all.push(reuseport(bound)?.into_std()?);
    }
    Ok(all)
}

/// One listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`. Needs a
/// Tokio runtime (the listener registers with it until `into_std`).
fn reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    })();
    bound.map_err(|e| named(e, "server.listen", addr))
}

/// Binds the admin listener.
pub(super) async fn admin(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| named(e, "server.admin_listen", addr))
}

fn named(e: io::Error, key: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("{key} {addr}: {e}"))
}
