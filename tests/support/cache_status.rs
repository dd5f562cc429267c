//! The `Cache-Status` values tests expect, as the gateway writes them (see the README).

use super::CACHE_NAME;

/// A miss whose answer was stored.
pub fn stored_miss() -> String {
    format!("{CACHE_NAME}; fwd=miss; stored")
}

/// A miss whose answer was not stored.
pub fn unstored_miss() -> String {
    format!("{CACHE_NAME}; fwd=miss")
}

/// A request the cache did not take part in.
pub fn bypass() -> String {
    format!("{CACHE_NAME}; fwd=bypass")
}
