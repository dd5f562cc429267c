//! Bytes per cached user that moka itself costs, against the gateway's
//! cache: fills one cache in this process with N entries of a ~485-byte body
//! and prints RSS growth per entry over the body. Used by
//! `benches/load/run.sh` (memory section); one mode per process.
//!
//! `cache_floor bodies N`: the bodies alone (a `Vec<Bytes>`), the allocator's
//! share. `cache_floor moka N`: a bare moka cache (bounded, `u128` keys,
//! zero-sized values, no expiry): moka's own bookkeeping, the floor for any
//! cache built on it. `cache_floor gateway N`: the gateway's `UserCache`
//! holding real entries. `cache_floor front N`: the gateway's cache filled
//! with N entries, then every entry read twice on this one thread (the
//! second read a front hit), so this thread's front is full: the figure
//! then counts one worker's front at its full `SLOTS` (the load bench's
//! fill asks for each id once, which leaves the fronts empty).
//! `cache_floor filled N`: as `gateway`, but each entry stored as a miss
//! stores it (the fill's single flight, which hands the caller the stored
//! user too), as the load bench's fill does.
//! `moka-sync`, `moka-expiry`, `moka-ttl` and `moka-tti`: bare moka as in
//! `moka`, but the sync cache, per-entry expiry (a timer wheel node per
//! entry), a global time-to-live (a write-order deque node per entry), or
//! a global time-to-idle (the access order moka keeps anyway; the
//! gateway's choice). `moka-v8`
//! and `moka-v32`: bare moka holding an 8- or 32-byte value (a thin
//! pointer, a `Bytes` handle) inline in each entry. `moka-body`: moka with
//! per-entry expiry holding each body as a plain `Bytes`, the floor for any
//! moka cache that keeps the upstream's bytes and expires each entry itself.
//!
//! Uses the gateway's allocator (mimalloc), so its figures are the
//! gateway's.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use openai_admin_gateway::cache::{CachedUser, UserCache};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        "x".repeat(356)
    );
    Bytes::copy_from_slice(s.as_bytes())
}

/// Distinct, well-spread `u128` keys.
fn spread(i: u64) -> u128 {
    u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
}

/// A bare moka cache (as `moka`) holding `value` under `n` keys: what a
/// value of its size costs inline in moka's entry.
async fn moka_with<V: Clone + Send + Sync + 'static>(n: u64, value: V) -> u64 {
    let c: moka::future::Cache<u128, V> =
        moka::future::Cache::builder().max_capacity(n + 1).build();
    for i in 0..n {
        c.insert(spread(i), value.clone()).await;
    }
    c.run_pending_tasks().await;
    let len = c.entry_count();
    std::mem::forget(c);
    len
}

/// Every entry lives an hour (moka's per-entry expiry).
struct Hour;

impl<V> moka::Expiry<u128, V> for Hour {
    fn expire_after_create(&self, _: &u128, _: &V, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
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
                c.insert(spread(i), ()).await;
            }
            c.run_pending_tasks().await;
            let len = c.entry_count();
            std::mem::forget(c);
            (len, 0)
        }
        "moka-sync" => {
            let c: moka::sync::Cache<u128, ()> =
                moka::sync::Cache::builder().max_capacity(n + 1).build();
            for i in 0..n {
                c.insert(spread(i), ());
            }
            c.run_pending_tasks();
            let len = c.entry_count();
            std::mem::forget(c);
            (len, 0)
        }
        "moka-v8" => (moka_with(n, 0u64).await, 0),
        "moka-body" => {
            let c: moka::future::Cache<u128, Bytes> = moka::future::Cache::builder()
                .max_capacity(n + 1)
                .expire_after(Hour)
                .build();
            for i in 0..n {
                c.insert(spread(i), body(i)).await;
            }
            c.run_pending_tasks().await;
            let len = c.entry_count();
            std::mem::forget(c);
            (len, body_len)
        }
        "moka-v32" => (moka_with(n, [0u64; 4]).await, 0),
        "moka-expiry" | "moka-ttl" | "moka-tti" => {
            let b = moka::future::Cache::builder().max_capacity(n + 1);
            let c: moka::future::Cache<u128, ()> = if mode == "moka-ttl" {
                b.time_to_live(Duration::from_secs(3600)).build()
            } else if mode == "moka-tti" {
                b.time_to_idle(Duration::from_secs(3600)).build()
            } else {
                b.expire_after(Hour).build()
            };
            for i in 0..n {
                c.insert(spread(i), ()).await;
            }
            c.run_pending_tasks().await;
            let len = c.entry_count();
            std::mem::forget(c);
            (len, 0)
        }
        _ => {
            let c = UserCache::new(n + 1);
            let json = HeaderValue::from_static("application/json");
            // The upstream's Date, as every fill stores it.
            let date = HeaderValue::from_static("Sun, 06 Dec 2026 05:29:45 GMT");
            let key =
                openai_admin_gateway::secret::AdminKey::from_bytes(b"sk-admin-x").expect("key");
            let org = openai_admin_gateway::org::Org::new("default", None, key);
            for i in 0..n {
                let u = CachedUser::new(
                    body(i),
                    Some(json.clone()),
                    false,
                    Duration::from_secs(3600),
                    Some(&date),
                );
                let key = c.key(&org, &format!("user-{i:012}"));
                if mode == "filled" {
                    // As a miss stores it: the fill's single flight, whose
                    // caller gets the stored user back.
                    let got = c.fetch_once(key, async { Ok::<_, ()>(u) }).await;
                    std::hint::black_box(got);
                } else {
                    c.insert(key, u).await;
                }
            }
            c.sync().await;
            if mode == "front" {
                for _ in 0..2 {
                    for i in 0..n {
                        let key = c.key(&org, &format!("user-{i:012}"));
                        std::hint::black_box(c.get(&key).await);
                    }
                }
            }
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
