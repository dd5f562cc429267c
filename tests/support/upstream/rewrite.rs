//! How an injected [`Fault`] breaks a response that was otherwise right: rewritten or
//! truncated JSON, gzip, another `content-type`, a body that breaks off or stalls halfway.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::super::body::{channel_body, full, TestBody};
use super::faults::Fault;
use super::reply::{json_bytes, Resp};
use super::{Gate, State};

pub(super) async fn apply_fault(state: &State, resp: Resp, fault: &Fault) -> io::Result<Resp> {
    let rewrites = fault.malformed_json
        || fault.wrong_id
        || fault.wrong_object
        || fault.pad_to.is_some()
        || fault.gzip
        || fault.content_type.is_some()
        || fault.drop_mid_body
        || fault.stall_mid_body.is_some();
    if !rewrites {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let mut bytes = body.collect().await?.to_bytes();
    bytes = rewrite_json(bytes, fault);
    if let Some(ct) = &fault.content_type {
        parts.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(ct).expect("content-type"),
        );
    }
    if fault.gzip {
        bytes = Bytes::from(gzip_stored(&bytes));
        parts
            .headers
            .insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let body = match (&fault.stall_mid_body, fault.drop_mid_body) {
        (_, true) => broken_body(bytes),
        (Some(gate), false) => stalled_body(bytes, state.gate(gate)),
        (None, false) => full(bytes),
    };
    Ok(Response::from_parts(parts, body))
}

fn rewrite_json(bytes: Bytes, fault: &Fault) -> Bytes {
    if fault.malformed_json {
        let cut = bytes.len() / 2;
        return bytes.slice(..cut);
    }
    if !(fault.wrong_id || fault.wrong_object || fault.pad_to.is_some()) {
        return bytes;
    }
    let mut value: Value = serde_json::from_slice(&bytes).expect("fault on a JSON route");
    if fault.wrong_id {
        value["id"] = json!("user_someone_else");
    }
    if fault.wrong_object {
        value["object"] = json!("organization.project");
    }
    if let Some(target) = fault.pad_to {
        value["padding"] = json!("");
        let len = json_bytes(&value).len();
        assert!(
            len <= target,
            "pad_to({target}) is below the body's own size {len}"
        );
        value["padding"] = json!("x".repeat(target - len));
    }
    json_bytes(&value)
}

/// Half of `bytes`, then an error: hyper aborts the message, so a client sees a body that is
/// shorter than its `content-length`.
fn broken_body(bytes: Bytes) -> TestBody {
    let (tx, body) = channel_body(2);
    tokio::spawn(async move {
        let half = bytes.slice(..bytes.len() / 2);
        tx.send(half).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.fail("injected: connection dropped mid-body").await;
    });
    body
}

/// Half of `bytes`, then nothing until `gate` opens, then the rest: a body that stalls with
/// its `content-length` unmet. Gone with the client: a dropped receiver ends the task.
fn stalled_body(bytes: Bytes, gate: Arc<Gate>) -> TestBody {
    let (tx, body) = channel_body(2);
    tokio::spawn(async move {
        let half = bytes.len() / 2;
        if !tx.send(bytes.slice(..half)).await {
            return;
        }
        gate.wait().await;
        tx.send(bytes.slice(half..)).await;
    });
    body
}

/// A valid gzip member using stored (uncompressed) deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65535).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(i == last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}
