//! The retrieve-user cache and the cached route.
//!
//! - [`store`]: [`UserCache`], moka split in shards, with a size bound,
//!   single flight, and the per-thread fronts kept in step.
//! - `entry`: [`CachedUser`], the stored user and its clock in one
//!   allocation (the upstream's `Date` kept as seconds in front of the
//!   body), and `Stored`, the same bytes as moka holds them.
//! - `key`: [`CacheKey`], the hashing, and the write generations, so a
//!   fetch that began before a write can never store the old user. Every
//!   key names an [`crate::org::Org`]: the same id in two organizations is
//!   two entries.
//! - `expiry`: when an entry dies (its TTL plus the stale window, judged
//!   on read) and the idle bound moka drops unread entries at.
//! - `front`: a per-thread table of copies of fresh users in front of
//!   moka, so most hits write nothing another core writes.
//! - `route`: [`UserRoute`], `GET {prefix}/organization/users/{id}`
//!   served from the cache, filled from the upstream; it needs only the
//!   cache, the upstream, metrics and its live [`Settings`] (`settings`).
//!   It is the only file with `impl UserRoute`: the parts below are values
//!   it holds or borrows.
//! - `fill`: `Filler`, one upstream retrieve as the gateway's own request
//!   (returning the user or this request's answer), and the check of what
//!   may be stored ([`is_user`]).
//! - `stale`: expired entries served while the upstream fails
//!   (`stale_if_error_secs`) or while one background refresh runs
//!   (`stale_while_revalidate_secs`), one refetch per id.
//! - `response`: a stored user as a response (hit, fetched, stale).
//! - `request`: what the request's headers ask of the cache
//!   ([`directive`], [`bypasses`]).
//! - [`status`]: [`CacheStatus`], the RFC 9211 `Cache-Status` outcomes.
//!
//! Public surface: the re-exports below.

mod entry;
mod expiry;
mod fill;
mod front;
mod key;
mod request;
mod response;
mod route;
mod settings;
mod stale;
mod status;
mod store;

pub use entry::CachedUser;
pub use fill::{fill_headers, is_user};
pub use key::{CacheKey, KeyBits};
pub use request::{bypasses, directive, Directive};
pub use route::UserRoute;
pub use settings::Settings;
pub use status::{stale_status, CacheStatus, CACHE_STATUS};
pub use store::{Lookup, UserCache};

/// The hit response for a stored user (benches measure it alone).
pub use response::hit_response;
