//! What the benchmark servers (`bench_upstream`, `bench_ceiling`,
//! `bench_proxy`) share: their flag reader and their accept loop.

use tokio::net::{TcpListener, TcpStream};

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

/// The next connection, with `TCP_NODELAY` set; an accept error (say, out
/// of file descriptors) is logged and retried after 50 ms.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
