//! Connection slots follow connections across workers.

use super::*;

// === 4. connection slots follow connections ===

/// Two workers, `max_connections = 3`, two idle keep-alive connections: one slot is free.
/// Before, the worker holding it sat in `accept()` on its own socket while connections the
/// kernel gave the other worker waited (about half of them, until a keep-alive connection
/// closed); now a worker takes a slot only once it has a connection, so each of 20 new
/// connections is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_serves_a_connection_waiting_on_either_worker() {
    let (_upstream, gw) = start("max_connections = 3\nworkers = 2", "").await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut sender = h1_connect(gw.addr).await;
        let resp = send_on(&mut sender, Method::GET, USER_PATH, CLIENT_KEY).await;
        resp.assert_status(200);
        idle.push(sender);
    }
    for i in 0..20 {
        let resp = within(3, &format!("new connection #{i} to be served"), async {
            gw.get_user("user_abc").await
        })
        .await;
        resp.assert_status(200);
    }
    drop(idle);
    assert_settled(gw.admin_addr, "after the test").await;
}
