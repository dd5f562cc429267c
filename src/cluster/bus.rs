//! The invalidation bus: replicas tell each other which users changed.
//!
//! Every eviction a replica makes because of a write, a purge or a
//! purge-all is published on one Redis pub/sub channel
//! (`redis.channel`); every replica applies what the others publish (it
//! bumps the id's write generation, so a fill in flight can not store the
//! old user afterwards) and skips its own messages.
//!
//! Pub/sub drops messages while a subscriber is away, so a replica only
//! serves hits while its subscription is known to be live:
//! - each replica publishes a heartbeat every [`HEARTBEAT`]; a subscription
//!   that hears nothing (its own heartbeat included) for [`SILENCE`] is
//!   treated as lost, which notices a silent partition as well as a
//!   closed socket;
//! - while it is lost, [`Evict::set_serving`]`(false)`: no hits, misses go
//!   to the upstream and are not stored, as on a replica without a cache;
//! - on reconnect the subscription is made first, then the cache is
//!   emptied (a new cache epoch, since invalidations may have been missed),
//!   and only then are hits served again.
//!
//! Publishing never holds a write up: [`Bus::user_evicted`] and
//! [`Bus::all_evicted`] queue the eviction in the bus's outbox (see
//! `outbox`) and return. One task sends the queue in order, each publish
//! bounded by `redis.timeout_ms`; one that fails or times out is retried
//! with backoff until it goes through, for as long as the eviction matters
//! (the cache TTL, the stale windows and the upstream timeout). So a
//! replica whose Redis commands fail while its subscription stays up (no
//! replica notices a lost link then) still gets every eviction to the
//! others: late, never lost. Delivery is at least once (evicting twice is
//! harmless).
//!
//! The heartbeats also say how many replicas there are
//! ([`Bus::live_replicas`], kept by `replicas`): while Redis can not
//! answer, each replica takes that share of the organization's budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tracing::{debug, info, warn};

use super::outbox::{Item, Outbox, Queued};
use super::replicas::Heard;
use crate::config::defaults::DEFAULT_ORG;
use crate::config::RedisConfig;
use crate::metrics::{Metrics, PublishResult};

/// How often each replica publishes a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// A subscription silent for this long is treated as lost.
pub const SILENCE: Duration = Duration::from_secs(1);

/// Longest wait between reconnect attempts, and between retries of a
/// publish.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// First wait before retrying a publish.
const RETRY: Duration = Duration::from_millis(50);

/// What the bus does to the local cache. Organizations are named as
/// configured; a name this replica does not know is the caller's to decide
/// (evicting in every organization is always safe).
pub trait Evict: Send + Sync + 'static {
    /// Another replica evicted `id` in `org` (bump its generation, drop its
    /// entry).
    fn evict<'a>(
        &'a self,
        org: &'a str,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    /// Another replica purged everything of `org`, or of every organization
    /// (`None`).
    fn evict_all(&self, org: Option<&str>);
    /// Hits allowed (`true`) or not (the link is down).
    fn set_serving(&self, serving: bool);
}

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    /// `v <origin> <sent_us> <org> <id>`: a user of an organization was
    /// evicted; `u <origin> <sent_us> <id>` (replicas from before
    /// organizations) is the same in `default`.
    User {
        origin: String,
        sent_us: u64,
        org: String,
        id: String,
    },
    /// `o <origin> <sent_us> <org>`: everything of an organization was
    /// evicted; `a <origin> <sent_us>`: everything of every organization.
    All {
        origin: String,
        sent_us: u64,
        org: Option<String>,
    },
    /// `h <origin> <sent_us>`: the sender is alive (and so is the link).
    Heartbeat { origin: String },
}

impl Message {
    fn parse(text: &str) -> Option<Message> {
        let mut parts = text.splitn(4, ' ');
        let kind = parts.next()?;
        let origin = parts.next()?.to_owned();
        let sent_us = parts.next()?.parse().ok()?;
        match kind {
            "u" => Some(Message::User {
                origin,
                sent_us,
                org: DEFAULT_ORG.to_owned(),
                id: parts.next()?.to_owned(),
            }),
            "v" => {
                // Organization names hold no space; ids may.
                let (org, id) = parts.next()?.split_once(' ')?;
                Some(Message::User {
                    origin,
                    sent_us,
                    org: org.to_owned(),
                    id: id.to_owned(),
                })
            }
            "a" => Some(Message::All {
                origin,
                sent_us,
                org: None,
            }),
            "o" => Some(Message::All {
                origin,
                sent_us,
                org: Some(parts.next()?.to_owned()),
            }),
            "h" => Some(Message::Heartbeat { origin }),
            _ => None,
        }
    }
}

