//! Bytes per cached user that moka itself costs, against the gateway's
//! cache: fills one cache in this process with N entries of a ~485-byte body
//! and prints RSS growth per entry over the body. Used by
//! `benches/load/run.sh` (memory section); one mode per process.
//!
//! `cache_floor bodies N`: the bodies alone (a `Vec<Bytes>`), the allocator's
//! share. `cache_floor moka N`: a bare moka cache (bounded, `u128` keys,
//! zero-sized values, no expiry): moka's own bookkeeping, the floor for any
//! cache built on it. `cache_floor gateway N`: the gateway's `UserCache`
//! holding real entries.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use openai_admin_gateway::cache::{CachedUser, UserCache};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn body(i: u64) -> Bytes {
    let s = format!(
        r#"{{"object":"organization.user","id":"user-{i:012}","name":"{}","email":"u{i}@example.com","role":"reader","added_at":1711471533}}"#,
        "x".repeat(360)
    );
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "gateway".into());
    let n: u64 = args
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let body_len = body(0).len() as u64;
    let base = rss_kib();
    let (count, extra) = match mode.as_str() {
        "bodies" => {
            let v: Vec<Bytes> = (0..n).map(body).collect();
            let len = v.len() as u64;
            std::mem::forget(v);
            (len, body_len)
        }
        "moka" => {
            let c: moka::future::Cache<u128, ()> =
                moka::future::Cache::builder().max_capacity(n + 1).build();
            for i in 0..n {
                c.insert(
                    u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
                    (),
                )
                .await;
            }
            c.run_pending_tasks().await;
            let len = c.entry_count();
            std::mem::forget(c);
            (len, 0)
        }
        _ => {
            let c = UserCache::new(n + 1);
            let json = HeaderValue::from_static("application/json");
            let key =
                openai_admin_gateway::secret::AdminKey::from_bytes(b"sk-admin-x").expect("key");
            let org = openai_admin_gateway::org::Org::new("default", None, key);
            for i in 0..n {
                let u = CachedUser::new(
                    body(i),
                    Some(json.clone()),
                    false,
                    Duration::from_secs(3600),
                );
                c.insert(c.key(&org, &format!("user-{i:012}")), u).await;
            }
            c.sync().await;
            let len = c.entry_count();
            std::mem::forget(c);
            (len, body_len)
        }
    };
    let per = (rss_kib().saturating_sub(base) * 1024) as f64 / count.max(1) as f64;
    println!(
        "{{\"mode\":\"{mode}\",\"entries\":{count},\"bytes_per_entry\":{per:.0},\"body_bytes\":{extra},\"overhead\":{:.0}}}",
        per - extra as f64
    );
}
