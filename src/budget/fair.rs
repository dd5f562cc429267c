//! Fair turns: one queue per waiting client and a round robin between
//! them, `budget_weight` turns per client per round. A client with many
//! requests queued delays another's by at most one round (one turn per
//! other waiting client, times their weights), never by its whole queue.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

use crate::metrics::ClientLabel;

/// One request waiting for a turn.
#[derive(Debug)]
pub(super) struct Waiter {
    /// Names it in its client's queue (for giving the place back).
    pub(super) id: u64,
    /// Told when the turn is its.
    pub(super) tx: oneshot::Sender<()>,
}

/// One client's waiting requests.
#[derive(Debug)]
struct Queue {
    /// In arrival order.
    waiters: VecDeque<Waiter>,
    /// Turns per round (the latest request's `budget_weight`).
    weight: u32,
}

/// Every waiting request, by client, and whose turn is next.
#[derive(Debug, Default)]
pub(super) struct Fair {
    /// The waiting clients' queues (a client leaves when its queue empties).
    queues: HashMap<ClientLabel, Queue>,
    /// The waiting clients in turn order; the front one is served next.
    ring: VecDeque<ClientLabel>,
    /// Turns the front client has had this round.
    served: u32,
    /// Waiting requests, all clients.
    len: usize,
}

impl Fair {
    /// Requests waiting now.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// True when nobody waits.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `waiter` last in `client`'s queue; a client that was not
    /// waiting joins the round last.
    pub(super) fn push(&mut self, client: &ClientLabel, weight: u32, waiter: Waiter) {
        let q = self.queues.entry(client.clone()).or_insert_with(|| {
            self.ring.push_back(client.clone());
            Queue {
                waiters: VecDeque::new(),
                weight,
            }
        });
        q.weight = weight.max(1);
        q.waiters.push_back(waiter);
        self.len += 1;
    }

    /// Takes waiter `id` of `client` out (it gave up or was cancelled);
    /// false when it is no longer queued (it got its turn).
    pub(super) fn remove(&mut self, client: &ClientLabel, id: u64) -> bool {
        let Some(q) = self.queues.get_mut(client) else {
            return false;
        };
        let Some(pos) = q.waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        q.waiters.remove(pos);
        self.len -= 1;
        if q.waiters.is_empty() {
            self.leave(client);
        }
        true
    }

    /// The next waiter in turn order that still waits (one whose request
    /// was dropped is skipped), taken out of its queue.
    pub(super) fn pop(&mut self) -> Option<Waiter> {
        loop {
            let client = self.ring.front()?.clone();
            let Some(q) = self.queues.get_mut(&client) else {
                // Not reachable (a client leaves the ring with its queue);
                // dropped rather than looping on it.
                self.ring.pop_front();
                self.served = 0;
                continue;
            };
            let waiter = q.waiters.pop_front();
            let weight = q.weight;
            let emptied = q.waiters.is_empty();
            if waiter.is_some() {
                self.len -= 1;
            }
            if emptied {
                self.leave(&client);
            } else {
                self.served += 1;
                if self.served >= weight {
                    self.ring.rotate_left(1);
                    self.served = 0;
                }
            }
            match waiter {
                Some(w) if !w.tx.is_closed() => return Some(w),
                _ => continue,
            }
        }
    }

    /// `client` has nobody waiting: out of the queues and the round.
    fn leave(&mut self, client: &ClientLabel) {
        self.queues.remove(client);
        if let Some(pos) = self.ring.iter().position(|c| c == client) {
            self.ring.remove(pos);
            if pos == 0 {
                self.served = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: u64) -> (Waiter, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Waiter { id, tx }, rx)
    }

    /// Pops every waiter, naming each by its client.
    fn order(f: &mut Fair, names: &HashMap<u64, &'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| f.pop().map(|w| names[&w.id])).collect()
    }

    #[test]
    fn turns_go_round_the_waiting_clients_by_weight() {
        let (a, b, c) = (
            ClientLabel::new("a"),
            ClientLabel::new("b"),
            ClientLabel::new("c"),
        );
        let mut f = Fair::default();
        let mut names = HashMap::new();
        let mut keep = Vec::new();
        for id in 0..5 {
            let (w, rx) = waiter(id);
            f.push(&a, 1, w);
            names.insert(id, "a");
            keep.push(rx);
        }
        for id in 10..12 {
            let (w, rx) = waiter(id);
            f.push(&b, 1, w);
            names.insert(id, "b");
            keep.push(rx);
        }
        for id in 20..24 {
            let (w, rx) = waiter(id);
            f.push(&c, 2, w);
            names.insert(id, "c");
            keep.push(rx);
        }
        assert_eq!(f.len(), 11);
        assert_eq!(
            order(&mut f, &names),
            ["a", "b", "c", "c", "a", "b", "c", "c", "a", "a", "a"]
        );
        assert!(f.is_empty());
    }

    #[test]
    fn a_place_given_back_or_dropped_is_skipped() {
        let (a, b) = (ClientLabel::new("a"), ClientLabel::new("b"));
        let mut f = Fair::default();
        let (w0, _rx0) = waiter(0);
        let (w1, rx1) = waiter(1);
        let (w2, _rx2) = waiter(2);
        f.push(&a, 1, w0);
        f.push(&a, 1, w1);
        f.push(&b, 1, w2);
        assert!(f.remove(&a, 0));
        assert!(!f.remove(&a, 0), "already out");
        drop(rx1);
        assert_eq!(f.pop().map(|w| w.id), Some(2), "a's dropped waiter skipped");
        assert!(f.pop().is_none());
        assert!(f.is_empty());
    }
}