impl Message {
    /// The replica that sent it.
    fn origin(&self) -> &str {
        match self {
            Message::User { origin, .. }
            | Message::All { origin, .. }
            | Message::Heartbeat { origin } => origin,
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The publishing side, shared by writes and purges. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// The process's Redis connection (also used by shared limits).
    conn: ConnectionManager,
    /// The channel.
    channel: String,
    /// This replica's random id, to skip its own messages.
    origin: Arc<str>,
    /// Bound on one publish.
    timeout: Duration,
    /// Counters and the connected gauge.
    metrics: Arc<Metrics>,
    /// Evictions waiting to be published, sent in order by one task.
    outbox: Arc<Outbox>,
    /// The replicas heard on the channel, for [`Bus::live_replicas`].
    heard: Arc<Heard>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("channel", &self.channel)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Bus {
    /// How many replicas (this one included) were heard from in the last
    /// [`SILENCE`]: what a replica divides the organization's budget by
    /// while Redis is unreachable. At least 1.
    ///
    /// "The last [`SILENCE`]" ends at the last message heard, not now: while
    /// the link is down the count stays what it was when the link was last
    /// live (see `replicas`). Cheap: a small map behind a mutex.
    pub fn live_replicas(&self) -> usize {
        self.heard.live()
    }

    /// Starts the bus: the subscriber, heartbeat and outbox tasks, applying
    /// remote evictions to `evict`. An eviction not yet published after
    /// `lifetime` is given up (every copy it evicts has expired). Needs a
    /// Tokio runtime.
    pub fn start(
        cfg: &RedisConfig,
        conn: ConnectionManager,
        metrics: Arc<Metrics>,
        evict: Arc<dyn Evict>,
        lifetime: Duration,
    ) -> redis::RedisResult<Bus> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let mut raw = [0u8; 8];
        let origin = match getrandom::fill(&mut raw) {
            Ok(()) => crate::secret::hex(&raw),
            Err(_) => format!("{:016x}", now_us()),
        };
        let bus = Bus {
            conn,
            channel: cfg.channel.clone(),
            origin: origin.into(),
            timeout: cfg.timeout,
            outbox: Arc::new(Outbox::new(lifetime, metrics.clone())),
            metrics,
            heard: Arc::default(),
        };
        evict.set_serving(false);
        bus.metrics.bus_connected(false);
        bus.metrics.replicas_live(1);
        tokio::spawn(bus.clone().subscribe(client, evict));
        tokio::spawn(bus.clone().heartbeat());
        tokio::spawn(bus.clone().send_outbox());
        Ok(bus)
    }

    /// Sets how long an unpublished eviction still matters (on reload).
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.outbox.set_lifetime(lifetime);
    }

    /// Evictions queued or being sent.
    pub fn waiting(&self) -> usize {
        self.outbox.waiting()
    }

    /// Waits up to `within` for every queued eviction to be published;
    /// `false` if some are still waiting then (shutdown).
    pub async fn flush(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.outbox.flushed())
            .await
            .is_ok()
    }

    /// Queues the news that `id` was evicted here in the organization
    /// named `org`; see the module docs. Returns at once.
    pub async fn user_evicted(&self, org: &str, id: &str) {
        self.user_evicted_now(org, id);
    }

    /// Queues the news that everything of `org` (every organization:
    /// `None`) was evicted here. Returns at once.
    pub async fn all_evicted(&self, org: Option<&str>) {
        self.all_evicted_now(org);
    }

    /// [`Bus::user_evicted`] for code that can not await (a guard's drop).
    pub fn user_evicted_now(&self, org: &str, id: &str) {
        self.outbox
            .push(Item::User(org.to_owned(), id.to_owned()), now_us());
    }

    /// [`Bus::all_evicted`] for code that can not await (a guard's drop).
    pub fn all_evicted_now(&self, org: Option<&str>) {
        let item = match org {
            Some(org) => Item::Org(org.to_owned()),
            None => Item::All,
        };
        self.outbox.push(item, now_us());
    }

