//! The streaming test routes: SSE events, big (optionally gated or broken) downloads and
//! uploads consumed frame by frame, with the byte pattern and checksum both sides share.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::super::body::channel_body;
use super::reply::{error, json_response, param, query_params, Resp};
use super::State;

/// One SSE event, as the fake sends it.
pub fn sse_event(seq: usize) -> String {
    format!("event: message\ndata: {{\"seq\":{seq}}}\n\n")
}

pub(super) fn sse(state: &Arc<State>, query: Option<&str>) -> Resp {
    let params = query_params(query);
    let n: usize = param(&params, "n", 5);
    let interval = Duration::from_millis(param(&params, "interval_ms", 50));
    let gate = params.get("gate").map(|g| state.gate(g));
    let (tx, body) = channel_body(1);
    tokio::spawn(async move {
        for seq in 0..n {
            if seq == 1 {
                if let Some(gate) = &gate {
                    gate.wait().await;
                }
            }
            if seq > 0 {
                tokio::time::sleep(interval).await;
            }
            if !tx.send(sse_event(seq)).await {
                return;
            }
        }
    });
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .expect("response")
}

/// Bytes `offset..offset+len` of the endless pattern the bytes and upload routes use.
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    let start = (offset % 251) as usize;
    let mut buf = BytesMut::with_capacity(len + 251);
    let cycle: Vec<u8> = (0..251u32).map(|b| b as u8).collect();
    while buf.len() < start + len {
        buf.extend_from_slice(&cycle);
    }
    buf.freeze().slice(start..start + len)
}

pub(super) fn bytes_route(state: &Arc<State>, query: Option<&str>) -> Resp {
    let params = query_params(query);
    let n: u64 = param(&params, "n", 1024);
    let chunk: usize = param(&params, "chunk", 64 * 1024);
    let break_after: Option<u64> = params.get("break_after").and_then(|v| v.parse().ok());
    let gate = params.get("gate").map(|g| state.gate(g));
    let (tx, body) = channel_body(2);
    let state = state.clone();
    tokio::spawn(async move {
        let mut sent = 0u64;
        let limit = break_after.unwrap_or(n).min(n);
        while sent < limit {
            let len = chunk.min((limit - sent) as usize);
            state.downloaded.fetch_add(len as u64, Ordering::SeqCst);
            if !tx.send(pattern_chunk(sent, len)).await {
                return;
            }
            if sent == 0 {
                if let Some(gate) = &gate {
                    gate.wait().await;
                }
            }
            sent += len as u64;
        }
        if break_after.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.fail("injected: body broken off").await;
        }
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, n)
        .body(body)
        .expect("response")
}

/// FNV-1a 64 over a stream of chunks.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

pub(super) async fn upload(state: &Arc<State>, req: Request<Incoming>) -> Resp {
    let mut body = req.into_body();
    let (mut len, mut fnv, mut pattern_ok) = (0u64, Fnv::default(), true);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("upload broke off after {len} bytes: {e}");
                return error(StatusCode::BAD_REQUEST, &msg, "upload_broken");
            }
        };
        if let Ok(data) = frame.into_data() {
            fnv.update(&data);
            pattern_ok &= data == pattern_chunk(len, data.len());
            len += data.len() as u64;
            state
                .uploaded
                .fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    }
    let body = json!({"len": len, "fnv1a": fnv.hex(), "pattern_ok": pattern_ok});
    json_response(StatusCode::OK, &body)
}
