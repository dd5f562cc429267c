//! HTTP/1.1 clients that close their TCP connection at random points, for every kind.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::kinds::{tally_batch, Cut, Kind, Rng, Tally, BATCH};
use crate::settle;
use crate::sockets::{gateway, normal, prepare};
use crate::support::*;

/// Hang-ups per kind.
const CASES: usize = 96;

/// Sends case `n` of `kind` on a connection of its own and closes it at a random point:
/// before the response head arrives, or after some of the response was read.
async fn hang_up(gw: std::net::SocketAddr, kind: Kind, n: usize, mut rng: Rng) -> Cut {
    let (method, path, body) = kind.parts(n);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
    );
    for (name, value) in kind.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut tcp = TcpStream::connect(gw).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(&body).await.expect("write body");
    let mut buf = [0u8; 256];
    let mut read = 0usize;
    let reads = rng.below(3);
    let mut deadline = Duration::from_micros(rng.below(8_000));
    for _ in 0..=reads {
        match tokio::time::timeout(deadline, tcp.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => return Cut::AfterEnd,
            Ok(Ok(n)) => read += n,
        }
        deadline = Duration::from_micros(rng.below(2_000));
    }
    // Dropping the socket closes the connection.
    if read == 0 {
        Cut::BeforeHead
    } else {
        Cut::MidBody
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_request_hung_up_over_http1_anywhere_leaves_nothing_held() {
    let mut rng = Rng::from_env("http1 hang-ups");
    let (upstream, gw) = gateway(4, 2).await;
    upstream.inject("*", "*", Fault::new().delay_ms(1));
    let text = || gw.metrics_text();
    for kind in Kind::ALL {
        let (mut done, mut tally) = (0, Tally::default());
        while done < CASES {
            prepare(&gw, kind).await;
            let mut batch = JoinSet::new();
            for i in 0..BATCH {
                batch.spawn(hang_up(gw.addr, kind, done + i, rng.split()));
            }
            tally_batch(kind.as_str(), batch, &mut tally).await;
            done += BATCH;
        }
        settle(kind.as_str(), text).await;
        wait_until(10, "the upstream to finish what was abandoned", || {
            upstream.in_flight() == 0
        })
        .await;
        eprintln!("http1 hang-ups, {}: {tally}; all released", kind.as_str());
    }
    for kind in Kind::ALL {
        normal(&gw, kind).await;
    }
    settle("after the normal requests", text).await;
}