    /// Publishes the outbox in order, forever, retrying each failed
    /// publish with backoff.
    async fn send_outbox(self) {
        let mut backoff = RETRY;
        let mut failures = 0u32;
        loop {
            let queued = self.outbox.next().await;
            match self.publish(self.message(&queued)).await {
                Ok(()) => {
                    self.outbox.delivered();
                    if failures > 0 {
                        info!(
                            failures,
                            "invalidations published again after failed attempts"
                        );
                    }
                    failures = 0;
                    backoff = RETRY;
                }
                Err(cause) => {
                    self.outbox.failed(queued);
                    if failures == 0 {
                        warn!(
                            %cause,
                            "invalidation not published yet; retrying until it is (until then other replicas may serve their cached copy)"
                        );
                    } else {
                        debug!(%cause, failures, "invalidation still not published");
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn message(&self, q: &Queued) -> String {
        match &q.item {
            Item::User(org, id) => format!("v {} {} {org} {id}", self.origin, q.since_us),
            Item::Org(org) => format!("o {} {} {org}", self.origin, q.since_us),
            Item::All => format!("a {} {}", self.origin, q.since_us),
        }
    }

    /// One publish, bounded by `redis.timeout_ms`, counted.
    async fn publish(&self, msg: String) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let sent = conn.publish::<_, _, i64>(&self.channel, msg);
        let (label, result) = match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(_)) => (PublishResult::Ok, Ok(())),
            Ok(Err(e)) => (PublishResult::Error, Err(e.to_string())),
            Err(_) => (
                PublishResult::Timeout,
                Err("no answer within redis.timeout_ms".into()),
            ),
        };
        self.metrics.invalidation_published(label);
        result
    }

    /// Publishes a heartbeat every [`HEARTBEAT`], forever.
    async fn heartbeat(self) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut conn = self.conn.clone();
            let msg = format!("h {} {}", self.origin, now_us());
            let sent = conn.publish::<_, _, i64>(&self.channel, msg);
            // A lost heartbeat shows up as silence on the subscription.
            let _ = tokio::time::timeout(self.timeout.max(HEARTBEAT), sent).await;
        }
    }

    /// Keeps a subscription up, applying what arrives; see the module docs.
    async fn subscribe(self, client: redis::Client, evict: Arc<dyn Evict>) {
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            let connect = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(SILENCE, connect).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    debug!(cause = %e, "invalidation bus: cannot subscribe");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(_) => {
                    debug!("invalidation bus: subscribe timed out");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            // Subscribed: whatever is published from now on arrives. What
            // was missed before is covered by a new epoch.
            evict.evict_all(None);
            if !first {
                self.metrics.cache_epoch_reset();
                info!("invalidation bus back: cache emptied (new epoch), serving hits again");
            } else {
                info!(channel = %self.channel, "invalidation bus connected");
            }
            first = false;
            evict.set_serving(true);
            self.metrics.bus_connected(true);

            let mut stream = pubsub.into_on_message();
            loop {
                match tokio::time::timeout(SILENCE, stream.next()).await {
                    Ok(Some(msg)) => {
                        let Ok(text) = msg.get_payload::<String>() else {
                            continue;
                        };
                        self.apply(&text, &*evict).await;
                    }
                    Ok(None) => {
                        warn!("invalidation bus: subscription closed; serving no hits until it is back");
                        break;
                    }
                    Err(_) => {
                        warn!("invalidation bus: nothing heard for a second; serving no hits until it is back");
                        break;
                    }
                }
            }
            evict.set_serving(false);
            self.metrics.bus_connected(false);
        }
    }

    async fn apply(&self, text: &str, evict: &dyn Evict) {
        let message = Message::parse(text);
        if let Some(origin) = message.as_ref().map(Message::origin) {
            self.heard
                .heard(origin, *origin == *self.origin, Instant::now());
            self.metrics.replicas_live(self.heard.live());
        }
        match message {
            Some(Message::User {
                origin,
                sent_us,
                org,
                id,
            }) if *origin != *self.origin => {
                evict.evict(&org, &id).await;
                self.received(sent_us);
            }
            Some(Message::All {
                origin,
                sent_us,
                org,
            }) if *origin != *self.origin => {
                evict.evict_all(org.as_deref());
                self.received(sent_us);
            }
            Some(_) => {}
            None => debug!("invalidation bus: unreadable message ignored"),
        }
    }

    fn received(&self, sent_us: u64) {
        let delay_us = now_us().saturating_sub(sent_us);
        self.metrics
            .invalidation_received(Duration::from_micros(delay_us));
        debug!(delay_us, "remote invalidation applied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_ids_may_hold_spaces() {
        let user = |org: &str, id: &str| Message::User {
            origin: "abc".into(),
            sent_us: 17,
            org: org.into(),
            id: id.into(),
        };
        assert_eq!(
            Message::parse("u abc 17 user a b"),
            Some(user("default", "user a b")),
            "an older replica's message is in the default organization"
        );
        assert_eq!(
            Message::parse("v abc 17 research user a b"),
            Some(user("research", "user a b"))
        );
        let all = |org: Option<&str>| Message::All {
            origin: "abc".into(),
            sent_us: 9,
            org: org.map(str::to_owned),
        };
        assert_eq!(Message::parse("a abc 9"), Some(all(None)));
        assert_eq!(
            Message::parse("o abc 9 research"),
            Some(all(Some("research")))
        );
        assert_eq!(
            Message::parse("h abc 1"),
            Some(Message::Heartbeat {
                origin: "abc".into()
            })
        );
        for bad in [
            "",
            "u",
            "u abc",
            "u abc x id",
            "z abc 1",
            "u abc 1",
            "v abc 1 org",
            "o abc 1",
        ] {
            assert_eq!(Message::parse(bad), None, "{bad:?}");
        }
    }
}
