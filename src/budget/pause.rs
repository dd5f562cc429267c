//! How long an upstream 429 pauses the organization: `retry-after-ms`
//! (milliseconds), else `retry-after` (whole seconds or an HTTP date),
//! else one second; never more than a minute.

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::HeaderMap;

/// The pause when the 429 says nothing usable.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause one 429 may cause.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The pause `headers` (an upstream 429's) ask for, as of `now`.
pub fn pause_for(headers: &HeaderMap, now: SystemTime) -> Duration {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let ms = text("retry-after-ms")
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms.min(1e9) / 1000.0));
    let after = || {
        let s = text(RETRY_AFTER.as_str())?;
        match s.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs.min(1_000_000))),
            Err(_) => httpdate::parse_http_date(s)
                .ok()
                .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
        }
    };
    ms.or_else(after).unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(pairs: &[(&'static str, &str)]) -> Duration {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("value"));
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        pause_for(&h, now)
    }

    #[test]
    fn milliseconds_then_seconds_then_a_date_then_one_second() {
        let both = [("retry-after-ms", "1500"), ("retry-after", "7")];
        assert_eq!(pause(&both), Duration::from_millis(1500));
        assert_eq!(pause(&[("retry-after", "2")]), Duration::from_secs(2));
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        let date = [("retry-after", "Tue, 14 Nov 2023 22:13:23 GMT")];
        assert_eq!(pause(&date), Duration::from_secs(3));
        let past = [("retry-after", "Tue, 14 Nov 2023 22:13:00 GMT")];
        assert_eq!(pause(&past), Duration::ZERO);
        assert_eq!(pause(&[]), DEFAULT_PAUSE);
        assert_eq!(pause(&[("retry-after", "soon")]), DEFAULT_PAUSE);
        assert_eq!(pause(&[("retry-after-ms", "-5")]), DEFAULT_PAUSE);
        assert_eq!(pause(&[("retry-after", "86400")]), MAX_PAUSE);
    }
}
