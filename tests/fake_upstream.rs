//! Checks the fake upstream itself, so a failing gateway test points at the gateway.

mod support;

use std::process::{Command, Stdio};

use http::Method;
use http_body_util::BodyExt;
use serde_json::json;
use support::upstream::{gzip_stored, sse_event};
use support::*;

fn direct(upstream: &Upstream, method: Method, path: &str) -> Req {
    req(method, &format!("http://{}{}", upstream.addr, path)).bearer(ADMIN_KEY)
}

#[tokio::test]
async fn users_routes_follow_the_spec() {
    let upstream = start_upstream().await;
    let user = direct(&upstream, Method::GET, "/v1/organization/users/user_abc")
        .send()
        .await;
    user.assert_status(200);
    assert_eq!(user.json()["object"], "organization.user");
    assert_eq!(user.body, upstream.user_body("user_abc"));
    assert_eq!(
        user.request_id(),
        upstream
            .last_request("/v1/organization/users/user_abc")
            .request_id
    );

    let post = direct(&upstream, Method::POST, "/v1/organization/users/user_abc")
        .json(&json!({"role": "reader"}))
        .send()
        .await;
    assert_eq!(post.json()["role"], "reader");
    let list = direct(&upstream, Method::GET, "/v1/organization/users?limit=2")
        .send()
        .await;
    assert_eq!(list.json()["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(list.json()["has_more"], true);
    let del = direct(&upstream, Method::DELETE, "/v1/organization/users/user_abc")
        .send()
        .await;
    assert_eq!(
        del.json(),
        json!({"object": "organization.user.deleted", "id": "user_abc", "deleted": true})
    );
    let gone = direct(&upstream, Method::GET, "/v1/organization/users/user_abc")
        .send()
        .await;
    gone.assert_status(404);
    let roles = direct(
        &upstream,
        Method::GET,
        "/v1/organization/users/user_def/roles",
    )
    .send()
    .await;
    assert_eq!(roles.json()["object"], "list");

    let anon = direct(&upstream, Method::GET, "/v1/organization/users/user_def").no_auth();
    let anon = anon.send().await;
    anon.assert_status(401);
    assert_eq!(anon.json()["error"]["code"], "invalid_api_key");
    assert!(anon.header("x-request-id").is_some());
    assert_eq!(upstream.count("GET", "/v1/organization/users/user_abc"), 2);
    assert_eq!(upstream.total(), 7);
}

#[tokio::test]
async fn faults_apply_then_expire() {
    let upstream = start_upstream().await;
    let path = "/v1/organization/users/user_abc";
    upstream.inject("GET", path, Fault::new().status(429).times(1));
    let limited = direct(&upstream, Method::GET, path).send().await;
    limited.assert_status(429);
    assert_eq!(limited.header("retry-after").as_deref(), Some("7"));
    direct(&upstream, Method::GET, path)
        .send()
        .await
        .assert_status(200);

    upstream.inject("GET", path, Fault::new().pad_to(1000).times(1));
    assert_eq!(
        direct(&upstream, Method::GET, path).send().await.body.len(),
        1000
    );
    upstream.inject("GET", path, Fault::new().wrong_id().times(1));
    assert_eq!(
        direct(&upstream, Method::GET, path).send().await.json()["id"],
        "user_someone_else"
    );
    upstream.inject("GET", path, Fault::new().drop_mid_body().times(1));
    assert!(direct(&upstream, Method::GET, path)
        .try_send()
        .await
        .is_err());
    upstream.inject("GET", path, Fault::new().reset_before_headers().times(1));
    assert!(direct(&upstream, Method::GET, path)
        .try_send()
        .await
        .is_err());
    direct(&upstream, Method::GET, path)
        .send()
        .await
        .assert_status(200);
}

#[test]
fn gzip_stored_is_valid_gzip() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let gz = gzip_stored(&data);
    let mut child = match Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => return, // no gzip tool on this machine
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &gz));
    let out = child.wait_with_output().expect("gzip output");
    writer.join().expect("writer").expect("write");
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
}

#[tokio::test]
async fn echo_and_streaming_routes_work() {
    let upstream = start_upstream().await;
    let echo = direct(&upstream, Method::PATCH, "/v1/echo/a%2Fb?x=1")
        .header("x-fake-status", "202")
        .body(vec![0u8, 255, 10])
        .send()
        .await;
    echo.assert_status(202);
    assert_eq!(echo.json()["path"], "/v1/echo/a%2Fb?x=1");
    assert_eq!(echo.json()["body_hex"], "00ff0a");
    echo.assert_no_admin_key();

    let resp = direct(&upstream, Method::GET, "/v1/_test/sse?n=3&gate=g")
        .send_streaming()
        .await
        .expect("sse");
    let mut body = resp.into_body();
    let first = within(5, "first event", body.frame()).await;
    let first = first
        .expect("frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert_eq!(first, sse_event(0));
    upstream.gate("g").open();
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(rest, [sse_event(1), sse_event(2)].concat());

    let bytes = direct(
        &upstream,
        Method::GET,
        "/v1/_test/bytes?n=100000&chunk=3000",
    )
    .send()
    .await;
    assert_eq!(bytes.body, pattern_chunk(0, 100_000));
    let broken = direct(
        &upstream,
        Method::GET,
        "/v1/_test/bytes?n=100000&break_after=5000",
    );
    assert!(broken.try_send().await.is_err());

    let (tx, body) = channel_body(2);
    tokio::spawn(async move {
        for i in 0..10u64 {
            tx.send(pattern_chunk(i * 1000, 1000)).await;
        }
    });
    let up = direct(&upstream, Method::POST, "/v1/_test/upload")
        .stream(body)
        .send()
        .await;
    assert_eq!(up.json()["len"], 10_000);
    assert_eq!(up.json()["pattern_ok"], true);
    assert_eq!(upstream.uploaded(), 10_000);

    let h2 = direct(&upstream, Method::GET, "/v1/organization/users/user_abc")
        .h2c()
        .send()
        .await;
    assert_eq!(h2.version, http::Version::HTTP_2);
}
