//! The local GCRA: one theoretical arrival time per budget, on the
//! monotonic clock. Its own (rather than `governor`'s) because the driver
//! needs to ask "when is the next turn" without taking it, and a replica
//! without Redis runs it with its share of the limit.

use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// The GCRA state of one budget.
#[derive(Debug, Default)]
pub(super) struct Gcra {
    /// When the budget is back to empty-handed: each turn moves it one
    /// interval on. `None` until the first turn (a full burst).
    tat: Option<Instant>,
}

/// `limit` divided among `replicas` (each takes its share while Redis
/// cannot be asked), never below one turn a minute and a burst of one.
pub(super) fn share(limit: RateLimit, replicas: usize) -> RateLimit {
    let n = u32::try_from(replicas.max(1)).unwrap_or(u32::MAX);
    RateLimit {
        requests_per_minute: (limit.requests_per_minute / n).max(1),
        burst: (limit.burst / n).max(1),
    }
}

fn interval(limit: RateLimit) -> Duration {
    Duration::from_secs(60) / limit.requests_per_minute.max(1)
}

impl Gcra {
    /// When the next turn may be taken under `limit` (`now` or earlier:
    /// at once).
    pub(super) fn next_at(&self, now: Instant, limit: RateLimit) -> Instant {
        let Some(tat) = self.tat else { return now };
        let tolerance = interval(limit) * limit.burst.saturating_sub(1);
        tat.checked_sub(tolerance).unwrap_or(now).max(now)
    }

    /// Takes a turn now if `limit` allows: the turns left after it, or
    /// when the next one may be taken.
    pub(super) fn take(&mut self, now: Instant, limit: RateLimit) -> Result<u32, Instant> {
        let at = self.next_at(now, limit);
        if at > now {
            return Err(at);
        }
        let step = interval(limit);
        let tat = self.tat.map_or(now, |t| t.max(now)) + step;
        self.tat = Some(tat);
        let used = (tat - now).as_nanos().div_ceil(step.as_nanos().max(1));
        Ok(limit
            .burst
            .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        requests_per_minute: 60,
        burst: 3,
    };

    #[test]
    fn a_burst_then_one_turn_per_interval() {
        let mut g = Gcra::default();
        let t0 = Instant::now();
        assert_eq!(g.take(t0, LIMIT), Ok(2));
        assert_eq!(g.take(t0, LIMIT), Ok(1));
        assert_eq!(g.take(t0, LIMIT), Ok(0));
        assert_eq!(g.take(t0, LIMIT), Err(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(g.take(t1, LIMIT), Ok(0));
        let later = t1 + Duration::from_secs(60);
        assert_eq!(
            g.take(later, LIMIT),
            Ok(2),
            "refills to the burst, no further"
        );
    }

    #[test]
    fn a_share_is_never_zero() {
        let s = share(LIMIT, 3);
        assert_eq!((s.requests_per_minute, s.burst), (20, 1));
        let s = share(LIMIT, 1000);
        assert_eq!((s.requests_per_minute, s.burst), (1, 1));
        assert_eq!(share(LIMIT, 0), LIMIT);
    }
}
