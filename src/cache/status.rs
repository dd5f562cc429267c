//! `Cache-Status` (RFC 9211): the outcome of a request on the cached route,
//! as the header, the `cache` log field and the hit's `ttl`.

use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderValue;

use crate::headers::static_value;

/// `Cache-Status` outcomes (RFC 9211), also the `cache` log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from memory.
    Hit,
    /// Fetched and stored.
    MissStored,
    /// Fetched, not storable.
    Miss,
    /// `no-cache`/`no-store` asked for a fetch; stored afterwards.
    RequestStored,
    /// `no-cache`/`no-store` asked for a fetch; not stored.
    Request,
    /// The route does not use the cache.
    Bypass,
    /// Expired, served because the refetch failed (`stale_if_error_secs`).
    StaleIfError,
    /// Expired, served at once while a background refresh runs
    /// (`stale_while_revalidate_secs`).
    StaleRevalidate,
}

impl CacheStatus {
    /// Log field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::MissStored => "miss_stored",
            Self::Miss => "miss",
            Self::RequestStored => "request_stored",
            Self::Request => "request",
            Self::Bypass => "bypass",
            Self::StaleIfError => "stale_error",
            Self::StaleRevalidate => "stale_revalidate",
        }
    }

    /// The `Cache-Status` header for every outcome but a hit (which carries a ttl).
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "openai-admin-gateway; hit",
            Self::MissStored => "openai-admin-gateway; fwd=miss; stored",
            Self::Miss => "openai-admin-gateway; fwd=miss",
            Self::RequestStored => "openai-admin-gateway; fwd=request; stored",
            Self::Request => "openai-admin-gateway; fwd=request",
            Self::Bypass => "openai-admin-gateway; fwd=bypass",
            Self::StaleIfError => "openai-admin-gateway; fwd=stale",
            Self::StaleRevalidate => "openai-admin-gateway; hit",
        })
    }
}

/// `Cache-Status` header name.
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// `Cache-Status` of a hit with `ttl` seconds left; values for the first
/// hour are built once and shared.
pub fn hit_status(ttl: u64) -> HeaderValue {
    const PREBUILT: usize = 3600;
    static TABLE: OnceLock<Box<[OnceLock<HeaderValue>]>> = OnceLock::new();
    let text = || format!("openai-admin-gateway; hit; ttl={ttl}");
    let table = TABLE.get_or_init(|| (0..=PREBUILT).map(|_| OnceLock::new()).collect());
    match table.get(ttl as usize) {
        // Static: a clone writes no count shared by every core.
        Some(slot) => slot.get_or_init(|| static_value(text())).clone(),
        None => HeaderValue::from_maybe_shared(Bytes::from(text()))
            .unwrap_or_else(|_| HeaderValue::from_static("openai-admin-gateway; hit")),
    }
}

/// `Cache-Status` of an expired entry served `past` seconds after its TTL:
/// `...; hit; ttl=-N` while revalidating, `...; fwd=stale; fwd-status=S;
/// ttl=-N` when the refetch failed (no `fwd-status` without a response).
pub fn stale_status(past: u64, fwd_status: Option<u16>, revalidating: bool) -> HeaderValue {
    let s = match (revalidating, fwd_status) {
        (true, _) => format!("openai-admin-gateway; hit; ttl=-{past}"),
        (false, Some(code)) => {
            format!("openai-admin-gateway; fwd=stale; fwd-status={code}; ttl=-{past}")
        }
        (false, None) => format!("openai-admin-gateway; fwd=stale; ttl=-{past}"),
    };
    HeaderValue::from_maybe_shared(Bytes::from(s))
        .unwrap_or_else(|_| HeaderValue::from_static("openai-admin-gateway; fwd=stale"))
}
