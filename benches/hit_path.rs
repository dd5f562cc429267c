//! Criterion microbenches for the pieces of the cache-hit path, each next to
//! a naive baseline so the figure has something to be judged against.
//!
//! Run: `cargo bench --bench hit_path`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use openai_admin_gateway::cache::{hit_response, CachedUser, UserCache};
use openai_admin_gateway::config::{ClientConfig, RateLimit, Scope};
use openai_admin_gateway::policy::{ClientTable, Limiter};
use openai_admin_gateway::proxy::{canonicalize, classify, strip_prefix};
use openai_admin_gateway::secret::digest;

const PATH: &str = "/v1/organization/users/user_abc123def456";

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.bench_function("classify", |b| {
        // Prefix, canonical path, then the route: what a request pays
        // before authentication.
        b.iter(|| {
            let rest = strip_prefix(black_box(PATH), "/v1").unwrap_or("");
            let canonical = canonicalize(rest).ok();
            canonical.is_some_and(|c| classify(black_box(&Method::GET), &c, false).is_ok())
        })
    });
    // Baseline: the obvious allocating version (split into owned segments).
    g.bench_function("naive_split_to_vec", |b| {
        b.iter(|| {
            let segs: Vec<String> = black_box(PATH).split('/').map(str::to_owned).collect();
            segs.len() == 5 && segs[1] == "v1" && segs[2] == "organization" && segs[3] == "users"
        })
    });
    g.finish();
}

fn clients(n: usize) -> Vec<ClientConfig> {
    (0..n)
        .map(|i| ClientConfig {
            name: format!("client-{i}"),
            key_sha256: vec![digest(format!("key-{i}").as_bytes())],
            rate_limit: None,
            allow: None,
            orgs: vec!["default".into()],
            budget_weight: 1,
        })
        .collect()
}

fn auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth");
    for n in [1, 20] {
        let cfg = openai_admin_gateway::Config::parse("", std::path::Path::new("."), &|_| {
            Some("sk-admin-bench".to_string())
        })
        .expect("config");
        let orgs = openai_admin_gateway::org::Orgs::build(&cfg, None);
        let table = ClientTable::build(&clients(n), &orgs, None, None);
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer key-0"));
        g.bench_function(format!("sha256_ct_scan_{n}_clients"), |b| {
            b.iter(|| table.authenticate(black_box(&h)).is_ok())
        });
    }
    // Baseline: plaintext keys in a HashMap (fast, but stores secrets and
    // leaks timing).
    let plain: HashMap<String, usize> = (0..20).map(|i| (format!("key-{i}"), i)).collect();
    g.bench_function("naive_plaintext_hashmap", |b| {
        b.iter(|| plain.contains_key(black_box("key-0")))
    });
    g.finish();
}

fn limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits");
    let limiter = Limiter::new(RateLimit {
        requests_per_minute: u32::MAX / 2,
        burst: u32::MAX / 2,
    });
    g.bench_function("governor_check", |b| b.iter(|| black_box(limiter.check())));
    // Baseline: a token bucket behind a Mutex.
    let bucket = Mutex::new((1e12f64, Instant::now()));
    g.bench_function("naive_mutex_bucket", |b| {
        b.iter(|| {
            let mut s = bucket.lock().unwrap();
            let now = Instant::now();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64()).min(1e12) - 1.0;
            s.1 = now;
            s.0 >= 0.0
        })
    });
    let scope = Scope::parse(&[
        "GET /organization/users".to_string(),
        "GET /organization/users/*".to_string(),
    ])
    .unwrap();
    // Scopes take the canonical path, made once here as the handler makes
    // it once per request (`route/classify` measures that part).
    let path = canonicalize("/organization/users/user_abc").unwrap();
    g.bench_function("scope_allows", |b| {
        b.iter(|| scope.allows(black_box(&Method::GET), black_box(&path)))
    });
    g.finish();
}

fn user(id: &str) -> CachedUser {
    let body = format!(
        r#"{{"object":"organization.user","id":"{id}","name":"First Last","email":"user@example.com","role":"owner","added_at":1711471533}}"#
    );
    CachedUser::new(
        Bytes::from(body),
        Some(HeaderValue::from_static("application/json")),
        false,
        Duration::from_secs(300),
        None,
    )
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ids: Vec<String> = (0..10_000).map(|i| format!("user_{i:08}")).collect();
    let cache = UserCache::new(100_000);
    rt.block_on(async {
        for id in &ids {
            let u = user(id);
            cache.insert(cache.key(&bench_org(), id), u).await;
        }
    });
    let mut g = c.benchmark_group("cache");
    let mut i = 0usize;
    // What the figures below pay for block_on alone: subtract it.
    g.bench_function("block_on_empty", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    // moka's lookup alone (keys built beforehand), and the key alone.
    let org = bench_org();
    let keys: Vec<_> = ids.iter().map(|id| cache.key(&bench_org(), id)).collect();
    g.bench_function("moka_get_10k_prebuilt_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            rt.block_on(async { cache.get(&keys[i]).await.is_some() })
        })
    });
    g.bench_function("key_from_id", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            cache.key(&org, black_box(&ids[i]))
        })
    });
    // The server's lookup: the key from the id, then `get` (the per-thread
    // front, then moka), as the cached route does on every hit.
    g.bench_function("hit_10k_ids", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            let id = &ids[i];
            rt.block_on(async { cache.get(&cache.key(&org, id)).await.is_some() })
        })
    });
    // Baseline: Mutex<HashMap> (no TTL, no bound, no single flight).
    let map: Mutex<HashMap<String, CachedUser>> =
        Mutex::new(ids.iter().map(|id| (id.clone(), user(id))).collect());
    g.bench_function("naive_mutex_hashmap_10k_ids", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            map.lock().unwrap().get(&ids[i]).cloned().is_some()
        })
    });
    g.finish();
}

fn response(c: &mut Criterion) {
    let u = user("user_abc");
    let mut g = c.benchmark_group("response");
    g.bench_function("hit_response_from_stored_bytes", |b| {
        b.iter(|| hit_response(black_box(u.clone())))
    });
    // Baseline: re-serialising the JSON on every hit.
    let v: serde_json::Value = serde_json::from_slice(&u.body()).unwrap();
    g.bench_function("naive_reserialize_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&v)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, route, auth, limits, cache, response);
criterion_main!(benches);

/// The organization the benches cache in.
fn bench_org() -> openai_admin_gateway::org::Org {
    static ORG: std::sync::OnceLock<openai_admin_gateway::org::Org> = std::sync::OnceLock::new();
    ORG.get_or_init(|| {
        let key =
            openai_admin_gateway::secret::AdminKey::from_bytes(b"sk-admin-bench").expect("key");
        openai_admin_gateway::org::Org::new("default", None, key)
    })
    .clone()
}
