//! Which replicas are alive, from what the bus hears ([`Heard`]): what a
//! replica divides the organization's budget by while Redis can not
//! answer (see [`super::Bus::live_replicas`]).
//!
//! Every replica publishes a heartbeat every [`HEARTBEAT`]; an origin is
//! live while its last message is less than [`SILENCE`] older than the
//! last message heard from anyone (this replica's own heartbeats
//! included). Measuring against the last message heard rather than the
//! clock keeps the count of the last live moment while the link itself is
//! down (nothing heard from anyone), which is exactly when the count is
//! used: the replicas that were there are assumed to still be there, so a
//! replica's share never grows because Redis went away.
//!
//! [`HEARTBEAT`]: super::HEARTBEAT

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::SILENCE;

/// The other replicas heard on the bus, and when.
#[derive(Debug, Default)]
pub(super) struct Heard {
    /// Origins and the time of their last message; pruned on read.
    inner: Mutex<Inner>,
}

/// What [`Heard`] guards.
#[derive(Debug, Default)]
struct Inner {
    /// Each other replica's origin and when it was last heard.
    others: HashMap<Box<str>, Instant>,
    /// When anything (this replica's own heartbeat included) was last
    /// heard: the reference for "recent".
    last: Option<Instant>,
}

impl Inner {
    /// Forgets the origins not heard within [`SILENCE`] of the last message.
    fn prune(&mut self) {
        if let Some(last) = self.last {
            self.others
                .retain(|_, at| last.saturating_duration_since(*at) < SILENCE);
        }
    }
}

impl Heard {
    /// A message from `origin` arrived at `at`; `own` when this replica
    /// sent it.
    pub(super) fn heard(&self, origin: &str, own: bool, at: Instant) {
        let mut inner = self.lock();
        inner.last = Some(inner.last.map_or(at, |l| l.max(at)));
        if own {
            return;
        }
        match inner.others.get_mut(origin) {
            Some(t) => *t = (*t).max(at),
            None => {
                // New origins are rare (a replica starts): the moment to
                // forget the ones that left, so the map stays small even
                // when nobody asks for the count.
                inner.prune();
                inner.others.insert(origin.into(), at);
            }
        }
    }

    /// The replicas live at the last message heard, this one included: at
    /// least 1.
    pub(super) fn live(&self) -> usize {
        let mut inner = self.lock();
        inner.prune();
        inner.others.len() + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent whatever panicked while holding it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_origins_heard_within_silence_of_the_last_message() {
        let heard = Heard::default();
        assert_eq!(heard.live(), 1, "alone before anything is heard");
        let t0 = Instant::now();
        heard.heard("me", true, t0);
        heard.heard("b", false, t0);
        heard.heard("c", false, t0);
        heard.heard("b", false, t0 + Duration::from_millis(200));
        assert_eq!(heard.live(), 3, "self, b and c");

        // Only b and this replica go on; c goes silent.
        let later = t0 + SILENCE + Duration::from_millis(100);
        heard.heard("me", true, later);
        heard.heard("b", false, later);
        assert_eq!(heard.live(), 2, "c was silent for longer than SILENCE");
    }

    #[test]
    fn nothing_heard_from_anyone_keeps_the_last_count() {
        let heard = Heard::default();
        let t0 = Instant::now() - Duration::from_secs(30);
        heard.heard("me", true, t0);
        heard.heard("b", false, t0);
        heard.heard("c", false, t0);
        // Thirty seconds without any message (the link is down): the
        // replicas that were live then still count.
        assert_eq!(heard.live(), 3);
    }

    #[test]
    fn a_new_origin_prunes_the_silent_ones() {
        let heard = Heard::default();
        let t0 = Instant::now();
        heard.heard("old", false, t0);
        let later = t0 + SILENCE * 3;
        heard.heard("me", true, later);
        heard.heard("new", false, later);
        let inner = heard.lock();
        assert!(!inner.others.contains_key("old"));
        assert!(inner.others.contains_key("new"));
    }
}
